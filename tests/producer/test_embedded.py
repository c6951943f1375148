"""The embedded Redis survives losing its port to another process between choosing it and binding it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis

from producer.embedded import EmbeddedRedis

pytestmark = pytest.mark.slow  # starts redis-server processes


def _server_pid(url: str) -> int:
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def test_a_port_taken_before_the_server_binds_it_means_another_port() -> None:
    server = EmbeddedRedis(persist=False)
    chosen = server.port
    with socket.socket() as thief:  # takes the chosen port first, as a racing process would
        thief.bind(("127.0.0.1", chosen))
        thief.listen()
        with server:
            assert server.port != chosen
            assert _server_pid(server.url) == server.pid


def test_another_redis_on_the_port_is_not_taken_for_ours() -> None:
    """A server that answers on the port but is not the process we started does not count."""
    with EmbeddedRedis(persist=False) as other:
        server = EmbeddedRedis(persist=False)
        server.port = other.port  # lost to a Redis of someone else's
        with server:
            assert server.port != other.port
            assert _server_pid(server.url) == server.pid != other.pid
            assert _server_pid(other.url) == other.pid


def test_a_restart_keeps_the_port_it_was_given() -> None:
    with EmbeddedRedis(persist=True) as server:
        first = server.port
        redis.Redis.from_url(server.url).set("kept", "1")
        server.stop(keep_data=True)
        server.start()
        assert server.port == first
        assert redis.Redis.from_url(server.url).get("kept") == b"1"


def test_an_explicit_port_that_is_taken_fails_instead_of_moving() -> None:
    with socket.socket() as thief:
        thief.bind(("127.0.0.1", 0))
        thief.listen()
        taken = thief.getsockname()[1]
        server = EmbeddedRedis(port=taken, persist=False)
        with pytest.raises(RuntimeError):
            server.start()
        assert server.port == taken and server.process is None


def test_only_the_password_holder_gets_in_and_nobody_reconfigures_it(tmp_path: Path) -> None:
    """Another local user can reach the port: without the password they are refused, and even with it
    CONFIG (``CONFIG SET dir`` + ``SAVE`` wrote a file anywhere as us), MODULE and DEBUG do not exist."""
    with EmbeddedRedis(persist=False) as server, EmbeddedRedis(persist=False) as other:
        assert server.password and server.password != other.password
        stranger = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2)
        with pytest.raises(redis.AuthenticationError):
            stranger.lpush("batchformers", b"a shard message of theirs")
        stranger.close()
        client = redis.Redis.from_url(server.url, socket_timeout=2)
        assert client.ping()
        for command in (("CONFIG", "SET", "dir", str(tmp_path)), ("CONFIG", "GET", "dir"),
                        ("MODULE", "LIST"), ("DEBUG", "SLEEP", "0")):
            with pytest.raises(redis.ResponseError, match="unknown command"):
                client.execute_command(*command)
        client.close()
