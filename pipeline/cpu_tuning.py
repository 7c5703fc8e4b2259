"""Tuning for CPUs only: kernel, allocator and TRL tweaks, each measured by `make bench` on the 2-core AMD EPYC
this project is developed on, and each confined to where it was measured.

The rest of the job calls three things, and each does nothing off the CPU:
- `for_inference(model)`: while inside, a float32 CPU model's linear layers run on oneDNN (decoding).
- `for_training(device)`: while inside, on a CPU, TRL's LM head scores only completion positions, its products
  run on oneDNN, and glibc returns big freed blocks to the OS.
- `release_freed_memory()`: after loading, on a machine without CUDA, glibc hands freed heap back.

Three of these reach private symbols (torch's oneDNN op, two TRL names) and one reaches glibc through ctypes.
Each is looked up by the name below; when a torch or TRL release moves it, or the C library is not glibc, the
lookup fails, a debug line says so, and the stock path runs (tested: the job still trains and generates).

oneDNN vs MKL: PyTorch sends float32 matrix products to MKL's sgemm, which on this AMD CPU runs the skinny
products of LM decoding and of the LM head (tens to hundreds of rows against Gemma's 262,144 x 640 output layer)
at ~33 GFLOP/s; oneDNN's linear runs them at ~66. The op is the one torch.compile's CPU backend emits; it reads
the weights in place (no copy). Results differ from MKL's only in summation order (~1e-6 relative).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging

import torch
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)

# The private names this module depends on; a test renames each to show the stock path still runs.
ONEDNN_LINEAR_OP = "_linear_pointwise"  # torch.ops.mkldnn
TRL_COMPACT_DECISION = "_use_triton"  # trl.trainer.utils: "score only the loss positions?"
TRL_LM_HEAD_FUNCTION = "_ChunkedLogProbFunction"  # trl.trainer.utils: the fused LM head's autograd Function
GLIBC = "libc.so.6"
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


@contextlib.contextmanager
def for_inference(model):
    """Decoding on a float32 CPU model: its linear layers run through oneDNN while inside (a generation step takes
    40% less time; prefill shapes gain 5-20%). Anything else (GPU, bf16, no oneDNN): nothing changes."""
    weight = model.get_output_embeddings().weight
    onednn = onednn_linear() if _is_cpu_fp32(weight) else None
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and _is_cpu_fp32(m.weight)] \
        if onednn else []
    for module in linears:
        module.forward = lambda x, m=module: onednn(x, m.weight, m.bias)
    try:
        yield
    finally:
        for module in linears:
            module.__dict__.pop("forward", None)  # back to nn.Linear.forward


@contextlib.contextmanager
def for_training(device: torch.device):
    """Training on a CPU: the three measured tweaks while inside; the TRL names are restored on exit, the allocator
    setting stays for the process. Off the CPU nothing changes (TRL already scores only completion positions on
    CUDA). glibc's mmap threshold fixed at 1 MiB: by default glibc raises it as big blocks are freed, and
    training's activations (hundreds of MB per step, in many sizes) then fragment the heap (-0.14 GiB peak)."""
    if device.type != "cpu":
        yield
        return
    _glibc_call("mallopt", M_MMAP_THRESHOLD, 1 << 20)
    with _completion_only_lm_head(), _trl_lm_head_on_onednn():
        yield


def release_freed_memory() -> None:
    """Hands heap memory that loading freed back to the OS (glibc keeps it otherwise; the 262k-token tokenizer's
    parse buffers alone are ~180 MB). Only on a machine without CUDA: the bench's memory figures are CPU ones."""
    if not torch.cuda.is_available():
        _glibc_call("malloc_trim", 0)


def fast_linear(weight: torch.Tensor):
    """The linear function for `weight`: oneDNN's for float32 on CPU, F.linear otherwise."""
    onednn = onednn_linear() if _is_cpu_fp32(weight) else None
    return onednn or torch.nn.functional.linear


def onednn_linear():
    """oneDNN's y = x @ w.T (+ b) for CPU tensors, or None where PyTorch has no such op."""
    op = getattr(torch.ops.mkldnn, ONEDNN_LINEAR_OP, None)
    if op is None or not torch.backends.mkldnn.is_available():
        log.debug("cpu_tuning: torch.ops.mkldnn.%s is not available; float32 linears use MKL", ONEDNN_LINEAR_OP)
        return None
    return lambda x, weight, bias=None: op(x, weight, bias, "none", [], "")


def _is_cpu_fp32(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cpu" and tensor.dtype == torch.float32


@contextlib.contextmanager
def _swapped(module, name: str, replacement):
    """module.name = replacement(original) while inside; nothing when `name` is gone (another TRL)."""
    original = getattr(module, name, None)
    if original is None:
        log.debug("cpu_tuning: %s.%s is gone in this version; keeping its stock behaviour", module.__name__, name)
        yield
        return
    setattr(module, name, replacement(original))
    try:
        yield
    finally:
        setattr(module, name, original)


def _completion_only_lm_head():
    """TRL (1.16) projects only the positions that are in the loss through the output layer on CUDA/XPU, but
    every position elsewhere (so that Neuron's compiled tile shapes stay fixed). On a CPU that spends most of a
    step pushing prompt tokens, whose loss is masked anyway, through Gemma's 262,144-word output layer. Scoring
    only the completion positions gives identical losses (tested) and trains 1.7x faster on 2 cores. TRL has no
    option for it, so its decision function, as TRL's loss code sees it, is swapped while training."""
    import trl.trainer.utils as trl_utils

    return _swapped(trl_utils, TRL_COMPACT_DECISION, lambda original: lambda device: device.type != "neuron")


def _trl_lm_head_on_onednn():
    """TRL's fused LM head computes [tokens, 32768] logit tiles with `torch.mm(hidden, weight_chunk.t(), out=tile)`
    in its forward and again in its backward, with autograd off. A subclass whose forward and backward send those
    products to oneDNN: the LM head, half of a training step, takes ~25% less time, same loss and gradients."""
    import trl.trainer.utils as trl_utils

    linear = onednn_linear()
    if linear is None:
        return contextlib.nullcontext()

    def on_onednn(original):
        class ChunkedLogProbOnOneDNN(original):
            @staticmethod
            def forward(ctx, *args):
                with _MatmulOnOneDNN(linear):
                    return original.forward(ctx, *args)

            @staticmethod
            def backward(ctx, *grads):
                with _MatmulOnOneDNN(linear):
                    return original.backward(ctx, *grads)

        return ChunkedLogProbOnOneDNN

    return _swapped(trl_utils, TRL_LM_HEAD_FUNCTION, on_onednn)


class _MatmulOnOneDNN(TorchFunctionMode):
    """torch.mm(a, w.t()) with a float32 CPU `a` and a row-major `w`, run without autograd, goes to oneDNN.
    (A torch-function mode is not seen by autograd's backward pass: it must be entered inside the backward.)"""

    def __init__(self, linear):
        super().__init__()
        self.linear = linear

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.mm and not torch.is_grad_enabled() and len(args) == 2:
            a, b = args
            if _is_cpu_fp32(a) and b.dtype == torch.float32 and b.dim() == 2 and b.t().is_contiguous():
                result = self.linear(a, b.t())
                if kwargs.get("out") is None:
                    return result
                return kwargs["out"].copy_(result)
        return func(*args, **kwargs)


def _glibc_call(name: str, *args: int) -> None:
    try:
        getattr(ctypes.CDLL(GLIBC), name)(*args)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        log.debug("cpu_tuning: %s() from %s is not available; the allocator keeps its defaults", name, GLIBC)
