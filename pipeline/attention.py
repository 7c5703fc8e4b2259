"""Which SDPA kernels attention runs on, per device, and the name generate_summary.json records for it.

    with attention.kernels(model): ...      # generation and training on CUDA: flash / memory-efficient, no cuDNN
    attention.describe(model) -> "sdpa (cpu)" | "sdpa: flash, efficient, math (cuda)" | "eager (cuda)"

On CUDA, PyTorch's SDPA prefers cuDNN's kernel on Hopper; the one H200 profile (bench/gpu_results.json, issue 28)
spent 439 ms of host time per 5 decode steps against 25.6 ms of GPU work, most of it cuDNN SDPA planning a graph
for each new sequence length. Flash attention (Ampere and later, no explicit mask) and the memory-efficient kernel
(any mask) have no such planning step; the math kernel stays last so that an input neither takes still runs.
Selected with the public torch.nn.attention.sdpa_kernel. The CPU has one SDPA path and is left exactly as it is.
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

FLASH_FROM = (8, 0)  # PyTorch's flash kernel needs compute capability 8.0 (Ampere) or later
NAMES = {SDPBackend.FLASH_ATTENTION: "flash", SDPBackend.EFFICIENT_ATTENTION: "efficient", SDPBackend.MATH: "math"}


def cuda_backends(capability: tuple[int, int]) -> list[SDPBackend]:
    """The SDPA kernels allowed on a CUDA device of this compute capability, in PyTorch's order of preference
    among them: never cuDNN."""
    fused = [SDPBackend.FLASH_ATTENTION] if tuple(capability) >= FLASH_FROM else []
    return fused + [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def implementation(model) -> str:
    """The attention implementation transformers runs for the model ("sdpa", "eager", ...)."""
    return getattr(model.config, "_attn_implementation", None) or "sdpa"


def chosen(model) -> list[SDPBackend] | None:
    """The SDPA kernels this job restricts the model to; None where it leaves PyTorch's choice as it is (the CPU,
    a model not on SDPA)."""
    device = next(model.parameters()).device
    if device.type != "cuda" or implementation(model) != "sdpa":
        return None
    return cuda_backends(torch.cuda.get_device_capability(device))


def kernels(model) -> contextlib.AbstractContextManager:
    """Inside: SDPA restricted to chosen(model)'s kernels; nothing changes where that is None."""
    backends = chosen(model)
    return sdpa_kernel(backends) if backends else contextlib.nullcontext()


def describe(model) -> str:
    """What generate_summary.json's "attention" records: the implementation, the kernels and the device type."""
    device = next(model.parameters()).device.type
    backends = chosen(model)
    kernels_named = f": {', '.join(NAMES[b] for b in backends)}" if backends else ""
    return f"{implementation(model)}{kernels_named} ({device})"
