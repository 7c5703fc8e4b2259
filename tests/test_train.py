import dataclasses
import json
import logging
import os
import resource
import shutil
import time

import pytest
import torch

from conftest import korean_rows, write_jsonl
from entrypoint import main
from pipeline import sft, tokenized
from pipeline import train as train_module
from pipeline.config import Config, DataConfig, ModelConfig, OutputConfig, TrainConfig
from pipeline.errors import ConfigError
from pipeline.runtime import git_state
from pipeline.sources import model_source

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
        started = time.perf_counter()
        stage_dir = train_module.train(cfg, out)
        captured["elapsed"] = time.perf_counter() - started
        captured["rss_after_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return cfg, stage_dir, captured["model"], captured


def test_train_writes_adapter_checkpoints_and_summary(trained, tiny_model_dir):
    cfg, stage_dir, _, _ = trained
    adapter = stage_dir / "adapter"
    # the card replaces PEFT's template; no 33 MB tokenizer copy (train.save_tokenizer); the base by name, not path
    assert sorted(p.name for p in adapter.iterdir()) == ["README.md", "adapter_config.json",
                                                         "adapter_model.safetensors"]
    assert "[More Information Needed]" not in (adapter / "README.md").read_text()
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == tiny_model_dir.name
    # in sorted order, not a set's (which follows the process's hash seed): the same files from every run
    for saved in (adapter, stage_dir / "checkpoints" / "checkpoint-2"):
        targets = json.loads((saved / "adapter_config.json").read_text())["target_modules"]
        assert targets == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert sorted(p.name for p in (stage_dir / "checkpoints").iterdir() if p.is_dir()) == [
        "checkpoint-2", "checkpoint-4"]
    summary = json.loads((stage_dir / "train_summary.json").read_text())
    assert summary["adapted_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert summary["adapted_layers"] == 8 and summary["steps"] == cfg.train.max_steps == 4
    assert [step for step, _ in summary["loss_curve"]] == [1, 2, 3, 4]
    assert (summary["train_rows"], summary["validation_rows"]) == (24, 4)  # the dataset's sizes


def test_trainable_parameters_are_r_times_in_plus_out_per_adapted_linear(trained, tiny_model_dir):
    """From the base model's own layer shapes (hidden 64; q/o 64x64, k/v 64x16 with one KV head; 2 layers):
    LoRA adds A (r x in) and B (out x r) to each adapted linear."""
    from transformers import AutoModelForCausalLM

    cfg, stage_dir, _, _ = trained
    summary = json.loads((stage_dir / "train_summary.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapted = [module for name, module in base.named_modules()
               if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in cfg.lora.target_modules]
    assert len(adapted) == summary["adapted_layers"] == 8
    expected = sum(cfg.lora.r * (m.in_features + m.out_features) for m in adapted)
    assert summary["trainable_parameters"] == expected == 16 * (128 + 80 + 80 + 128) * 2
    assert summary["total_parameters"] == sum(p.numel() for p in base.parameters()) + expected


def test_throughput_time_memory_and_versions_agree_with_their_sources(trained):
    """examples/s and tokens/s are the Trainer's counts over the summary's own runtime (rounded to 0.1 s); the wall
    time lies between the training runtime and the time the stage took here; the peak memory is this process's
    peak so far; the versions are the installed ones."""
    import importlib.metadata
    import platform

    cfg, stage_dir, _, captured = trained
    summary = json.loads((stage_dir / "train_summary.json").read_text())
    runtime = summary["train_runtime_seconds"]
    low, high = max(runtime - 0.05, 1e-3), runtime + 0.05  # the runtime the rates were computed from
    examples = cfg.train.max_steps * cfg.train.per_device_train_batch_size
    assert examples / high - 1e-3 <= summary["examples_per_second"] <= examples / low + 1e-3
    state = json.loads((stage_dir / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    tokens = state["num_input_tokens_seen"]  # the Trainer's own count (include_num_input_tokens_seen)
    assert tokens >= examples * 40  # every example is over 40 tokens
    assert summary["tokens_seen"] == summary["session_tokens"] == tokens  # one uninterrupted session
    assert tokens / high - 0.1 <= summary["tokens_per_second"] <= tokens / low + 0.1
    assert runtime <= summary["wall_seconds"] <= captured["elapsed"] + 0.05
    assert 0.05 < summary["peak_memory"]["cpu_rss_gib"] <= captured["rss_after_gib"] + 1e-3
    assert summary["provenance"]["git"] == git_state()
    assert summary["provenance"]["hardware"]["cpu_count"] == os.cpu_count()
    packages = dict(summary["provenance"]["packages"])
    assert packages.pop("python") == platform.python_version()
    assert packages == {name: importlib.metadata.version(name) for name in packages}
    assert {"torch", "transformers", "peft", "trl"} <= set(packages)


def test_validation_loss_is_the_adapters_loss_on_the_validation_completions(trained, tiny_model_dir, tiny_data,
                                                                           gemma_tokenizer):
    """Recomputed here: the saved adapter on each validation row alone, cross-entropy over the completion tokens
    (the question and EOS), averaged over all of them."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pipeline.prompt import STYLES

    _, stage_dir, _, _ = trained
    summary = json.loads((stage_dir / "train_summary.json").read_text())
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                      stage_dir / "adapter").eval()
    total, count = 0.0, 0
    for line in (tiny_data / "validation.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        example = STYLES["plain"].training_ids(gemma_tokenizer, row["input"], row["target"])
        ids, mask = torch.tensor([example["input_ids"]]), torch.tensor(example["completion_mask"])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        losses = torch.nn.functional.cross_entropy(logits.float(), ids[0, 1:], reduction="none")
        total, count = total + losses[mask[1:] == 1].sum().item(), count + int(mask[1:].sum())
    assert summary["validation_loss"] == pytest.approx(total / count, abs=2e-5)


def test_the_tokenizer_is_saved_with_the_adapter_only_when_asked(trained, tmp_path):
    from pipeline.models import load_tokenizer

    cfg, _, model, _ = trained
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, save_tokenizer=True))
    adapter = train_module.save_adapter(model, load_tokenizer(cfg.model, model_source(cfg.model)), tmp_path, cfg)
    saved = {p.name for p in adapter.iterdir()}
    assert {"adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= saved


def test_lora_weights_change_and_base_weights_stay_identical(trained, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    _, _, model, _ = trained
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    lora_b = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert len(lora_b) == 8 and all(p.abs().sum() > 0 for p in lora_b.values()), "LoRA B starts at zero and must move"
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


@pytest.fixture(scope="module")
def learnable_model_dir(tmp_path_factory, gemma_tokenizer):
    """A tiny Gemma 3 whose random output layer is wide enough (init std 0.08, not 0.02) for LoRA on attention to
    move the argmax within a few dozen steps; the shared tiny model's logits are too flat for that."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(gemma_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, initializer_range=0.08, pad_token_id=0,
        eos_token_id=1, bos_token_id=2, tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("learnable-gemma3")
    Gemma3ForCausalLM(config).save_pretrained(path)
    gemma_tokenizer.save_pretrained(path)
    return path


def test_the_saved_adapter_has_learned_to_end_a_training_row_with_eos(learnable_model_dir, tmp_path,
                                                                      gemma_tokenizer):
    """Load the saved adapter with PEFT as a user would: on a training row, the tuned model predicts the
    completion's tokens and, after the question, EOS; the base model predicts neither."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pipeline.prompt import STYLES

    rows = korean_rows(2)
    for split in ("train", "validation", "test"):
        write_jsonl(tmp_path / "data" / f"{split}.jsonl", rows)
    cfg = tiny_config(learnable_model_dir, tmp_path / "data", tmp_path, max_steps=60, learning_rate=2e-2,
                      per_device_train_batch_size=2, save_steps=1000)
    stage_dir = train_module.train(cfg, tmp_path)
    example = STYLES["plain"].training_ids(gemma_tokenizer, rows[0]["input"], rows[0]["target"])
    ids, prompt_length = torch.tensor([example["input_ids"]]), example["completion_mask"].count(0)
    completion = example["input_ids"][prompt_length:]
    predicted = {}
    for name in ("base", "tuned"):
        model = AutoModelForCausalLM.from_pretrained(learnable_model_dir).eval()
        if name == "tuned":
            model = PeftModel.from_pretrained(model, stage_dir / "adapter").eval()
        with torch.no_grad():  # the prediction at every completion position, given the row's text before it
            predicted[name] = model(input_ids=ids).logits[0, prompt_length - 1:-1].argmax(-1).tolist()
    assert completion[-1] == EOS
    assert predicted["tuned"][-1] == EOS and predicted["base"][-1] != EOS
    right = {name: sum(p == t for p, t in zip(tokens, completion)) for name, tokens in predicted.items()}
    assert right["tuned"] >= 0.8 * len(completion) and right["base"] == 0, right


def test_finished_stage_is_not_redone(trained, caplog):
    caplog.set_level(logging.INFO)
    cfg, stage_dir, _, _ = trained
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


def test_a_checkpoint_saved_only_in_part_is_not_resumed_from(trained, tmp_path):
    _, stage_dir, _, _ = trained
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(stage_dir / "checkpoints", checkpoints)
    partial = checkpoints / "checkpoint-10"  # killed while saving: no trainer_state.json yet
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"")
    assert sft.newest_complete_checkpoint(checkpoints) == str(checkpoints / "checkpoint-4")
    assert sft.newest_complete_checkpoint(tmp_path / "nothing-here") is None


def test_a_different_config_is_refused_in_the_same_output_dir(trained):
    cfg, stage_dir, _, _ = trained
    other = tiny_config(cfg.model.source, cfg.data.source, stage_dir.parent, learning_rate=1e-3)
    with pytest.raises(ConfigError, match="holds a train stage made from other inputs") as refused:
        train_module.train(other, stage_dir.parent)
    # it names what changed, and points to another output.dir, never to deleting the trained adapter
    assert "config.train.learning_rate" in str(refused.value) and "set output.dir to a new directory" in str(
        refused.value) and "remove" not in str(refused.value)


def trainer_for(cfg, rows, tokenizer, checkpoint_dir):
    from pipeline import models

    dataset, _ = tokenized.sft_dataset(rows, tokenizer, cfg)
    return sft.build_trainer(cfg, sft.training_arguments(cfg, checkpoint_dir),
                             models.load_model(cfg.model, model_source(cfg.model)), tokenizer, dataset, dataset)


@pytest.mark.parametrize("padding_free", [False, True])
def test_collated_batch_ends_completions_with_eos_and_masks_prompts(tiny_model_dir, tiny_data, tmp_path,
                                                                    gemma_tokenizer, padding_free):
    from pipeline import data

    cfg = tiny_config(tiny_model_dir, tiny_data, tmp_path, padding_free=padding_free)
    trainer = trainer_for(cfg, data.load_split(cfg.data, "train", limit=4), gemma_tokenizer, tmp_path / "ckpt")
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


def test_padding_free_examples_do_not_attend_across_each_other(learnable_model_dir, tiny_data, tmp_path,
                                                               gemma_tokenizer):
    """A padding-free batch packs examples into one row; each must get the loss it gets alone (the packed
    loss is the token-weighted mean of the single-example losses). A cross-example leak changes it: checked on the
    same model by letting positions run on across the boundary."""
    from pipeline import data

    cfg = tiny_config(learnable_model_dir, tiny_data, tmp_path, per_device_train_batch_size=3)
    rows = data.load_split(cfg.data, "train", limit=3)
    trainer = trainer_for(cfg, rows, gemma_tokenizer, tmp_path / "ckpt")
    packed = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert packed["input_ids"].shape[0] == 1 and (packed["position_ids"][0] == 0).sum() == 3

    def loss(batch):
        with torch.no_grad():
            return trainer.compute_loss(trainer.model, dict(batch)).item()

    singles = []
    for example in trainer.train_dataset:  # each example collated alone, as the dataloader collates the three
        batch = trainer._prepare_inputs(trainer.data_collator([example]))
        singles.append((loss(batch), int((batch["labels"][0, 1:] != -100).sum())))
    expected = sum(value * tokens for value, tokens in singles) / sum(tokens for _, tokens in singles)
    assert loss(packed) == pytest.approx(expected, rel=1e-6)
    # The check above can fail: one causal sequence over the three examples gives another loss.
    leaking = {key: value for key, value in packed.items() if key in ("input_ids", "labels")}
    leaking["attention_mask"] = torch.ones_like(packed["input_ids"])
    assert abs(loss(leaking) - expected) > 1e-3 * expected  # a thousand times the tolerance above


def test_an_optimizer_transformers_does_not_know_fails_before_any_model_loads(tiny_data, tmp_path, capsys,
                                                                               monkeypatch):
    from pipeline import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["train", f"data.source={tiny_data}", f"output.dir={tmp_path}", "train.optim=adamw"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.optim: 'adamw' is not one of" in err and "adamw_torch" in err
    assert main(["train", f"data.source={tiny_data}", f"output.dir={tmp_path}",
                 "train.lr_scheduler_type=linear_warmup"]) == 2
    assert "train.lr_scheduler_type" in capsys.readouterr().err


def test_target_module_typos_are_caught_before_training_and_the_fix_reruns(tiny_model_dir, tiny_data, tmp_path,
                                                                           capsys):
    common = [f"model.source={tiny_model_dir}", f"data.source={tiny_data}", f"output.dir={tmp_path}",
              "train.max_steps=1"]
    assert main(["train", *common, "lora.target_modules=[q_prog,k_proj,v_proj,o_prog]"]) == 2
    err = capsys.readouterr().err
    assert "q_prog (did you mean q_proj?)" in err and "o_prog (did you mean o_proj?)" in err
    assert not (tmp_path / "train").exists()
    assert main(["train", *common]) == 0  # the corrected command, same output dir
    assert json.loads((tmp_path / "train" / "train_summary.json").read_text())["steps"] == 1


def test_fp16_is_refused_for_gemma3_before_its_weights_load(tiny_model_dir):
    from pipeline import models

    with pytest.raises(ConfigError, match="fp16 and the loss turns NaN"):
        models.load_model(ModelConfig(source=str(tiny_model_dir), dtype="float16"),
                          model_source(ModelConfig(source=str(tiny_model_dir))))


def test_the_training_settings_raise_no_warning_a_user_cannot_act_on(tmp_path):
    import warnings

    for setting in (False, True):
        cfg = Config(train=TrainConfig(gradient_checkpointing=setting))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            args = sft.training_arguments(cfg, tmp_path / "checkpoints")
        assert [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, UserWarning))] == []
        assert args.gradient_checkpointing is setting  # the setting still reaches the Trainer
