"""CPU tuning: the same results as the stock kernels, really taken on a CPU, undone on exit, never applied off the
CPU, and the stock path when a private symbol it relies on is gone."""

import json
import logging

import pytest
import torch

from conftest import korean_rows, write_splits
from entrypoint import main
from pipeline import cpu_tuning


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture
def counted_onednn(monkeypatch):
    """cpu_tuning.onednn_linear, counting the products it computes."""
    calls, real = [], cpu_tuning.onednn_linear()
    assert real is not None, "this torch has no oneDNN: the CPU paths under test would not be taken"

    def counting(x, weight, bias=None):
        calls.append(tuple(weight.shape))
        return real(x, weight, bias)

    monkeypatch.setattr(cpu_tuning, "onednn_linear", lambda: counting)
    return calls


@pytest.fixture
def glibc_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_tuning, "_glibc_call", lambda name, *args: calls.append(name))
    return calls


def test_onednn_linears_match_the_default_kernels_and_are_restored(model, counted_onednn):
    input_ids = torch.randint(10, 5000, (2, 9))
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.inference_mode():
        default = model(input_ids=input_ids).logits
        with cpu_tuning.for_inference(model):
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
    with cpu_tuning.for_training(torch.device("cpu")):
        assert trl_utils._ChunkedLogProbFunction is not original
        got = loss_and_grad()
    assert trl_utils._ChunkedLogProbFunction is original
    assert len(counted_onednn) == 6  # 3 chunks in the forward, recomputed in the backward
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_completion_only_lm_head_gives_the_same_loss(tiny_model_dir, tmp_path, gemma_tokenizer):
    import trl.trainer.utils as trl_utils

    from pipeline import models, sft, sources, tokenized
    from pipeline.config import Config, ModelConfig, TrainConfig

    cfg = Config(model=ModelConfig(source=str(tiny_model_dir)), train=TrainConfig(max_steps=1))
    dataset, _ = tokenized.sft_dataset(korean_rows(4), gemma_tokenizer, cfg)
    trainer = sft.build_trainer(cfg, sft.training_arguments(cfg, tmp_path), models.load_model(cfg.model, sources.model_source(cfg.model)),
                                  gemma_tokenizer, dataset, dataset)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    original = trl_utils._use_triton
    with torch.no_grad():
        every_position = trainer.compute_loss(trainer.model, dict(batch))
        with cpu_tuning.for_training(torch.device("cpu")):
            assert trl_utils._use_triton is not original
            completion_only = trainer.compute_loss(trainer.model, dict(batch))
    assert torch.allclose(every_position, completion_only, rtol=1e-6, atol=1e-6)
    assert trl_utils._use_triton is original


def test_nothing_is_tuned_off_the_cpu(tiny_model_dir, counted_onednn, glibc_calls, monkeypatch):
    import trl.trainer.utils as trl_utils
    from transformers import AutoConfig, AutoModelForCausalLM

    names = (trl_utils._use_triton, trl_utils._ChunkedLogProbFunction)
    for device in ("cuda", "xpu", "mps", "meta"):
        with cpu_tuning.for_training(torch.device(device)):
            assert (trl_utils._use_triton, trl_utils._ChunkedLogProbFunction) == names
    with torch.device("meta"):  # a model that is not on the CPU
        elsewhere = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_model_dir))
    with cpu_tuning.for_inference(elsewhere):
        assert not any("forward" in vars(m) for m in elsewhere.modules())
    bf16 = torch.nn.Linear(4, 4).to(torch.bfloat16)
    assert cpu_tuning.fast_linear(bf16.weight) is torch.nn.functional.linear
    with monkeypatch.context() as cuda_machine:
        cuda_machine.setattr(torch.cuda, "is_available", lambda: True)
        cpu_tuning.release_freed_memory()
    assert counted_onednn == [] and glibc_calls == []
    cpu_tuning.release_freed_memory()  # and on this CPU-only machine it does run
    assert glibc_calls == ["malloc_trim"]


@pytest.mark.parametrize("symbol", ["ONEDNN_LINEAR_OP", "TRL_COMPACT_DECISION", "TRL_LM_HEAD_FUNCTION", "GLIBC"])
def test_the_job_trains_and_generates_when_a_private_symbol_is_gone(symbol, tiny_model_dir, tmp_path, monkeypatch,
                                                                    caplog):
    """As after a torch or TRL release that moved the symbol (or on a C library that is not glibc)."""
    monkeypatch.setattr(cpu_tuning, symbol, "libgone.so.9" if symbol == "GLIBC" else "_moved_away")
    caplog.set_level(logging.DEBUG, logger="pipeline.cpu_tuning")
    write_splits(tmp_path / "data", train=8, validation=2, test=3)
    assert main(["run", f"model.source={tiny_model_dir}", f"data.source={tmp_path / 'data'}",
                 f"output.dir={tmp_path / 'out'}", "train.max_steps=2", "generate.max_new_tokens=4",
                 "score.bootstrap_samples=20"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert (report["rows"], report["models"], report["train"]["steps"]) == (3, ["base", "tuned"], 2)
    assert report["generate"]["max_new_tokens"] == 4
    assert any("_moved_away" in r.message or "libgone" in r.message for r in caplog.records), "no debug line said so"
