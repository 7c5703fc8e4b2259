import json
import logging
import shutil

import pytest
import torch

from conftest import korean_rows, write_jsonl
from entrypoint import main
from pipeline import train as train_module
from pipeline.config import Config, DataConfig, ModelConfig, OutputConfig, TrainConfig, load_config
from pipeline.errors import ConfigError

EOS = 1


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    write_jsonl(folder / "train.jsonl", korean_rows(24))
    write_jsonl(folder / "validation.jsonl", korean_rows(4, start=100))
    write_jsonl(folder / "test.jsonl", korean_rows(6, start=200))
    return folder


def tiny_config(model_dir, data_dir, out_dir, **train) -> Config:
    defaults = dict(max_steps=4, learning_rate=5e-3, logging_steps=1, save_steps=2, save_total_limit=3)
    return Config(model=ModelConfig(source=str(model_dir)), data=DataConfig(source=str(data_dir)),
                  train=TrainConfig(**{**defaults, **train}), output=OutputConfig(dir=str(out_dir)))


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tiny_data, tmp_path_factory):
    """One training run on the tiny model; the in-memory PEFT model is captured when the adapter is saved."""
    captured = {}
    save_adapter = train_module.save_adapter

    def capture(model, *args):
        captured["model"] = model
        return save_adapter(model, *args)

    out = tmp_path_factory.mktemp("out")
    cfg = tiny_config(tiny_model_dir, tiny_data, out)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "save_adapter", capture)
        stage_dir = train_module.train(cfg, out)
    return cfg, stage_dir, captured["model"]


