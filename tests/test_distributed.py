"""Data parallel for real: train (DDP) and generate (sharded, merged) with 2 CPU processes on the gloo backend."""

import json
import shutil
import subprocess
import sys

from conftest import ROOT, korean_rows, write_jsonl


def test_two_processes_train_and_generate_and_match_a_single_process(tiny_model_dir, tmp_path):
    for split, start, n in (("train", 0, 16), ("validation", 100, 2), ("test", 200, 11)):
        write_jsonl(tmp_path / "data" / f"{split}.jsonl", korean_rows(n, start))
    common = [f"model.source={tiny_model_dir}", f"data.source={tmp_path / 'data'}", "train.max_steps=3",
              "train.per_device_train_batch_size=2", "train.save_steps=100", "generate.batch_size=3",
              "generate.max_new_tokens=8", "generate.stop_strings=[]"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "entrypoint.py"]
    ddp = tmp_path / "ddp"
    for stage in ("train", "generate"):
        done = subprocess.run(torchrun + [stage, f"output.dir={ddp}", *common], cwd=ROOT, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((ddp / "train" / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["trainable_parameters"] == 13_312
    assert json.loads((ddp / "generate" / "generate_summary.json").read_text())["processes"] == 2
    assert sorted(p.name for p in (ddp / "generate").glob("predictions*")) == ["predictions.jsonl"]

    single = tmp_path / "single"
    shutil.copytree(ddp / "train", single / "train")
    done = subprocess.run([sys.executable, "entrypoint.py", "generate", f"output.dir={single}", *common], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    merged = (ddp / "generate" / "predictions.jsonl").read_bytes()
    assert merged.count(b"\n") == 22
    assert merged == (single / "generate" / "predictions.jsonl").read_bytes()
