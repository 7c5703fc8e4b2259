"""`make gpu-check` runs where this suite cannot (a CUDA machine); its --smoke mode runs the same code on CPU."""

import json

import pytest

from bench import gpu_check


@pytest.mark.slow
def test_gpu_check_smoke_measures_every_target(tmp_path, embedded_dir, capsys):
    results = gpu_check.main(["--smoke", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_results.json").read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(results))
    generate = saved["generate"]
    assert generate["rows"] == 12 and generate["rows_per_second"] > 0
    assert generate["generate_base_and_tuned_seconds"] > 0
    assert [run["batch_size"] for run in saved["train"]] == [4, 16]
    for run in saved["train"]:
        assert run["steps"] == 3 and run["examples_per_second"] > 0
        assert run["train_epoch_seconds"] > run["train_1000_rows_seconds"] > 0
    printed = capsys.readouterr().out
    assert "target < 180 s" in printed and "epoch of 84,582 rows" in printed
