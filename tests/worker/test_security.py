"""Security: JSON-only messages, trust_remote_code, password + TLS brokers, no secret shown, allowed roots."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import pickle
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.errors import SpecError
from jobs.protocol import TASK_NAME
from jobs.settings import Settings
from producer.embedded import EmbeddedRedis, LocalWorkers
from producer.submit import prepare, submit
from producer.watch import wait
from tests.models import MODELS_DIR
from tests.reliability import (
    assert_exactly_once,
    queued_messages,
    read_back,
    tokenize_spec,
    worker_logs,
    write_rows,
)
from worker.runners import runner_for


class _Exploit:
    """Unpickling this runs ``os.mkdir(path)``: proof that a worker deserialised pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


def _send_pickled_task(broker_url: str, queue: str, marker: Path) -> None:
    """A Celery protocol-2 message for our task, serialised with pickle, put on the queue by hand."""
    from kombu import Connection, Queue

    task_id = str(uuid.uuid4())
    body = ([_Exploit(str(marker))], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})
    with Connection(broker_url) as connection:
        producer = connection.Producer(serializer="pickle")
        producer.publish(body, routing_key=queue, declare=[Queue(queue)],
                         headers={"lang": "py", "task": TASK_NAME, "id": task_id, "root_id": task_id,
                                  "retries": 0, "argsrepr": "()", "kwargsrepr": "{}"})
    assert b"\x80" in pickle.dumps(body)  # it really is a pickle


def test_worker_rejects_pickle_and_paths_outside_allowed_roots(tmp_path: Path, settings: Settings,
                                                               start_workers: Any) -> None:
    allowed = tmp_path / "allowed"
    ids = write_rows(allowed / "in.parquet", 10)
    outside = tmp_path / "elsewhere"
    write_rows(outside / "in.parquet", 5)
    workers = start_workers(1, BATCHFORMERS_ALLOWED_ROOTS=f"{allowed},{MODELS_DIR}")
    marker = tmp_path / "pwned"
    _send_pickled_task(settings.broker_url, settings.queue, marker)
    # Submitted by a producer without roots: the worker must still refuse what lies outside its own.
    submit(tokenize_spec(allowed / "in.parquet", outside / "out"), settings)
    foreign_input = submit(tokenize_spec(outside / "in.parquet", allowed / "out-foreign"), settings)
    good = submit(tokenize_spec(allowed / "in.parquet", allowed / "out"), settings)

    assert wait(good.output, timeout=90).state == "complete"
    assert_exactly_once(good.output, ids)
    status = wait(foreign_input.output, timeout=30)
    assert status.state == "failed" and "outside BATCHFORMERS_ALLOWED_ROOTS" in status.failures[0]
    assert not list((outside / "out").glob("part-*"))
    assert not (outside / "out" / "_batchformers" / "shards").exists()
    assert not marker.exists()  # the pickle was never loaded
    logs = worker_logs(workers.log_dir)
    assert "ContentDisallowed" in logs or "untrusted content" in logs
    assert f"output {outside / 'out'} is outside BATCHFORMERS_ALLOWED_ROOTS" in logs
    assert all(process.poll() is None for process in workers.processes)  # and it kept running


