"""`make gpu-check` runs where this suite cannot (a CUDA machine); its --smoke mode runs the same code on CPU: both
decoders side by side, our trainer against TRL's stock one, and `entrypoint.py run` end to end with a second
adapter."""

import json

import pytest

from bench import gpu_check, gpu_train
from pipeline import decode


@pytest.mark.slow
def test_gpu_check_smoke_measures_every_figure(tmp_path, embedded_dir, capsys):
    results = gpu_check.main(["--smoke", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_results.json").read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(results))
    assert {"device", "torch", "transformers", "date"} <= set(saved)
    generate = saved["generate"]
    ours, stock = generate["ours"], generate["stock_generate"]
    assert (ours["decoder"], stock["decoder"], generate["attention"]) == (decode.FAST_LOOP, decode.GENERATE,
                                                                         "sdpa (cpu)")
    # --smoke gives each decoder one batch (generate.max_batch_size=4 on a CPU) of the same length-sorted rows.
    assert generate["batch_size"] == 4 and ours["rows"] == stock["rows"] == 4
    assert generate["rows_equal_to_stock"] == "4/4"  # float32 on a CPU: the loop is generate token for token
    for run in (ours, stock):  # every row runs to max_new_tokens (no stops)
        assert run["tokens_per_second"] == pytest.approx(run["rows_per_second"] * generate["max_new_tokens"],
                                                         rel=2e-3, abs=0.1)
        assert run["rows_per_second"] == pytest.approx(run["rows"] / run["seconds"], rel=5e-3, abs=0.002)
    assert generate["ratio_to_stock"] == pytest.approx(ours["rows_per_second"] / stock["rows_per_second"], rel=5e-3,
                                                       abs=2e-3)
    split = ours["first_batch_seconds"] + (gpu_check.TEST_ROWS - 4) / ours["steady_rows_per_second"]
    assert generate["generate_base_and_tuned_seconds"] == pytest.approx(2 * split, rel=5e-3, abs=0.2)

    runs = saved["train"]["runs"]
    assert [(run["path"], run["batch_size"]) for run in runs] == [("ours", 2), ("ours", 4), ("stock TRL", 4)]
    for run in runs:
        stock_path = run["path"] == "stock TRL"
        # TRL's defaults: gradient checkpointing on, padded batches; ours: the config's (off, padding-free).
        assert (run["gradient_checkpointing"], run["padding_free"]) == (stock_path, not stock_path)
        assert (run["warmup_steps"], run["timed_steps"], len(run["first_losses"])) == (1, 2, 3)
        assert run["examples_per_second"] == pytest.approx(2 * run["batch_size"] / run["timed_seconds"], rel=5e-3,
                                                           abs=2e-3)
        for key, rows in (("train_1000_rows_seconds", gpu_check.SUBSET_ROWS), ("train_epoch_seconds",
                                                                             gpu_check.TRAIN_ROWS)):
            assert run[key] == pytest.approx(rows / run["examples_per_second"], rel=5e-3, abs=0.1), key
    assert saved["train"]["loss_gap_to_stock"] == gpu_train.loss_gap(runs[1], runs[2])
    # The same rows and objective: before the first update (LoRA's B is zero) the float32 losses are equal.
    assert runs[1]["first_losses"][0] == pytest.approx(runs[2]["first_losses"][0], abs=2e-4)

    end_to_end = saved["end_to_end"]
    assert (end_to_end["exit_code"], end_to_end["models"], end_to_end["rows"]) == (0, ["base", "tuned", "second"], 4)
    assert (end_to_end["device"], end_to_end["dtype"], end_to_end["attention"]) == ("cpu", "float32", "sdpa (cpu)")
    printed = capsys.readouterr().out
    assert "FAILED" not in printed and "ours / stock" in printed and "epoch of 84,582 rows" in printed and "end to end: entrypoint run exit 0" \
        in printed


def test_a_part_that_fails_is_recorded_and_the_others_still_run(tmp_path, embedded_dir, monkeypatch, capsys):
    """One GPU run may be all there is: an error in one part leaves the other parts' figures and exit status 4."""
    def fails(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore detail")

    run = {"path": "ours", "batch_size": 2, "examples_per_second": 4.0, "tokens_per_second": 400.0, "mfu": None,
           "timed_steps": 2, "first_losses": [12.0]}
    monkeypatch.setattr(gpu_check, "time_generation", fails)
    monkeypatch.setattr(gpu_check, "time_training", lambda *args: dict(run))
    monkeypatch.setattr(gpu_check, "end_to_end", lambda *args: {
        "exit_code": 0, "seconds": 1.0, "device": "cpu", "dtype": "float32", "decoder": decode.FAST_LOOP,
        "attention": "sdpa (cpu)", "models": ["base", "tuned", "second"], "rows": 4})
    with pytest.raises(SystemExit) as stopped:
        gpu_check.main(["--smoke", "--out", str(tmp_path)])
    assert stopped.value.code == 4
    saved = json.loads((tmp_path / "gpu_results.json").read_text(encoding="utf-8"))
    assert saved["generate"] == {"error": "RuntimeError: CUDA error: an illegal memory access was encountered"}
    assert len(saved["train"]["runs"]) == 3 and saved["train"]["runs"][0]["train_1000_rows_seconds"] == 250.0
    assert saved["end_to_end"]["models"] == ["base", "tuned", "second"]
    printed = capsys.readouterr().out
    assert "generate: FAILED: RuntimeError: CUDA error" in printed and "end to end: entrypoint run exit 0" in printed
