"""Fault injection for tests/test_faults.py and `python -m benchmarks.reliability`.

Private servers that a test may kill and restart without touching anything shared: a Milvus Lite server on its own
data directory, a redis-server on a free port, a PostgreSQL cluster made by initdb in a temporary directory (never the
machine's PostgreSQL on 5432). Then what every scenario counts: images lost, vectors duplicated, rows without files
and files without rows, and the reconcile check that must end clean.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from webapp.ports import free_port, wait_for_port

VENV_BIN = Path(sys.executable).parent
RESULTS_ENV = "FAULTS_RESULTS"  # a JSON-lines file each scenario appends its Outcome to (benchmarks.reliability)
SCALE_ENV = "FAULTS_SCALE"  # "full" (benchmarks.reliability) or unset (the CI subset)


def full_scale() -> bool:
    return os.environ.get(SCALE_ENV) == "full"


# Processes ------------------------------------------------------------------------------------
def kill_tree(pid: int, sig: int = signal.SIGKILL) -> int:
    """Send `sig` to a process and every descendant at once (a prefork worker's parent and children, as
    `kill -9` of its process group would); returns how many processes were signalled."""
    try:
        root = psutil.Process(pid)
        victims = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for process in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(sig)
    psutil.wait_procs(victims, timeout=10)
    return len(victims)


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and its descendants."""
    try:
        root = psutil.Process(pid)
        total = 0
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
        return total
    except psutil.NoSuchProcess:
        return 0


class Server:
    """A server process on a fixed port that can be killed (SIGKILL), stopped and started again on the same
    port and data: what a crash and a restart by a supervisor look like to its clients."""

    name = "server"

    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = self.workdir / f"{self.name}.log"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def popen_options(self) -> dict:
        return {}

    def start(self, timeout: float = 60.0) -> Server:
        with open(self.log_path, "a") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                self.argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.workdir,
                **self.popen_options(),
            )
        try:
            wait_for_port(self.port, timeout, process=self.process)
        except TimeoutError as exc:
            raise RuntimeError(f"{self.name} did not start: {exc}\n{self.log_tail()}") from exc
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            kill_tree(self.process.pid)
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self, *, hard: bool = True, down_seconds: float = 0.0) -> None:
        self.kill() if hard else self.stop()
        time.sleep(down_seconds)
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