def test_trust_remote_code_needs_the_job_and_the_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the model loader is given, not what the spec says: trust_remote_code reaches it only when
    the job asks for it and the worker allows it."""
    from worker import runners

    write_rows(tmp_path / "in.parquet", 5)
    spec = tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", trust_remote_code=True)
    plain = tokenize_spec(tmp_path / "in.parquet", tmp_path / "out")
    given: list[Any] = []

    def load(task: Any, options: Any) -> object:
        given.append(options)
        return object()

    monkeypatch.setattr(type(spec.task_type()), "load", load)
    monkeypatch.setattr(runners, "_cache", {})
    with pytest.raises(SpecError, match="BATCHFORMERS_ALLOW_TRUST_REMOTE_CODE"):
        runner_for(spec, Settings(allow_trust_remote_code=False))
    assert given == []  # refused before anything was loaded
    runner_for(spec, Settings(allow_trust_remote_code=True))  # both agree: allowed
    assert len(given) == 1 and given[-1].trust_remote_code is True
    runner_for(plain, Settings(allow_trust_remote_code=True))  # the worker allowing it is not enough
    assert len(given) == 2 and given[-1].trust_remote_code is False
    runner_for(plain, Settings(allow_trust_remote_code=False))
    assert len(given) == 2  # the same setup again: the loaded model is reused


def test_allowed_roots_are_checked_at_submit(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    write_rows(allowed / "in.parquet", 5)
    write_rows(tmp_path / "elsewhere" / "in.parquet", 5)
    (allowed / "escape").symlink_to(tmp_path / "elsewhere")
    settings = Settings(allowed_roots=f"{allowed}, s3://bucket/data, {MODELS_DIR}")
    cases = {
        "output": (allowed / "in.parquet", tmp_path / "elsewhere" / "out"),
        "input": (tmp_path / "elsewhere" / "in.parquet", allowed / "out"),
    }
    for field, (source, output) in cases.items():
        with pytest.raises(SpecError, match="outside the allowed roots") as raised:
            prepare(tokenize_spec(source, output), settings)
        assert raised.value.field == field
    with pytest.raises(SpecError, match="outside the allowed roots"):  # `..` and symlinks are resolved
        prepare(tokenize_spec(f"{allowed}/../elsewhere/in.parquet", allowed / "out2"), settings)
    with pytest.raises(SpecError, match="outside the allowed roots"):
        prepare(tokenize_spec(allowed / "escape" / "in.parquet", allowed / "out3"), settings)
    manifest, _ = prepare(tokenize_spec(allowed / "in.parquet", allowed / "out4"), settings)
    assert manifest.total_rows == 5
    assert settings.allows("s3://bucket/data/x.parquet") and settings.allows("s3://bucket/data")
    assert not settings.allows("s3://bucket/database/x.parquet")
    assert not settings.allows("s3://bucket/data/../secret/x.parquet")
    assert Settings().allows("/anything")  # no roots set: everything allowed


# -- a password-protected broker behind TLS ---------------------------------------------------------


def _self_signed_cert(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _TlsProxy:
    """Terminates TLS on a loopback port and forwards to a plain Redis (our redis-server has no TLS)."""

    def __init__(self, target_port: int, cert: Path, key: Path) -> None:
        self.target_port = target_port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.handshakes = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            secure = self.context.wrap_socket(client, server_side=True)
        except OSError:
            client.close()
            return
        self.handshakes += 1
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        threading.Thread(target=_pump, args=(upstream, secure), daemon=True).start()
        _pump(secure, upstream)

    def close(self) -> None:
        self.server.close()


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, target):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[str, str, _TlsProxy]]:
    """A ``rediss://`` URL with a password, and that password."""
    password = f"pw-{uuid.uuid4().hex}"
    cert, key = _self_signed_cert(tmp_path)
    with EmbeddedRedis(password=password) as server:
        proxy = _TlsProxy(server.port, cert, key)
        try:
            yield f"rediss://:{password}@127.0.0.1:{proxy.port}/0?ssl_ca_certs={cert}", password, proxy
        finally:
            proxy.close()


@pytest.mark.slow
def test_password_and_tls_broker_work_and_the_secret_never_shows(
    tmp_path: Path, tls_broker: tuple[str, str, _TlsProxy]
) -> None:
    url, password, proxy = tls_broker
    with pytest.raises(redis.RedisError):  # the broker really does require both
        redis.Redis.from_url(url.replace(f":{password}@", "")).ping()
    ids = write_rows(tmp_path / "in.parquet", 10)
    settings = Settings(broker_url=url, queue="secure", lease_seconds=5)
    submission = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out"), settings)
    queued = queued_messages(url, "secure")  # what Flower would show as task arguments
    assert len(queued) == 2 and not any(password.encode() in message for message in queued)

    env = {"BATCHFORMERS_LEASE_SECONDS": "5", "BATCHFORMERS_TORCH_THREADS": "1"}
    with LocalWorkers(url, count=1, queue="secure", log_dir=str(tmp_path / "logs"), extra_env=env) as workers:
        status = wait(submission.output, timeout=90)
        commands = [Path(f"/proc/{process.pid}/cmdline").read_bytes() for process in workers.processes]
    assert status.state == "complete", status
    assert_exactly_once(submission.output, ids)
    assert proxy.handshakes > 0  # the worker's traffic went through TLS
    logs = worker_logs(tmp_path / "logs")
    assert "rediss://:**@127.0.0.1" in logs  # the banner shows the broker, masked
    assert password not in logs
    assert not any(password.encode() in command for command in commands)  # not in `ps` either
    for path in Path(submission.output).rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path
    assert read_back(submission.output).num_rows == 10

