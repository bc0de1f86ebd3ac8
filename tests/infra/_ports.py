"""Free TCP ports on 127.0.0.1 for the servers the infra tests start (all held open together, so none repeats)."""

from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()
