"""What machine a number was measured on: printed beside every benchmark and evaluation result."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def _cpu_model() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def _memory_gib() -> float | None:
    """Total physical memory in GiB (None where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (AttributeError, ValueError, OSError):
        return None


def describe_machine() -> dict:
    """cpu (model name), cores, memory_gib, gpu (name or "none"), torch, python and torch_threads."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "torch": torch.__version__,
        "gpu": gpu,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }
