"""What reruns: a stage is skipped only when what its outputs depend on is unchanged by content (pipeline/identity.py,
pipeline/stage.py), and the same content at another path is still up to date."""

import dataclasses
import json
import shutil

import pytest

from conftest import korean_rows, write_jsonl, write_splits
from entrypoint import main
from pipeline import identity, prompt, sources
from pipeline.config import ModelConfig


@pytest.fixture(scope="module")
def tuned_adapter(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter with random (non-zero) B for the tiny model, so that its outputs differ from the base's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    path = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(path)
    return path


def job(command, model_dir, data_dir, out, adapter, *extra):
    return [command, f"model.source={model_dir}", f"data.source={data_dir}", f"output.dir={out}",
            f"model.adapter={adapter}", "generate.max_new_tokens=4", "generate.stop_strings=[]",
            "score.bootstrap_samples=20", *extra]


def predictions(out):
    return (out / "generate" / "predictions.jsonl").read_bytes()


@pytest.fixture
def evaluated(tiny_model_dir, tuned_adapter, tmp_path):
    """A finished generate + score of the tuned adapter on 4 test rows (no training)."""
    data_dir = write_splits(tmp_path / "data", train=4, validation=2, test=4)
    adapter = shutil.copytree(tuned_adapter, tmp_path / "adapter")
    out = tmp_path / "out"
    assert main(job("run", tiny_model_dir, data_dir, out, adapter)) == 0
    return data_dir, adapter, out


def test_same_content_at_another_path_is_up_to_date(tiny_model_dir, evaluated, tmp_path, caplog):
    data_dir, adapter, out = evaluated
    before, report = predictions(out), (out / "report.json").read_bytes()
    moved_data = shutil.copytree(data_dir, tmp_path / "elsewhere" / "data")
    moved_adapter = shutil.copytree(adapter, tmp_path / "elsewhere" / "adapter")
    moved_model = shutil.copytree(tiny_model_dir, tmp_path / "elsewhere" / "model")
    assert main(job("generate", moved_model, moved_data, out, moved_adapter)) == 0
    assert "generate: already finished" in caplog.text
    assert predictions(out) == before and not (out / "superseded").exists()
    assert main(job("score", moved_model, moved_data, out, moved_adapter)) == 0  # rescored: the config's paths moved
    assert json.loads((out / "report.json").read_text())["test_set"] == json.loads(report)["test_set"]


def test_an_edited_reference_rescores_without_regenerating(tiny_model_dir, evaluated, caplog):
    """Generation never reads a reference: an edited one is rescored from the data, the predictions untouched."""
    data_dir, adapter, out = evaluated
    old, before = json.loads((out / "report.json").read_text()), predictions(out)
    rows = korean_rows(4, 200)
    tuned = [json.loads(line)["prediction"] for line in before.decode().splitlines()][4 + 2]  # tuned, row 2
    rows[2]["target"] = f"(가정 살펴보기) {tuned}"  # the tuned model's own question, labelled
    write_jsonl(data_dir / "test.jsonl", rows)
    assert main(job("score", tiny_model_dir, data_dir, out, adapter)) == 0  # rescored, not refused
    assert predictions(out) == before and not (out / "superseded").exists()
    new = json.loads((out / "report.json").read_text())
    assert new["test_set"]["sha256"] != old["test_set"]["sha256"] and new["test_set"]["rows"] == 4
    assert new["metrics"]["tuned"]["rougeL"] != old["metrics"]["tuned"]["rougeL"]  # the edited row's score moved
    assert main(job("run", tiny_model_dir, data_dir, out, adapter)) == 0
    assert "generate: already finished" in caplog.text and predictions(out) == before


def test_a_new_prompt_template_regenerates(tiny_model_dir, evaluated, monkeypatch):
    data_dir, adapter, out = evaluated
    before = predictions(out)
    monkeypatch.setitem(prompt.STYLES, "plain", dataclasses.replace(prompt.STYLES["plain"],
                                                                    template="### argument: {input}\n### question:"))
    assert main(job("generate", tiny_model_dir, data_dir, out, adapter)) == 0
    assert predictions(out) != before and (out / "superseded").is_dir()


def test_a_replaced_adapter_config_regenerates(tiny_model_dir, evaluated):
    data_dir, adapter, out = evaluated
    before = predictions(out)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["lora_alpha"] = 4 * config["lora_alpha"]  # same weights, a four times larger update
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert main(job("generate", tiny_model_dir, data_dir, out, adapter)) == 0
    after = [json.loads(line) for line in predictions(out).decode().splitlines()]
    old = [json.loads(line) for line in before.decode().splitlines()]
    assert [r["raw"] for r in after if r["model"] == "base"] == [r["raw"] for r in old if r["model"] == "base"]
    assert [r["raw"] for r in after if r["model"] == "tuned"] != [r["raw"] for r in old if r["model"] == "tuned"]


def test_a_torn_line_in_another_process_count_shard_is_regenerated(tiny_model_dir, evaluated):
    """A hard kill of a two-process run left rank 1's shard ending in half a line; the rerun uses one process."""
    data_dir, adapter, out = evaluated
    whole = predictions(out).decode().splitlines(keepends=True)
    stage = out / "generate"
    (stage / "predictions.jsonl").unlink()
    (stage / "generate_summary.json").unlink()
    (stage / "predictions.rank0-of-2.jsonl").write_text("".join(whole[0::2]))
    (stage / "predictions.rank1-of-2.jsonl").write_text("".join(whole[1:5:2]) + whole[5][:40])
    assert main(job("generate", tiny_model_dir, data_dir, out, adapter)) == 0
    assert predictions(out).decode().splitlines(keepends=True) == whole
    summary = json.loads((stage / "generate_summary.json").read_text())
    assert summary["resumed_rows"] == len(whole[0::2]) + 2  # the torn row was generated again
    assert sorted(p.name for p in stage.glob("predictions*")) == ["predictions.jsonl"]


def test_a_hub_model_is_identified_by_the_commit_its_revision_resolves_to(tmp_path, monkeypatch):
    """A model updated on the Hub under the same revision (main) is another input. Resolved offline from a Hub
    cache laid out as huggingface_hub lays it out."""
    cache = tmp_path / "hub"
    repo = cache / "models--google--gemma-3-1b-it"
    for commit in ("a" * 40, "b" * 40):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text('{"model_type": "gemma3_text"}')
    (repo / "refs").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", "hf_FAKEtokenNotAnIdentity123")
    cfg = ModelConfig(source="google/gemma-3-1b-it")
    source = sources.model_source(cfg)
    (repo / "refs" / "main").write_text("a" * 40)
    first = identity.model_identity(source, sources.cache_root(cfg))
    (repo / "refs" / "main").write_text("b" * 40)  # main moved to a new commit
    second = identity.model_identity(source, sources.cache_root(cfg))
    assert first == {"hub": "google/gemma-3-1b-it", "commit": "a" * 40}  # no token in what is hashed and written
    assert second == {"hub": "google/gemma-3-1b-it", "commit": "b" * 40}
    assert identity.pinned(source, second).revision == "b" * 40  # what is loaded is what was recorded
    assert identity.pinned(source, second).token == source.token  # and still with the token to load it
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="model.source: cannot resolve 'google/gemma-3-4b-it' at revision main: "
                                          "HF_HUB_OFFLINE is set and it is not in the local Hub cache"):
        identity.model_identity(sources.model_source(ModelConfig(source="google/gemma-3-4b-it")),
                                sources.cache_root(cfg))


