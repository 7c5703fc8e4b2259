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
    # Every row runs to max_new_tokens (no stops); the test split's time for base + tuned is its rows at this rate.
    assert generate["tokens_per_second"] == pytest.approx(
        generate["rows_per_second"] * generate["max_new_tokens"], rel=2e-3, abs=0.02)
    assert generate["generate_base_and_tuned_seconds"] == pytest.approx(
        2 * gpu_check.TEST_ROWS / generate["rows_per_second"], rel=2e-3, abs=0.1)
    assert [run["batch_size"] for run in saved["train"]] == [4, 16]
    for run in saved["train"]:
        assert run["steps"] == 3 and run["examples_per_second"] > 0
        for key, rows in (("train_1000_rows_seconds", gpu_check.SUBSET_ROWS), ("train_epoch_seconds",
                                                                             gpu_check.TRAIN_ROWS)):
            assert run[key] == pytest.approx(rows / run["examples_per_second"], rel=5e-3, abs=0.1), key
    printed = capsys.readouterr().out
    assert "target < 180 s" in printed and "epoch of 84,582 rows" in printed
