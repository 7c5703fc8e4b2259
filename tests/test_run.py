"""End to end: `run` on the tiny model, and once on the real embedded Gemma 3 270M (a few rows)."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, korean_rows, write_jsonl
from entrypoint import main
from eval.report import validate


def test_run_on_the_tiny_model_then_rerun_skips_every_stage(tiny_model_dir, tmp_path, capsys):
    for split, start, n in (("train", 0, 8), ("validation", 100, 2), ("test", 200, 4)):
        write_jsonl(tmp_path / "data" / f"{split}.jsonl", korean_rows(n, start))
    args = ["run", f"model.source={tiny_model_dir}", f"data.source={tmp_path / 'data'}",
            f"output.dir={tmp_path / 'out'}", "train.max_steps=2", "train.save_steps=1", "generate.max_new_tokens=4",
            "score.bootstrap_samples=50"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "rougeL" in out and f"report: {tmp_path / 'out' / 'report.json'}" in out
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    validate(report)
    assert report["rows"] == 4 and report["train"]["steps"] == 2
    produced = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()} == produced


@pytest.mark.slow
def test_run_on_the_embedded_270m_end_to_end(embedded_dir, tmp_path):
    """The real default model, offline, through the CLI as a user runs it (a handful of rows)."""
    result = subprocess.run(
        [sys.executable, "entrypoint.py", "run", "--config", "configs/demo.yaml", f"output.dir={tmp_path}",
         "data.max_train_samples=16", "data.max_eval_samples=6", "train.logging_steps=1", "train.save_steps=2",
         "generate.max_new_tokens=24", "score.bootstrap_samples=100"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    validate(report)
    assert report["train"]["trainable_parameters"] == 1_474_560
    assert report["train"]["adapted_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert report["rows"] == 6 and report["train"]["steps"] == 4
    curve = report["train"]["loss_curve"]
    assert curve[-1][1] < curve[0][1]
    assert (tmp_path / "report.md").is_file() and (tmp_path / "report.png").is_file()