def test_train_writes_adapter_checkpoints_and_summary(trained, tiny_model_dir):
    cfg, stage_dir, _ = trained
    adapter = stage_dir / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "tokenizer.json").is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    assert sorted(p.name for p in (stage_dir / "checkpoints").iterdir() if p.is_dir()) == [
        "checkpoint-2", "checkpoint-4"]
    summary = json.loads((stage_dir / "train_summary.json").read_text())
    # hidden 64, 4 heads x 16 + 1 kv head x 16, two layers: r=16 on q/k/v/o gives (2048+1280+1280+2048) x 2.
    assert summary["trainable_parameters"] == 13_312
    assert summary["adapted_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert summary["adapted_layers"] == 8 and summary["steps"] == 4
    assert [step for step, _ in summary["loss_curve"]] == [1, 2, 3, 4]
    for key in ("examples_per_second", "tokens_per_second", "wall_seconds", "peak_memory", "packages",
                "validation_loss"):
        assert summary[key], key


def test_lora_weights_change_and_base_weights_stay_identical(trained, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    _, _, model = trained
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    lora_b = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b.values()), "LoRA B starts at zero and must move"
    checked = 0
    for name, tensor in model.named_parameters():
        if "lora_" in name:
            assert tensor.requires_grad
            continue
        assert not tensor.requires_grad, name
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(tensor.detach(), base[key]), name
        checked += 1
    assert checked == len([k for k in base if k != "lm_head.weight"])


def test_saved_adapter_loads_with_peft_and_generates(trained, tiny_model_dir, gemma_tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, stage_dir, _ = trained
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, stage_dir / "adapter")
    inputs = gemma_tokenizer("### context: 테스트 문장입니다.\n### question:", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 5


def test_finished_stage_is_not_redone(trained, caplog):
    caplog.set_level(logging.INFO)
    cfg, stage_dir, _ = trained
    summary = (stage_dir / "train_summary.json").read_text()
    train_module.train(cfg, stage_dir.parent)
    assert "already finished" in caplog.text
    assert (stage_dir / "train_summary.json").read_text() == summary


def test_resume_from_newest_checkpoint(tiny_model_dir, tiny_data, tmp_path):
    cfg = tiny_config(tiny_model_dir, tiny_data, tmp_path, max_steps=4)
    stage_dir = train_module.train(cfg, tmp_path)
    # Simulate a run that died after checkpoint-2: drop what came later.
    (stage_dir / "train_summary.json").unlink()
    shutil.rmtree(stage_dir / "adapter")
    shutil.rmtree(stage_dir / "checkpoints" / "checkpoint-4")
    train_module.train(cfg, tmp_path)
    summary = json.loads((stage_dir / "train_summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["steps"] == 4
    assert [step for step, _ in summary["loss_curve"]] == [1, 2, 3, 4]


def test_a_different_config_is_refused_in_the_same_output_dir(trained):
    cfg, stage_dir, _ = trained
    other = tiny_config(cfg.model.source, cfg.data.source, stage_dir.parent, learning_rate=1e-3)
    with pytest.raises(ConfigError, match="different config"):
        train_module.train(other, stage_dir.parent)


@pytest.mark.parametrize("padding_free", [False, True])
def test_collated_batch_ends_completions_with_eos_and_masks_prompts(tiny_model_dir, tiny_data, tmp_path,
                                                                    gemma_tokenizer, padding_free):
    from pipeline import data, models

    cfg = tiny_config(tiny_model_dir, tiny_data, tmp_path, padding_free=padding_free)
    model = models.load_model(cfg.model)
    split = data.load_split(cfg.data, "train", limit=4)
    dataset, _ = train_module.sft_dataset(split, gemma_tokenizer, cfg)
    trainer = train_module.build_trainer(cfg, model, gemma_tokenizer, dataset, dataset, tmp_path / "ckpt")
    batch = next(iter(trainer.get_train_dataloader()))
    ids, labels = batch["input_ids"], batch["labels"]
    if padding_free:  # one flat row; position_ids restart at each example
        starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
        rows = [(ids[0, a:b], labels[0, a:b]) for a, b in zip(starts, starts[1:])]
    else:
        rows = [(ids[i], labels[i]) for i in range(ids.shape[0])]
    assert len(rows) == 4
    for row_ids, row_labels in rows:
        real = row_labels != -100
        last = real.nonzero().max()
        assert row_labels[last] == EOS and row_ids[last] == EOS  # EOS is learned, not masked
        text = gemma_tokenizer.decode(row_ids[: real.nonzero().min()])
        assert text.endswith("### question:")  # everything up to the completion is masked
        prompt_len = int(real.nonzero().min())
        assert (row_labels[:prompt_len] == -100).all()
        assert EOS not in row_ids[:last].tolist()
    assert (ids[labels == -100] != EOS).all(), "EOS never appears as padding or prompt"


def test_target_module_typos_are_caught_before_training(tiny_model_dir, tiny_data, tmp_path, capsys):
    assert main(["train", f"model.source={tiny_model_dir}", f"data.source={tiny_data}", f"output.dir={tmp_path}",
                 "lora.target_modules=[q_prog,k_proj,v_proj,o_prog]"]) == 2
    err = capsys.readouterr().err
    assert "q_prog (did you mean q_proj?)" in err and "o_prog (did you mean o_proj?)" in err
    assert not (tmp_path / "train" / "checkpoints").exists()


def test_fp16_is_refused_at_config_validation():
    with pytest.raises(ConfigError, match="fp16"):
        load_config(None, ["model.dtype=float16"])


def test_completion_only_lm_head_gives_the_same_loss(tiny_model_dir, tiny_data, tmp_path, gemma_tokenizer):
    from pipeline import data, models

    cfg = tiny_config(tiny_model_dir, tiny_data, tmp_path)
    split = data.load_split(cfg.data, "train", limit=4)
    dataset, _ = train_module.sft_dataset(split, gemma_tokenizer, cfg)
    trainer = train_module.build_trainer(cfg, models.load_model(cfg.model), gemma_tokenizer, dataset, dataset,
                                         tmp_path / "ckpt")
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with torch.no_grad():
        every_position = trainer.compute_loss(trainer.model, dict(batch))
        with train_module.completion_only_lm_head():
            completion_only = trainer.compute_loss(trainer.model, dict(batch))
    assert torch.allclose(every_position, completion_only, rtol=1e-6, atol=1e-6)
    import trl.trainer.utils
    assert trl.trainer.utils._use_triton(torch.device("cpu")) is False  # restored
