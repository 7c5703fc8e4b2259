"""`export`: the adapter merged into the base model, kept only when it generates what base + adapter generates;
and the modes of what the job writes."""

import json
import logging
import os
import re

import pytest
import torch
from huggingface_hub import ModelCard

from conftest import ROOT, write_splits
from entrypoint import main
from pipeline import export as export_module
from pipeline.config import Config, ExportConfig
from pipeline.decode import Decoding
from pipeline.atomic import atomic_path, write_text_atomic
from test_generate import random_adapter

ROWS = 6


@pytest.fixture(scope="module")
def trained_out(tiny_model_dir, tmp_path_factory):
    """An output dir whose train/adapter is a LoRA with large random B: the tuned model's outputs differ from the
    base model's, so a merge that lost the adapter could not pass for one that kept it."""
    out = tmp_path_factory.mktemp("out")
    random_adapter(tiny_model_dir, out / "train" / "adapter", seed=1)
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_splits(tmp_path_factory.mktemp("data"), train=4, validation=2, test=ROWS + 2)


def export_args(tiny_model_dir, data_dir, out, dest, *extra):
    return ["export", f"model.source={tiny_model_dir}", f"data.source={data_dir}", f"output.dir={out}",
            "--out", str(dest), f"export.check_rows={ROWS}", "generate.max_new_tokens=8", *extra]


def greedy(model, tokenizer, texts):
    """transformers' own generate, one prompt at a time: an independent reference for the job's decoder."""
    outputs = []
    for text in texts:
        ids = tokenizer(f"### context: {text}\n### question:", return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        outputs.append(out[0, ids["input_ids"].shape[1]:].tolist())
    return outputs


@pytest.fixture(scope="module")
def exported(tiny_model_dir, data_dir, trained_out, tmp_path_factory):
    dest = tmp_path_factory.mktemp("exports") / "merged"
    assert main(export_args(tiny_model_dir, data_dir, trained_out, dest)) == 0
    return dest


def test_the_merged_export_generates_what_base_plus_adapter_generates(exported, tiny_model_dir, data_dir,
                                                                      trained_out):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "README.md", "export_summary.json"} <= {p.name for p in exported.iterdir()}
    summary = json.loads((exported / "export_summary.json").read_text())
    assert (summary["dtype"], summary["rows_checked"], summary["identical_rows"], summary["passed"]) == (
        "float32", ROWS, ROWS, True)
    # independently: transformers' generate on the saved folder against PEFT's unmerged base + adapter
    tokenizer = AutoTokenizer.from_pretrained(exported)
    texts = [json.loads(line)["input"] for line in (data_dir / "test.jsonl").read_text().splitlines()[:ROWS]]
    merged = greedy(AutoModelForCausalLM.from_pretrained(exported), tokenizer, texts)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    plain = greedy(base, tokenizer, texts)
    tuned = greedy(PeftModel.from_pretrained(base, trained_out / "train" / "adapter"), tokenizer, texts)
    assert merged == tuned and merged != plain  # the adapter is in the weights, and it matters
    generation = json.loads((exported / "generation_config.json").read_text())
    assert (generation["do_sample"], generation["max_new_tokens"], generation["eos_token_id"]) == (False, 8, [1])


def test_the_export_carries_a_card_its_modes_and_no_path_of_the_machine(exported, tiny_model_dir, trained_out):
    parsed = ModelCard.load(exported / "README.md")
    assert parsed.data.library_name == "transformers" and "merged" in parsed.data.tags
    assert f"{ROWS} of {ROWS} identical" in parsed.text
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in exported.iterdir()} == {0o666 & ~umask}
    assert exported.stat().st_mode & 0o777 == 0o777 & ~umask
    for path in exported.iterdir():
        content = path.read_bytes()
        for root in (trained_out, tiny_model_dir, exported.parent):
            assert str(root).encode() not in content, f"{path.name} names {root}"


def test_the_export_says_its_size_and_memory_first_then_a_line_per_phase(tiny_model_dir, data_dir, trained_out,
                                                                         tmp_path, caplog):
    from safetensors import safe_open

    caplog.set_level(logging.INFO, logger="pipeline.export")
    dest = tmp_path / "merged"
    assert main(export_args(tiny_model_dir, data_dir, trained_out, dest)) == 0
    lines = [record.getMessage() for record in caplog.records if record.name == "pipeline.export"]
    # independently: the weights the export wrote, counted in its safetensors (the tied embedding once)
    with safe_open(dest / "model.safetensors", framework="pt") as saved:
        tensors = [saved.get_tensor(name) for name in saved.keys()]
    parameters = sum(t.numel() for t in tensors)
    assert {t.dtype for t in tensors} == {torch.float32}
    size = sum(t.numel() * t.element_size() for t in tensors)
    planned = re.fullmatch(r"export: the merged weights will take ([\d.]+) MB in (.+) \(([\d,]+) parameters x 4 "
                           r"bytes, float32\), plus the tokenizer's files; expected peak memory about ([\d.]+) GiB",
                           lines[0])
    assert planned and planned[2] == str(dest) and planned[3] == f"{parameters:,}"
    assert float(planned[1]) == round(size / 1e6, 1) and float(planned[4]) >= size / 2**30
    assert lines[1].startswith(f"export: phases: load, check 1/2 (base + adapter generate the first {ROWS} test ")
    phases = [re.fullmatch(r"export: ([^:]+): .+ in \d+\.\d s", line) for line in lines[2:7]]
    assert [phase and phase[1] for phase in phases] == ["load", "check 1/2", "merge", "save", "check 2/2"]
    assert f"{ROWS} of {ROWS} identical" in lines[6]
    assert re.fullmatch(rf"export: merged model in {re.escape(str(dest))} \({ROWS} of {ROWS} rows identical, \d+ s; "
                        r"peak memory [\d.]+ GiB cpu rss\)", lines[7])
    assert len(lines) == 8  # and no warning: tmp_path is outside the repository


