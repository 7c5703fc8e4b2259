"""CPU kernel choices: same results as the default kernels, really taken, and undone on exit."""

import pytest
import torch

from pipeline import cpu


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture
def counted_onednn(monkeypatch):
    """cpu.onednn_linear, counting the products it computes."""
    calls, real = [], cpu.onednn_linear()
    assert real is not None, "this torch has no oneDNN: the CPU paths under test would not be taken"

    def counting(x, weight, bias=None):
        calls.append(tuple(weight.shape))
        return real(x, weight, bias)

    monkeypatch.setattr(cpu, "onednn_linear", lambda: counting)
    return calls


def test_onednn_linears_match_the_default_kernels_and_are_restored(model, counted_onednn):
    input_ids = torch.randint(10, 5000, (2, 9))
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.inference_mode():
        default = model(input_ids=input_ids).logits
        with cpu.linear_layers_on_onednn(model):
            assert all("forward" in vars(m) for m in linears)
            onednn = model(input_ids=input_ids).logits
    assert not any("forward" in vars(m) for m in linears)
    assert len(counted_onednn) >= len(linears)
    torch.testing.assert_close(onednn, default, rtol=1e-4, atol=1e-4)


def test_trl_lm_head_on_onednn_gives_the_same_loss_and_gradients(counted_onednn):
    import trl.trainer.utils as trl_utils

    original = trl_utils._ChunkedLogProbFunction
    torch.manual_seed(0)
    weight = torch.randn(70000, 32) * 0.1  # three 32768-row chunks, the last one short
    targets = torch.randint(0, 70000, (9,))

    def loss_and_grad():
        hidden = torch.randn(9, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
        log_probs = trl_utils._ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0, 32768, None, 1.0,
                                                             ())[0]
        (-log_probs.sum()).backward()
        return log_probs.detach(), hidden.grad

    expected = loss_and_grad()
    with cpu.trl_lm_head_on_onednn(torch.device("cpu")):
        assert trl_utils._ChunkedLogProbFunction is not original
        got = loss_and_grad()
    assert trl_utils._ChunkedLogProbFunction is original
    assert len(counted_onednn) == 6  # 3 chunks in the forward, recomputed in the backward
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_cpu_paths_do_nothing_on_other_devices(model, counted_onednn):
    import trl.trainer.utils as trl_utils

    original = trl_utils._ChunkedLogProbFunction
    with cpu.trl_lm_head_on_onednn(torch.device("cuda")):
        assert trl_utils._ChunkedLogProbFunction is original
    bf16 = torch.nn.Linear(4, 4).to(torch.bfloat16)
    assert cpu.fast_linear(bf16.weight) is torch.nn.functional.linear
    with cpu.linear_layers_on_onednn(bf16):
        assert "forward" not in vars(bf16)
