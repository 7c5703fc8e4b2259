"""CPU kernel and allocator choices: each one measured by `make bench` on the 2-core AMD EPYC this project runs
on, each a no-op where it does not apply (GPU, other dtypes, no oneDNN, no glibc).

oneDNN vs MKL: PyTorch sends float32 matrix products to MKL's sgemm, which on this AMD CPU runs the skinny
products of LM decoding and of the LM head (tens to hundreds of rows against Gemma's 262,144 x 640 output layer)
at ~33 GFLOP/s; oneDNN's linear runs them at ~66. The oneDNN op used is the one torch.compile's CPU backend emits;
it reads the weights in place (no copy). Results differ from MKL's only in summation order (~1e-6 relative).
"""

from __future__ import annotations

import ctypes
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def onednn_linear():
    """oneDNN's y = x @ w.T (+ b) for CPU tensors, or None where PyTorch was built without it."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return None
    return lambda x, weight, bias=None: op(x, weight, bias, "none", [], "")


def fast_linear(weight: torch.Tensor):
    """The linear function to use with `weight`: oneDNN's for float32 on CPU, F.linear otherwise."""
    onednn = onednn_linear() if weight.device.type == "cpu" and weight.dtype == torch.float32 else None
    return onednn or torch.nn.functional.linear


@contextmanager
def linear_layers_on_onednn(model):
    """Inference only (oneDNN's op has no backward): the model's float32 CPU linear layers run through oneDNN
    while inside. A generation step takes 40% less time; prefill shapes gain 5-20%."""
    onednn = onednn_linear()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and onednn is not None
               and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32]
    for module in linears:
        module.forward = lambda x, m=module: onednn(x, m.weight, m.bias)
    try:
        yield
    finally:
        for module in linears:
            module.__dict__.pop("forward", None)  # back to nn.Linear.forward


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
            if (a.device.type == "cpu" and a.dtype == b.dtype == torch.float32 and b.dim() == 2
                    and b.t().is_contiguous()):
                result = self.linear(a, b.t())
                if kwargs.get("out") is None:
                    return result
                return kwargs["out"].copy_(result)
        return func(*args, **kwargs)


@contextmanager
def trl_lm_head_on_onednn(device: torch.device):
    """Training on CPU: TRL's fused LM head (its ChunkedLogProbFunction) computes [tokens, 32768] logit tiles with
    `torch.mm(hidden, weight_chunk.t(), out=tile)`, in its forward and again in its backward; inside that
    function autograd is off. While inside this context, TRL's call site gets a subclass whose forward and
    backward send those products to oneDNN: the LM head, half of a training step, takes ~25% less time at a
    batch's ~100 completion tokens, with the same loss and gradients to ~1e-6. Like completion_only_lm_head in
    pipeline/train.py it swaps a private TRL name, restored on exit; with another TRL it does nothing.
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    linear = onednn_linear() if device.type == "cpu" else None
    if original is None or linear is None:
        yield
        return

    class ChunkedLogProbOnOneDNN(original):
        @staticmethod
        def forward(ctx, *args):
            with _MatmulOnOneDNN(linear):
                return original.forward(ctx, *args)

        @staticmethod
        def backward(ctx, *grads):
            with _MatmulOnOneDNN(linear):
                return original.backward(ctx, *grads)

    trl_utils._ChunkedLogProbFunction = ChunkedLogProbOnOneDNN
    try:
        yield
    finally:
        trl_utils._ChunkedLogProbFunction = original


def mmap_large_allocations(threshold: int = 1 << 20) -> None:
    """glibc: allocations from 1 MiB up come from mmap and go back to the OS when freed. By default glibc raises
    that threshold as big blocks are freed, and training's activations (hundreds of MB per step, in many sizes)
    then fragment the heap: peak RSS of the bench's training is ~0.14 GiB lower with a fixed threshold."""
    _glibc_call("mallopt", M_MMAP_THRESHOLD, threshold)


def release_freed_memory() -> None:
    """Hands heap memory that loading freed back to the OS (glibc keeps it otherwise; the 262k-token tokenizer's
    parse buffers alone are ~180 MB)."""
    _glibc_call("malloc_trim", 0)


def _glibc_call(name: str, *args: int) -> None:
    try:
        getattr(ctypes.CDLL("libc.so.6"), name)(*args)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        pass
