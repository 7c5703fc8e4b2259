import dataclasses
import re
from pathlib import Path

import pytest

from conftest import ROOT
from entrypoint import main
from pipeline.config import load_config, to_dict
from pipeline.errors import ConfigError

SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))


def test_there_are_shipped_configs():
    names = {p.name for p in SHIPPED}
    assert {"demo.yaml", "gemma3-1b-korean-socratic.yaml", "gemma3-1b-korean-socratic-full.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_parses_and_starts_with_its_command(path: Path):
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert first_line.startswith("# python entrypoint.py ")
    assert f"--config configs/{path.name}" in first_line
    load_config(path)


def test_1b_config_is_the_tutorial_run_with_bugs_fixed():
    cfg = load_config(ROOT / "configs/gemma3-1b-korean-socratic.yaml")
    assert cfg.model.source == "google/gemma-3-1b-it" and cfg.model.dtype == "bfloat16"
    assert cfg.data.source == "JosephLee/korean-socratic-qa"
    assert cfg.data.max_train_samples == 1000 and cfg.data.max_test_samples is None
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (16, 32, 0.05)
    assert cfg.lora.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert cfg.train.learning_rate == 1e-4 and cfg.train.per_device_train_batch_size == 4
    assert cfg.train.num_train_epochs == 1 and cfg.train.optim == "adamw_torch" and cfg.train.logging_steps == 10
    full = load_config(ROOT / "configs/gemma3-1b-korean-socratic-full.yaml")
    assert full.data.max_train_samples is None
    assert full.lora == cfg.lora and full.model == cfg.model
    assert (cfg.train.save_steps, full.train.save_steps, full.train.learning_rate, full.train.logging_steps) == (
        100, 500, 1e-4, 10)
    assert cfg.generate == full.generate and (cfg.generate.batch_size, cfg.generate.max_new_tokens) == ("auto", 64)
    assert cfg.generate.max_batch_size == 1024  # on CUDA the rows that fit in free memory, at most this


# The defaults that became the demo's (they were learning_rate 1e-4, logging/save steps 10/50, batch 8, 64 tokens):
# a config that is not the demo states each, so that none of them changes under it.
MOVED_DEFAULTS = ("train.learning_rate", "train.logging_steps", "train.save_steps", "generate.batch_size",
                  "generate.max_new_tokens")


def test_no_config_is_the_demo_config(capsys):
    assert load_config(None) == load_config(ROOT / "configs/demo.yaml")
    assert main(["config", "show"]) == 0
    without = capsys.readouterr().out
    assert main(["config", "show", "--config", str(ROOT / "configs/demo.yaml")]) == 0
    assert capsys.readouterr().out == without and "output:\n  dir: outputs/demo\n" in without


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.name != "demo.yaml"], ids=lambda p: p.name)
def test_other_shipped_configs_state_every_default_that_moved(path):
    import yaml

    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert [key for key in MOVED_DEFAULTS if key.split(".")[1] not in raw[key.split(".")[0]]] == []


def test_overrides_are_typed():
    cfg = load_config(ROOT / "configs/demo.yaml", [
        "train.learning_rate=2e-4", "lora.target_modules=[q_proj,v_proj]", "data.max_test_samples=5",
        "train.gradient_checkpointing=true", "data.max_train_samples=null", "output.dir=/tmp/x",
        "generate.batch_size=auto", "generate.adapters.prod=/models/prod", "score.tokenize=13a",
    ])
    assert cfg.train.learning_rate == pytest.approx(2e-4)
    assert cfg.lora.target_modules == ("q_proj", "v_proj")
    assert cfg.data.max_test_samples == 5 and cfg.data.max_train_samples is None
    assert cfg.generate.batch_size == "auto" and cfg.generate.adapters == {"prod": "/models/prod"}
    assert cfg.score.tokenize == "13a"
    assert load_config(None, ["generate.batch_size=12"]).generate.batch_size == 12
    both = load_config(None, ["generate.adapters={a: /x, b: /y}"]).generate.adapters
    assert both == {"a": "/x", "b": "/y"}
    assert cfg.train.gradient_checkpointing is True
    assert cfg.output.dir == "/tmp/x"


