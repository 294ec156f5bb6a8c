"""What every benchmark shares: the run context, the processes it started, a CPU meter, latency statistics.

No Django here (the load-generator processes import this module too).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from webapp.ports import PortTimeout, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
DOCS = ROOT / "docs"
CLK_TCK = os.sysconf("SC_CLK_TCK")
T_START = time.monotonic()


def log(message: str) -> None:
    print(f"[bench {time.monotonic() - T_START:7.1f}s] {message}", flush=True)


class BenchError(RuntimeError):
    pass


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_port(port: int, timeout: float, process: subprocess.Popen, log_path: Path) -> None:
    """webapp.ports.wait_for_port, failing with the tail of the process's log."""
    try:
        wait_for_port(port, timeout, host="127.0.0.1", process=process)
    except PortTimeout as exc:
        raise BenchError(f"{exc}:\n{tail(log_path)}") from exc


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------
class Stack:
    """Every process the benchmark starts, each in its own session so the whole group can be stopped."""

    def __init__(self):
        self.procs: list[tuple[str, subprocess.Popen, object]] = []

    def start(
        self, name: str, argv: list[str], env: dict, log_path: Path, stop_signal: int = signal.SIGTERM
    ) -> subprocess.Popen:
        handle = open(log_path, "ab")  # noqa: SIM115 - closed by stop_all()
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        process.stop_signal = stop_signal  # type: ignore[attr-defined]
        self.procs.append((name, process, handle))
        return process

    def stop(self, process: subprocess.Popen, timeout: float = 8.0) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                # The process group this benchmark created for it (its own session).
                os.killpg(process.pid, getattr(process, "stop_signal", signal.SIGTERM))
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=timeout)
        # Children (gunicorn and celery workers) may outlive a killed parent: end the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        if process.poll() is None:
            process.wait(timeout=5)

    def stop_all(self) -> None:
        for name, process, handle in reversed(self.procs):
            try:
                t0 = time.monotonic()
                self.stop(process)
                if time.monotonic() - t0 > 2:
                    log(f"stopping {name} took {time.monotonic() - t0:.0f}s")
            except Exception as exc:  # keep stopping the others
                print(f"could not stop {name} ({process.pid}): {exc}", file=sys.stderr)
            handle.close()
        self.procs.clear()


# --------------------------------------------------------------------------------------------
# CPU
# --------------------------------------------------------------------------------------------
def session_cpu_seconds(session_ids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by every live process of each session."""
    totals = dict.fromkeys(session_ids, 0.0)
    by_sid = {sid: name for name, sid in session_ids.items()}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        sid = int(fields[3])
        if sid in by_sid:
            totals[by_sid[sid]] += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return totals


def machine_busy() -> tuple[float, float]:
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class CpuMeter:
    """CPU used by each part of the stack between start() and stop()."""

    def __init__(self, sessions: dict[str, int]):
        self.sessions = sessions

    def start(self):
        self.t0 = time.monotonic()
        self.c0 = session_cpu_seconds(self.sessions)
        self.b0 = machine_busy()
        self.self0 = sum(os.times()[:2])
        return self

    def stop(self, extra: dict[str, float] | None = None) -> dict:
        wall = time.monotonic() - self.t0
        c1 = session_cpu_seconds(self.sessions)
        b1 = machine_busy()
        used = {name: max(0.0, c1[name] - self.c0.get(name, 0.0)) for name in self.sessions}
        used["bench (this process)"] = sum(os.times()[:2]) - self.self0
        used.update(extra or {})
        busy = (b1[0] - self.b0[0]) / max(1, b1[1] - self.b0[1])
        # Whatever else runs on the machine (other people's tests, services) competes for the same cores.
        other = max(0.0, busy * (os.cpu_count() or 1) * wall - sum(used.values()))
        return {"wall_s": wall, "cpu_s": used, "machine_busy": busy, "other_cpu_s": other}


def cpu_summary(cpu: dict) -> str:
    cores = os.cpu_count() or 1
    parts = [
        f"{name} {seconds / cpu['wall_s'] * 100:.0f}%"
        for name, seconds in sorted(cpu["cpu_s"].items(), key=lambda kv: -kv[1])
        if seconds / max(cpu["wall_s"], 1e-9) >= 0.01
    ]
    other = cpu.get("other_cpu_s", 0.0) / max(cpu["wall_s"], 1e-9)
    return (
        f"machine {cpu['machine_busy'] * 100:.0f}% busy of {cores} cores; "
        + ", ".join(parts)
        + f", processes not started by the benchmark {other * 100:.0f}% (100% = one core)"
    )


def cpu_shares(cpu: dict) -> dict:
    """Average cores used by each part of the stack during a run (1.0 = one core)."""
    return {name: seconds / max(cpu["wall_s"], 1e-9) for name, seconds in cpu["cpu_s"].items()}


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def latency_stats(latencies_s: list[float]) -> dict:
    """p50/p90/p99/max/mean in milliseconds of latencies given in seconds."""
    ms = [x * 1000 for x in latencies_s]
    return {q: percentile(ms, n) for q, n in (("p50", 50), ("p90", 90), ("p99", 99))} | {
        "max": max(ms) if ms else float("nan"),
        "mean": sum(ms) / len(ms) if ms else float("nan"),
    }


def log_load(label: str, result: dict) -> None:
    log(
        f"{label}: {result['rps']:.1f} req/s, p50 {result['p50']:.1f} ms, p90 {result['p90']:.1f} ms, "
        f"p99 {result['p99']:.1f} ms, {result['ok']} ok, {result['errors']} errors {result.get('error_kinds') or ''}"
    )
    if "cpu" in result:
        log(f"  cpu: {cpu_summary(result['cpu'])}")
    for sample in result.get("error_samples", []):
        log(f"  error sample: {sample}")


# --------------------------------------------------------------------------------------------
# The run context
# --------------------------------------------------------------------------------------------
class Context:
    """One benchmark run: its arguments, directories, processes and results, shared by every phase."""

    def __init__(self, args):
        self.args = args
        self.stack = Stack()
        self.var_dir = Path(args.var_dir).resolve()
        self.logs = self.var_dir / "log"
        self.results: dict = {"phases": {}, "notes": []}
        self.sessions: dict[str, int] = {}  # part of the stack -> its session id, for the CPU meter
        self.env: dict[str, str] = {}
        self.milvus: subprocess.Popen | None = None
        self.milvus_port = 0
        self.web_port = 0
        self.settings = None  # django.conf.settings once set up

    def note(self, text: str) -> None:
        self.results["notes"].append(text)

    def cpu_meter(self) -> CpuMeter:
        return CpuMeter(self.sessions).start()

    def worker_log(self) -> str:
        return (self.logs / "worker.log").read_text(errors="replace")