def test_outputs_of_a_version_that_recorded_config_keys_only_are_not_taken_over(tiny_model_dir, evaluated):
    data_dir, adapter, out = evaluated
    before = predictions(out)
    (out / "generate" / "stage.json").write_text(json.dumps({"stage": "generate", "config_hash": "6dd1649dd297867c"}))
    assert main(job("generate", tiny_model_dir, data_dir, out, adapter)) == 0
    assert (out / "superseded" / "generate-older-version" / "predictions.jsonl").read_bytes() == before
    assert predictions(out) == before  # generated again, from the same inputs


def test_the_file_hash_cache_rehashes_a_rewritten_file_and_keeps_only_files_that_exist(tmp_path):
    """identity.file_hashes: a file rewritten in place (same size, new content) gets its new sha256; an entry of a
    file that is gone leaves the cache the next time it is written, so the cache does not grow with every folder
    ever hashed."""
    import hashlib
    import os

    from pipeline import identity

    cache, weights, old = tmp_path / "cache", tmp_path / "a" / "weights.bin", tmp_path / "b" / "old.bin"
    for path, text in ((weights, b"first"), (old, b"other")):
        path.parent.mkdir(parents=True)
        path.write_bytes(text)
    assert identity.file_hashes([weights, old], cache) == {"weights.bin": hashlib.sha256(b"first").hexdigest(),
                                                           "old.bin": hashlib.sha256(b"other").hexdigest()}
    assert len(json.loads((cache / "file-hashes.json").read_text())) == 2
    weights.write_bytes(b"again")  # the same size, rewritten in place
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    old.unlink()
    assert identity.file_hashes([weights], cache) == {"weights.bin": hashlib.sha256(b"again").hexdigest()}
    assert list(json.loads((cache / "file-hashes.json").read_text())) == [str(weights.resolve())]