@pytest.mark.parametrize("override, named", [
    ("train.lerning_rate=1", "train.lerning_rate"),
    ("trian.learning_rate=1", "trian.learning_rate"),
    ("lora.r=abc", "lora.r"),
    ("lora.r=1.5", "lora.r"),
    ("train.gradient_checkpointing=yes please", "train.gradient_checkpointing"),
    ("prompt.format=markdown", "prompt.format"),
    ("lora.target_modules=[1,2]", "lora.target_modules[0]"),
    ("train=3", "train"),
    ("generate.batch_size=0", "generate.batch_size"),
    ("generate.batch_size=biggest", "generate.batch_size"),
    ("generate.adapters=[a,b]", "generate.adapters"),
    ("generate.adapters.base=/x", "generate.adapters"),
    ("score.tokenize=spm", "score.tokenize"),
    ("generate.temperature=0", "generate.temperature"),
    ("generate.top_p=1.5", "generate.top_p"),
    ("score.reference=nobody", "score.reference"),
    ("train.report_to=[comet]", "train.report_to[0]"),
    ("export.check_rows=0", "export.check_rows"),
    ("export.min_identical_share=1.5", "export.min_identical_share"),
    ("score.semantic=1", "score.semantic"),
    ("score.regression_threshold=-0.01", "score.regression_threshold"),
    ("score.identical_warning=1.5", "score.identical_warning"),
])
def test_bad_override_exits_2_naming_the_key(override, named, capsys):
    assert main(["config", "show", "--config", str(ROOT / "configs/demo.yaml"), override]) == 2
    err = capsys.readouterr().err
    assert named in err and err.count("\n") == 1


def test_config_show_prints_text_with_line_breaks_escaped_and_reads_back(capsys, tmp_path):
    assert main(["config", "show", 'generate.stop_strings=["\\n\\n", "END"]']) == 0
    out = capsys.readouterr().out
    assert '  stop_strings:\n  - "\\n\\n"\n  - END\n' in out  # not - '\n\n    ' folded over three lines
    (tmp_path / "shown.yaml").write_text(out, encoding="utf-8")
    assert load_config(tmp_path / "shown.yaml") == load_config(None, ['generate.stop_strings=["\\n\\n", "END"]'])
    assert main(["config", "show"]) == 0
    assert '  stop_strings:\n  - "\\n"\n' in capsys.readouterr().out  # the plain style's


def test_config_show_prints_the_override(capsys):
    assert main(["config", "show", "--config", str(ROOT / "configs/demo.yaml"), "train.learning_rate=2e-4"]) == 0
    assert "learning_rate: 0.0002" in capsys.readouterr().out


@pytest.mark.parametrize("override, key", [("train.optim=adamw", "train.optim"),
                                           ("train.lr_scheduler_type=cosine_typo", "train.lr_scheduler_type"),
                                           ("train.lr_scheduler_type=reduce_lr_on_plateau",
                                            "train.lr_scheduler_type: 'reduce_lr_on_plateau' steps on an evaluation"),
                                           ("score.num_examples=-1", "score.num_examples"),
                                           ("train.learning_rate=nan", "train.learning_rate"),
                                           ("generate.adapters.prod=/no/such/adapter", "generate.adapters.prod")])
