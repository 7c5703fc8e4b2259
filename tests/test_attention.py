"""SDPA kernels per device (pipeline/attention.py): on CUDA flash / memory-efficient and never cuDNN; the CPU left
as it is; and what generate_summary.json records."""

from types import SimpleNamespace

import pytest
import torch
from torch.nn.attention import SDPBackend

from pipeline import attention


@pytest.mark.parametrize("capability, expected", [
    ((9, 0), [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]),  # H100, H200
    ((8, 0), [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]),  # A100
    ((7, 5), [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]),  # T4: no flash kernel
])
def test_cuda_gets_flash_or_memory_efficient_and_never_cudnn(capability, expected):
    backends = attention.cuda_backends(capability)
    assert backends == expected and SDPBackend.CUDNN_ATTENTION not in backends


def on_device(device: str, implementation: str = "sdpa"):
    return SimpleNamespace(config=SimpleNamespace(_attn_implementation=implementation),
                           parameters=lambda: iter([SimpleNamespace(device=torch.device(device))]))


def test_a_cuda_model_records_its_kernels(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert attention.describe(on_device("cuda")) == "sdpa: flash, efficient, math (cuda)"
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with attention.kernels(on_device("cuda")):  # PyTorch's own switches, as SDPA reads them
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    assert attention.chosen(on_device("cuda", "eager")) is None  # eager attention has no SDPA kernel to pick
    assert attention.describe(on_device("cuda", "eager")) == "eager (cuda)"


def test_the_cpu_keeps_its_own_path(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: pytest.fail("not a CUDA device"))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert attention.chosen(model) is None and attention.describe(model) == "sdpa (cpu)"
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with attention.kernels(model):  # nothing switched: the CPU's kernels and every global flag as they were
        assert torch.backends.cuda.cudnn_sdp_enabled() == before
    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    assert attention.describe(eager) == "eager (cpu)"