def test_an_out_in_the_repository_that_git_does_not_ignore_is_said_once(caplog):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (a container image)")
    for out in (ROOT / "merged", ROOT / "outputs" / "merged", ROOT.parent / "merged"):
        export_module.warn_if_tracked(out)
    warned = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warned == [f"export: --out {ROOT / 'merged'} is inside the repository and not ignored by git: the "
                      "model's files will show in `git status`; a folder under outputs/ is ignored"]


def test_a_tampered_merged_weight_fails_the_check_and_leaves_nothing(tiny_model_dir, data_dir, trained_out,
                                                                     tmp_path, monkeypatch, capsys):
    merge = export_module.merge

    def tampered(tuned):
        model = merge(tuned)
        torch.manual_seed(0)
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.add_(torch.randn_like(layer.self_attn.o_proj.weight))
        return model

    monkeypatch.setattr(export_module, "merge", tampered)
    dest = tmp_path / "merged"
    assert main(export_args(tiny_model_dir, data_dir, trained_out, dest)) == 1
    error = capsys.readouterr().err.splitlines()[-1]  # one line (after the loaders' progress bars)
    assert error.startswith("error: the merged model differs from base + adapter: 0 of 6") and "test:0" in error
    assert sorted(tmp_path.iterdir()) == []  # neither the folder nor its temporary sibling


def test_bf16_records_the_identical_share_against_its_floor(tiny_model_dir, data_dir, trained_out, tmp_path):
    dest = tmp_path / "merged"
    assert main(export_args(tiny_model_dir, data_dir, trained_out, dest, "model.dtype=bfloat16",
                            "export.min_identical_share=0.5")) == 0
    summary = json.loads((dest / "export_summary.json").read_text())
    assert summary["dtype"] == "bfloat16" and summary["required_share"] == 0.5
    assert summary["identical_share"] == round(summary["identical_rows"] / ROWS, 4) >= 0.5


def test_a_non_empty_out_is_exit_2_and_left_alone(tmp_path, capsys):
    dest = tmp_path / "taken"
    (dest / "keep.txt").parent.mkdir()
    (dest / "keep.txt").write_text("mine")
    assert main(["export", f"output.dir={tmp_path / 'out'}", "--out", str(dest)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in dest.iterdir()] == ["keep.txt"] and (dest / "keep.txt").read_text() == "mine"


class CharTokenizer:
    """Decodes ids as letters: enough for the row records of the comparison."""

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(ord("a") + i) for i in ids)


@pytest.mark.parametrize("dtype, floor, passed", [(torch.float32, 0.5, False), (torch.bfloat16, 0.75, True),
                                                  (torch.bfloat16, 0.8, False)])
def test_float32_requires_every_row_and_bf16_its_floor(dtype, floor, passed):
    rows = [{"id": f"test:{i}"} for i in range(4)]
    expected, actual = [[1, 2], [3], [4, 5], [6]], [[1, 2], [3], [4, 5], [7]]
    decoding = Decoding(max_new_tokens=2, stop_ids=(), stop_strings=(), pad_id=0)
    result = export_module.compare(rows, expected, actual, CharTokenizer(), decoding, dtype,
                                   Config(export=ExportConfig(min_identical_share=floor)))
    assert (result["identical_rows"], result["identical_share"], result["passed"]) == (3, 0.75, passed)
    assert result["required_share"] == (1.0 if dtype == torch.float32 else floor)
    assert result["differing_rows"] == [{"id": "test:3", "base_plus_adapter": "g", "merged": "h"}]


def test_atomic_writes_take_the_modes_of_the_umask(tmp_path):
    from safetensors.torch import save_file

    previous = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "folder") as tmp:
            (tmp / "sub").mkdir(parents=True)
            save_file({"w": torch.zeros(1)}, tmp / "sub" / "weights.safetensors")  # safetensors: 0600
        write_text_atomic(tmp_path / "note.txt", "x")
    finally:
        os.umask(previous)
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    assert modes == {"folder": 0o750, "folder/sub": 0o750, "folder/sub/weights.safetensors": 0o640,
                     "note.txt": 0o640}
