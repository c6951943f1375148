"""A server that loses its port to another process before binding it is restarted on another port."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from typing import Any

import pytest

from tests.ports import listens, serve_on_a_free_port

pytestmark = pytest.mark.slow  # starts server processes


def test_a_port_taken_first_is_given_up_for_another() -> None:
    thieves: list[socket.socket] = []
    servers: list[subprocess.Popen[bytes]] = []

    def start(port: int) -> tuple[int, Any]:
        if not thieves:  # the first port is taken between choosing it and the server binding it
            thief = socket.socket()
            thief.bind(("127.0.0.1", port))
            thief.listen()
            thieves.append(thief)
        servers.append(subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return servers[-1].pid, servers[-1].kill

    try:
        port = serve_on_a_free_port(start, timeout=30)
        assert len(servers) == 2 and port != thieves[0].getsockname()[1]
        assert listens(servers[-1].pid, port) is True
        assert listens(servers[-1].pid, thieves[0].getsockname()[1]) is False  # held by us, the thief
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200
    finally:
        for server in servers:
            server.kill()
            server.wait()
        for thief in thieves:
            thief.close()
