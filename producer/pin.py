"""Pin a job's model at submit (:mod:`jobs.pinning` says what a pin is and how workers use it).

A hub id is resolved to a commit hash: by the hub when it answers, else (``HF_HUB_OFFLINE``,
or no connection) by the local cache's ``refs/<revision>`` file; with neither, a SpecError
names ``HF_HUB_OFFLINE`` and the cache directory. A local directory is fingerprinted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from jobs.errors import SpecError
from jobs.pinning import HUB, LOCAL, ModelPin, fingerprint_of, local_files, pin_of, verify_local
from jobs.spec import JobSpec
from producer.model_check import hub_offline, hub_reachable, hub_refusal

DEFAULT_REVISION = "main"
COMMIT = re.compile(r"^[0-9a-f]{40}$")
HUB_TIMEOUT = 10.0


def resolve_pin(spec: JobSpec) -> ModelPin:
    """What the spec's model is now; SpecError when a hub id cannot be resolved."""
    model = spec.resolved_model()
    path = Path(os.path.expanduser(model))
    if path.is_dir():
        files = local_files(path)
        return ModelPin(model=model, kind=LOCAL, fingerprint=fingerprint_of(files), files=files)
    if model.startswith(("/", "./", "../", "~")) or path.exists():  # a path, never a hub id
        raise SpecError("model", f"{model} is not a model directory (no such directory here); "
                        "point `model` at a saved model's directory or a hub id")
    return ModelPin(model=model, kind=HUB, revision=hub_commit(model, spec.revision), requested=spec.revision)


def check_pin(manifest: Any) -> None:
    """A resumed job's local model must still be the one pinned: ModelChanged (naming the file) if not."""
    pin = pin_of(manifest)
    if pin is not None and pin.kind == LOCAL:
        verify_local(pin, once=False)


def hub_commit(model: str, revision: str | None) -> str:
    """The commit hash that ``revision`` (default main) of hub model ``model`` points at now."""
    asked = revision or DEFAULT_REVISION
    if COMMIT.match(asked):
        return asked
    offline = hub_offline()
    if not offline and hub_reachable():
        online = _commit_on_hub(model, asked)
        if online is not None:
            return online
    cached = cached_commit(model, asked)
    if cached is not None:
        return cached
    why = "HF_HUB_OFFLINE is set (offline mode)" if offline else "the Hugging Face hub cannot be reached"
    raise SpecError(
        "model",
        f"cannot pin {model} at revision {asked!r}: {why} and the local Hugging Face cache ({hub_cache_dir()}) has "
        f"no ref {asked!r} for it. Download it first (`hf download {model} --revision {asked}`) or unset "
        "HF_HUB_OFFLINE on a machine that reaches the hub; or point `model` at a local directory",
    )


def hub_cache_dir() -> Path:
    """The hub cache huggingface_hub (and so a worker's transformers) reads: HF_HUB_CACHE, else HF_HOME/hub."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_commit(model: str, revision: str) -> str | None:
    """The commit that the cache's ``refs/<revision>`` names; None when the cache has no such ref."""
    ref = hub_cache_dir() / f"models--{model.replace('/', '--')}" / "refs" / revision
    try:
        commit = ref.read_text().strip()
    except OSError:
        return None
    return commit if COMMIT.match(commit) else None


def _commit_on_hub(model: str, revision: str) -> str | None:
    """The hub's answer; None when the request fails on the network (the cache is asked next)."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(model, revision=revision, timeout=HUB_TIMEOUT)
    except OSError as exc:  # the hub's HTTP errors are OSErrors too; connection errors and timeouts: None
        refusal = hub_refusal(model, revision, exc)
        if refusal is not None:
            raise refusal from None
        return None
    sha = getattr(info, "sha", None)
    return str(sha) if sha else None
