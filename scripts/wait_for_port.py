"""Wait until host:port accepts TCP connections: wait_for_port.py HOST PORT TIMEOUT_SECONDS."""

import socket
import sys
import time

host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        with socket.create_connection((host, port), timeout=1):
            sys.exit(0)
    except OSError:
        time.sleep(0.2)
print(f"{host}:{port} did not open within {timeout:.0f}s", file=sys.stderr)
sys.exit(1)
