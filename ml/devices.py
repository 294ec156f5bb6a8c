"""Which device runs the model, and in which reduced precision (shared by training, serving and evaluation)."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """ "auto" (or empty): the GPU when there is one, else the CPU; anything else is passed to torch.device."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_bf16_supported() -> bool:
    """bfloat16 matmuls/convolutions are fast on this CPU (AVX512-BF16 / AMX): about 2x for training here."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cuda_amp_dtype() -> torch.dtype:
    """The autocast dtype on this GPU: bfloat16 where supported, else float16."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast_for(device: torch.device, cpu_bf16: bool) -> torch.autocast:
    """Autocast on a GPU (cuda_amp_dtype), bfloat16 autocast on a CPU when cpu_bf16, else a disabled one."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=cuda_amp_dtype())
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16)


def autocast_dtype_name(device: torch.device, cpu_bf16: bool) -> str | None:
    """The name of the dtype autocast_for uses ("bfloat16", "float16"), None when it is disabled."""
    if device.type == "cuda":
        return str(cuda_amp_dtype()).removeprefix("torch.")
    return "bfloat16" if cpu_bf16 else None
