"""The adapter's model card: the Hub's format, a Hub base model, the report's numbers, no path of this machine."""

import json
import os
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from conftest import ROOT, write_splits
from entrypoint import main
from eval import card as eval_card
from pipeline import card
from pipeline.config import ModelConfig, load_config
from pipeline.sources import cache_root

INDEXED = ("rougeL", "rouge1", "rouge2", "rougeL_char", "bleu", "chrf", "chrfpp", "rougeL_question", "type_accuracy")


def indexed_metrics(model_card: ModelCard) -> dict[str, float]:
    return {result.metric_config: result.metric_value for result in model_card.data.eval_results}


def test_the_base_model_is_a_hub_id_never_a_path(tmp_path):
    assert card.hub_base_model(ModelConfig()) == "google/gemma-3-270m"  # what the embedded GGUF was made from
    assert card.hub_base_model(ModelConfig(source="google/gemma-3-1b-it")) == "google/gemma-3-1b-it"
    named, unnamed, pathed = (tmp_path / name for name in ("named", "unnamed", "pathed"))
    for folder, config in ((named, {"_name_or_path": "google/gemma-3-1b-it"}), (unnamed, {}),
                           (pathed, {"_name_or_path": str(tmp_path / "elsewhere")})):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
    assert card.hub_base_model(ModelConfig(source=str(named))) == "google/gemma-3-1b-it"
    assert card.hub_base_model(ModelConfig(source=str(unnamed))) is None
    assert card.hub_base_model(ModelConfig(source=str(pathed))) is None
    # adapter_config.json: the Hub id, or the folder's name (what the generate stage's check compares)
    assert card.adapter_base_name(ModelConfig()) == "google/gemma-3-270m"
    assert card.adapter_base_name(ModelConfig(source=str(named))) == "named"


def test_the_card_of_the_committed_demo_report_parses_with_its_numbers():
    report = json.loads((ROOT / "examples" / "baseline-report.json").read_text(encoding="utf-8"))
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    parsed = ModelCard(str(eval_card.model_card(cfg, report)))
    assert parsed.data.base_model == "google/gemma-3-270m" and parsed.data.library_name == "peft"
    assert parsed.data.language == "ko" and parsed.data.pipeline_tag == "text-generation"
    assert indexed_metrics(parsed) == {key: report["metrics"]["tuned"][key] for key in INDEXED}
    result = parsed.data.eval_results[0]
    assert (result.dataset_type, result.dataset_split, result.dataset_revision) == (
        "sample", "test", report["test_set"]["sha256"])
    rouge = report["deltas"]["tuned"]["rougeL"]
    assert (f"| rougeL | {report['metrics']['base']['rougeL']:.4f} | {report['metrics']['tuned']['rougeL']:.4f} | "
            f"{report['metrics']['tuned']['rougeL'] - report['metrics']['base']['rougeL']:+.4f} | "
            f"{rouge['delta']:+.4f} [{rouge['ci95_low']:+.4f}, {rouge['ci95_high']:+.4f}]") in parsed.text
    assert "PeftModel.from_pretrained" in parsed.text and "vllm serve google/gemma-3-270m" in parsed.text


def test_the_card_says_how_the_test_rows_were_chosen():
    report = json.loads((ROOT / "examples" / "baseline-report.json").read_text(encoding="utf-8"))
    first = "\n".join(eval_card.model_card(load_config(ROOT / "configs" / "demo.yaml"), report).text.splitlines())
    assert "- Test split: the first 60 rows of `sample`" in first
    drawn = load_config(ROOT / "configs" / "demo.yaml", ["data.sample=stratified", "data.max_test_samples=60",
                                                         "data.sample_seed=3"])
    assert "- Test split: 60 rows drawn by `data.sample: stratified` (seed 3) of `sample`" in str(
        eval_card.model_card(drawn, report))


@pytest.fixture(scope="module")
def hub_named_model(tiny_model_dir, tmp_path_factory):
    """The tiny model as a folder downloaded from the Hub looks: its config.json records the Hub id."""
    folder = tmp_path_factory.mktemp("gemma-3-270m")
    for path in tiny_model_dir.iterdir():
        os.symlink(path, folder / path.name)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps({**config, "_name_or_path": "google/gemma-3-270m"}))
    return folder


@pytest.fixture(scope="module")
def carded(hub_named_model, tmp_path_factory):
    data = write_splits(tmp_path_factory.mktemp("data"), train=8, validation=2, test=4)
    out = tmp_path_factory.mktemp("out")
    assert main(["run", f"model.source={hub_named_model}", f"data.source={data}", f"output.dir={out}",
                 "train.max_steps=2", "generate.max_new_tokens=4", "score.bootstrap_samples=50"]) == 0
    return out, data


def test_a_tiny_runs_adapter_card_has_the_reports_numbers_and_no_path_of_the_machine(carded, hub_named_model,
                                                                                      tiny_model_dir):
    out, data = carded
    adapter, report = out / "train" / "adapter", json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert sorted(p.name for p in adapter.iterdir()) == ["README.md", "adapter_config.json",
                                                         "adapter_model.safetensors"]  # no tokenizer copy
    parsed = ModelCard.load(adapter / "README.md")
    assert parsed.data.base_model == "google/gemma-3-270m" and parsed.data.library_name == "peft"
    assert indexed_metrics(parsed) == {key: report["metrics"]["tuned"][key] for key in INDEXED}
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == hub_named_model.name
    roots = [out, cache_root(ModelConfig()), hub_named_model, tiny_model_dir, data, Path.home()]
    for path in adapter.iterdir():
        content = path.read_bytes()
        for root in roots:
            assert str(root).encode() not in content, f"{path.name} names {root}"


def test_a_user_adapter_is_scored_without_writing_into_its_folder(carded, hub_named_model, tmp_path):
    out, data = carded
    theirs = shutil.copytree(out / "train" / "adapter", tmp_path / "theirs")
    (theirs / "README.md").write_text("their own card\n")
    before = {p.name: p.read_bytes() for p in theirs.iterdir()}
    assert main(["run", f"model.source={hub_named_model}", f"data.source={data}",
                 f"output.dir={tmp_path / 'out'}", f"model.adapter={theirs}", "generate.max_new_tokens=4",
                 "score.bootstrap_samples=50"]) == 0
    assert {p.name: p.read_bytes() for p in theirs.iterdir()} == before


def test_a_report_without_a_metric_shows_a_dash_in_the_card():
    """A report made before a metric was added: the card lists what it has and "—" for the rest."""
    report = json.loads((ROOT / "examples" / "baseline-report.json").read_text(encoding="utf-8"))
    del report["metrics"]["tuned"]["chrfpp"], report["per_type"]["tuned"]["가정 살펴보기"]["type_accuracy"]
    parsed = ModelCard(str(eval_card.model_card(load_config(ROOT / "configs" / "demo.yaml"), report)))
    assert f"| chrfpp | {report['metrics']['base']['chrfpp']:.4f} | — | — |  |  |" in parsed.text
    assert "chrfpp" not in indexed_metrics(parsed) and "chrf" in indexed_metrics(parsed)
    assert next(line for line in parsed.text.splitlines() if line.startswith("| 가정 살펴보기 |")).endswith(" | — |")