def test_config_show_runs_every_check_a_stage_runs_before_loading(capsys, override, key):
    assert main(["config", "show", "--config", str(ROOT / "configs/demo.yaml"), override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and key in err


def test_unknown_key_and_wrong_type_in_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  learning_rate: 1.0e-4\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(bad)
    bad.write_text("lora:\n  r: sixteen\n")
    with pytest.raises(ConfigError, match=r"lora\.r"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_a_split_key_names_its_successors(capsys):
    assert main(["config", "show", "data.max_eval_samples=100"]) == 2
    err = capsys.readouterr().err
    assert "data.max_validation_samples" in err and "data.max_test_samples" in err and err.count("\n") == 1


def test_a_tracker_that_is_not_installed_is_named(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"train.report_to: wandb needs the wandb package"):
        load_config(None, ["train.report_to=[wandb]"])


def test_the_demo_config_resolves_to_what_the_baseline_report_records():
    """The stage hashes are taken over to_dict: every value the committed baseline recorded comes back the same,
    to the JSON type (epochs 1 stays 1.0, lists stay lists)."""
    import json

    recorded = json.loads((ROOT / "examples/baseline-report.json").read_text(encoding="utf-8"))["config"]
    resolved = to_dict(load_config(ROOT / "configs/demo.yaml"))
    for section, values in recorded.items():
        assert {key: resolved[section][key] for key in values} == values
        assert json.dumps({key: resolved[section][key] for key in values}) == json.dumps(values)


@pytest.mark.parametrize("override, message", [
    ("train.lerning_rate=1", "unknown config key: train.lerning_rate (did you mean learning_rate?)"),
    ("trian.learning_rate=1", "unknown config key: trian.learning_rate (did you mean train?)"),
    ("train={learning_rate: 1}", "train: override a single value such as train.<field>=..., not a whole section"),
    ("generate.batch_size=biggest", "generate.batch_size: Input should be a valid integer or 'auto'; got 'biggest'"),
    ("generate.adapters.a=5", "generate.adapters.a: Input should be a valid string; got 5"),
])
def test_a_bad_override_says_what_would_do(override, message):
    with pytest.raises(ConfigError) as raised:
        load_config(None, [override])
    assert str(raised.value) == message


@pytest.mark.parametrize("text, key", [
    ("lora:\n  r: '16'\n", "lora.r"), ("lora:\n  r: 16.0\n", "lora.r"), ("lora:\n  r: true\n", "lora.r"),
    ("train:\n  gradient_checkpointing: 1\n", "train.gradient_checkpointing"),
    ("train:\n  learning_rate: true\n", "train.learning_rate"), ("output:\n  dir: 5\n", "output.dir"),
    ("trainer:\n  seed: 1\n", "trainer (did you mean train?)"), ("lora: 5\n", "lora"),
])
def test_yaml_values_are_taken_as_written_not_converted(tmp_path, text, key):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(bad)


def test_yaml_shorthands_that_are_meant(tmp_path):
    path = tmp_path / "short.yaml"
    path.write_text("train:\n  learning_rate: 2e-4\n  num_train_epochs: 2\nlora:\n  target_modules: q_proj\nscore:\n")
    cfg = load_config(path)
    assert cfg.train.learning_rate == 2e-4 and type(cfg.train.num_train_epochs) is float  # YAML 1.1: "2e-4" is text
    assert cfg.lora.target_modules == ("q_proj",) and cfg.score == load_config(None).score


def test_sections_stay_frozen_dataclasses_that_check_a_replaced_value():
    """Stages derive configs with dataclasses.replace (export, identity pinning): the result is checked again."""
    cfg = load_config(None)
    changed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=7))
    assert changed.train.seed == 7 and changed.lora == cfg.lora and to_dict(changed)["train"]["seed"] == 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.seed = 7
    with pytest.raises(ValueError, match="greater than 0"):
        dataclasses.replace(cfg.lora, r=0)


def test_score_report_keys_default_and_override():
    cfg = load_config(ROOT / "configs/demo.yaml")
    assert (cfg.score.semantic, cfg.score.regression_threshold, cfg.score.identical_warning) == (None, 0.05, 0.95)
    cfg = load_config(ROOT / "configs/demo.yaml", ["score.semantic=false", "score.regression_threshold=0.1",
                                                    "score.identical_warning=0.5"])
    assert (cfg.score.semantic, cfg.score.regression_threshold, cfg.score.identical_warning) == (False, 0.1, 0.5)


def test_the_optimizer_and_scheduler_names_read_from_source_are_the_installed_transformers_enums():
    """config show reads them without importing transformers.training_args (4.5 s); they must be what it holds."""
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    from pipeline.config import transformers_choices

    assert transformers_choices("training_args", "OptimizerNames") == tuple(m.value for m in OptimizerNames)
    assert transformers_choices("trainer_utils", "SchedulerType") == tuple(m.value for m in SchedulerType)


@pytest.mark.subprocess
def test_config_show_imports_no_torch_nor_transformers(tmp_path):
    """Why config show took ~5 s: building TRL's training arguments imported torch, transformers and peft."""
    import subprocess
    import sys

    script = ("import sys; from entrypoint import main; code = main(['config', 'show', 'train.optim=adamw']); "
              "print(code, sorted(m for m in ('torch', 'transformers.training_args', 'peft', 'trl') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "2 []", done.stderr
    assert "train.optim: 'adamw' is not one of transformers" in done.stderr


@pytest.mark.parametrize("group", [[], ["config"], ["data"], ["model"]], ids=lambda g: " ".join(g) or "root")
def test_help_lists_every_command_without_cutting_its_description(group, capsys):
    assert main([*group, "--help"]) == 0
    commands = capsys.readouterr().out.split("Commands:\n")[1]
    assert commands.strip() and "..." not in commands


def test_a_config_error_goes_to_the_job_log_of_the_output_dir_it_names(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert main(["train", "--config", str(ROOT / "configs/demo.yaml"), f"output.dir={out}",
                 "train.lerning_rate=1"]) == 2
    err = capsys.readouterr().err
    assert err == "error: unknown config key: train.lerning_rate (did you mean learning_rate?)\n"
    assert (out / "job.log").read_text(encoding="utf-8").rstrip().endswith(f"ERROR entrypoint: {err.strip()}")
    # no output.dir given: the default's (relative to the working directory, as a run would use it)
    assert main(["generate", "lora.r=0"]) == 2
    assert "ERROR entrypoint: error: lora.r: " in (tmp_path / "outputs/demo/job.log").read_text(encoding="utf-8")


def test_a_config_whose_output_dir_cannot_be_read_errs_on_stderr_only(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n", encoding="utf-8")
    assert main(["train", "--config", str(broken)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["score", "output.dir=[a, b]"]) == 2
    assert "output.dir" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [broken]  # no output folder, no job.log