class MilvusServer(Server):
    name = "milvus"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [
            str(VENV_BIN / "milvus-lite"),
            "server",
            "--data-dir",
            str(self.workdir / "data"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]

    def start(self, timeout: float = 90.0) -> MilvusServer:
        super().start(timeout)
        return self


class RedisServer(Server):
    """redis-server with an append-only file fsynced on every write: the durable set-up a broker needs (a queue
    kept only in memory is lost by any restart)."""

    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        return [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]

    @staticmethod
    def available() -> bool:
        return bool(shutil.which("redis-server") or Path("/usr/bin/redis-server").exists())


class PostgresCluster(Server):
    """A private PostgreSQL cluster (initdb in a temporary directory, its own free port, trust auth on 127.0.0.1).

    As root, initdb and postgres run as the `postgres` user (they refuse to run as root)."""

    name = "postgres"

    def __init__(self, workdir: Path, port: int | None = None):
        super().__init__(workdir, port)
        self.bin = self.find_bin()
        self.data = self.workdir / "data"

    @staticmethod
    def find_bin() -> Path | None:
        for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
            if (candidate / "initdb").exists():
                return candidate
        return None

    @classmethod
    def available(cls) -> bool:
        if cls.find_bin() is None:
            return False
        if os.geteuid() != 0:
            return True
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return False
        return True

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def _owner(self) -> dict:
        """Popen arguments that run a command as the postgres user when we are root (it refuses to run as root)."""
        return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}

    def popen_options(self) -> dict:
        return self._owner()

    def init(self) -> PostgresCluster:
        assert self.bin is not None
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres")
            self.log_path.touch()
            shutil.chown(self.log_path, "postgres")
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync"],
            check=True,
            capture_output=True,
            cwd=self.workdir,
            **self._owner(),
        )
        return self

    def argv(self) -> list[str]:
        assert self.bin is not None
        return [
            str(self.bin / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.workdir}",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=100",
        ]

    def start(self, timeout: float = 60.0) -> PostgresCluster:
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while subprocess.run(
            [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
            capture_output=True,
        ).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres not ready:\n{self.log_tail()}")
            time.sleep(0.1)
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """A fast shutdown (SIGINT): open connections are cut, as a restart by the operator does."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()


# What a scenario counts -------------------------------------------------------------------------
@dataclass
class Outcome:
    """One row of docs/reliability.md."""

    scenario: str
    kind: str  # fault, load or input
    broker: str = "-"
    requests: int = 0
    server_errors: int = 0  # 5xx other than a clean 503 (an unhandled error)
    clean_refusals: int = 0  # clean 4xx and 503 answers (with a reason), counted apart from server errors
    hung: int = 0  # requests that did not answer within the client timeout
    images: int = 0
    ready: int = 0
    lost_before_reconcile: int = 0  # images left with no task to finish them, before reconcile repaired them
    lost: int = 0  # after reconcile: images neither ready nor failed with a reason
    duplicated: int = 0  # image ids with more than one vector
    partial: int = 0  # rows without their file plus files without their row
    reconcile_clean: bool | None = None
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def record(self) -> None:
        """Append to the results file of benchmarks.reliability, when one is being collected."""
        path = os.environ.get(RESULTS_ENV)
        if path:
            with open(path, "a") as handle:
                handle.write(json.dumps(asdict(self)) + "\n")


def vector_counts(store, collection: str | None = None) -> Counter:
    """Rows per image id in a collection (the active one by default), read back through the query iterator."""
    view = store.collection(collection) if collection else store
    return Counter(int(row["image_id"]) for row in view.iter_rows(("image_id",), batch_size=2000))


def partial_files(media_root: Path) -> dict[str, list[str]]:
    """Rows whose file is missing and files that no row refers to (image or thumbnail), under MEDIA_ROOT."""
    from webapp.catalog.models import ProductImage

    media_root = Path(media_root)
    referenced: set[str] = set()
    missing = []
    for name, thumbnail in ProductImage.objects.values_list("image", "thumbnail").iterator():
        for stored in (name, thumbnail):
            if not stored:
                continue
            referenced.add(stored)
            if not (media_root / stored).is_file():
                missing.append(stored)
    orphans = []
    for folder in ("products", "thumbnails"):
        root = media_root / folder
        if root.is_dir():
            orphans += [
                str(path.relative_to(media_root))
                for path in root.rglob("*")
                if path.is_file() and str(path.relative_to(media_root)) not in referenced
            ]
    return {"rows_without_files": sorted(missing), "files_without_rows": sorted(orphans)}


def catalog_state() -> dict[str, int]:
    from webapp.catalog.models import ProductImage

    counts = Counter(ProductImage.objects.values_list("status", flat=True))
    return {"images": sum(counts.values()), **{status: counts.get(status, 0) for status in ProductImage.Status.values}}


def reconcile(*, stuck_after_seconds: float = 0.0, repair: bool = False) -> dict:
    """vectors_reconcile on the active collection; the counts of its report."""
    from datetime import timedelta

    from webapp.search.reconcile import vectors_reconcile

    reports = vectors_reconcile(repair=repair, stuck_after=timedelta(seconds=stuck_after_seconds))
    active = [report for report in reports if report.role == "active"]
    assert active, "no active collection to reconcile"
    return {**active[0].counts(), "clean": active[0].clean}


def wait_for(predicate, timeout: float, interval: float = 0.2, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")
        time.sleep(interval)


TASK_EVENT = re.compile(r"Task [\w.]+\[[\w-]+\] (received|succeeded|retry|raised|rejected|ignored)")


def tasks_in_flight(worker_log: str) -> int:
    """Messages a worker has received (running, prefetched, or held for a retry's countdown) and not finished,
    read from its log (Celery logs each message received and how each run ended)."""
    events = Counter(TASK_EVENT.findall(worker_log))
    return events["received"] - sum(count for event, count in events.items() if event != "received")


def wait_settled(worker, timeout: float, quiet_seconds: float = 2.0) -> dict[str, int]:
    """Wait until the queues are empty and the worker holds no message, steadily for `quiet_seconds`; returns the
    catalog state then. An image still pending or processing after that has no task left: its message was lost."""
    from webapp.ops.health import queue_depths

    deadline = time.monotonic() + timeout
    since = None
    while time.monotonic() < deadline:
        depths = queue_depths()
        busy = any(depths.get(queue) for queue in ("ingest", "default")) or tasks_in_flight(worker.log()) > 0
        if busy or None in (depths.get("ingest"), depths.get("default")):
            since = None
        elif since is None:
            since = time.monotonic()
        elif time.monotonic() - since >= quiet_seconds:
            return catalog_state()
        time.sleep(0.3)
    raise AssertionError(f"the queue did not drain within {timeout:.0f}s: {catalog_state()}, {queue_depths()}")


def finish_with_reconcile(outcome: Outcome, worker, store, media_root: Path, *, timeout: float = 120.0) -> Outcome:
    """The end of every ingestion scenario: let the queue drain, count what was lost (images with no task left,
    ready images without a vector), repair with reconcile (a short stuck_after: nothing is queued any more), let
    the re-queued work drain, then a check that must be clean."""
    wait_settled(worker, timeout)
    found = reconcile(stuck_after_seconds=0.0)
    outcome.lost_before_reconcile = found["stuck"] + found["missing"]
    reconcile(stuck_after_seconds=0.0, repair=True)
    state = wait_settled(worker, timeout)
    check = reconcile(stuck_after_seconds=0.0)
    counts = vector_counts(store)
    files = partial_files(media_root)
    outcome.images = state["images"]
    outcome.ready = state["ready"]
    outcome.lost = state["images"] - state["ready"] - state["failed"]
    outcome.duplicated = sum(1 for n in counts.values() if n > 1)
    outcome.partial = len(files["rows_without_files"]) + len(files["files_without_rows"])
    outcome.reconcile_clean = bool(check["clean"])
    if state["failed"]:
        outcome.notes.append(f"{state['failed']} image(s) failed with a recorded reason")
    if not check["clean"]:
        outcome.notes.append(f"reconcile after repair: {check}")
    missing_vectors = state["ready"] - len(counts)
    if missing_vectors:
        outcome.notes.append(f"{missing_vectors} ready image(s) without a vector")
        outcome.lost += max(0, missing_vectors)
    return outcome
