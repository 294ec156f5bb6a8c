"""TCP port helpers shared by `make run`, the tests and the benchmarks (no Django needed).

python -m webapp.ports HOST PORT TIMEOUT_SECONDS   # exit 0 once HOST:PORT accepts connections
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time


class PortTimeout(TimeoutError):
    """The port did not open in time, or the process meant to open it exited first."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, timeout: float = 60.0, *, host: str = "127.0.0.1", process: subprocess.Popen | None = None
) -> None:
    """Return once host:port accepts a TCP connection; raise PortTimeout when it does not in time.

    With `process`, fail as soon as that process exits (its log says why) instead of waiting out the timeout.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise PortTimeout(f"process exited with {process.returncode} before opening {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise PortTimeout(f"{host}:{port} did not open within {timeout:.0f}s")


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    host, port, timeout = argv[0], int(argv[1]), float(argv[2])
    try:
        wait_for_port(port, timeout, host=host)
    except PortTimeout as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
