"""Interruption trials: a `run` stopped by SIGTERM at each kind of point, then rerun, ends with the uninterrupted
run's adapter bytes, predictions bytes and report metrics.

The job runs in this process (entrypoint.main) and the signal is sent by a log handler when the job logs the line
that marks the stop point: the stop lands on an event, not after a guess at the time, and no interpreter start is
paid per run. The checkpoints rotate (save_total_limit=1), so a rerun that resumed from an early checkpoint sees the
Trainer delete it before the end: the class of bug where a stage read its resumed checkpoint after training.
The same with two processes is in tests/test_distributed.py; a real-model trial is at the end.
"""

import json
import logging
import os
import re
import signal

import pytest

from conftest import write_splits
from entrypoint import main

STEPS = 20
# 40 training rows at batch 2: 20 steps; a checkpoint every 5 steps, only the newest kept.
TRAIN = ["train.per_device_train_batch_size=2", f"train.max_steps={STEPS}", "train.logging_steps=1",
         "train.save_steps=5", "train.save_total_limit=1"]
REST = ["generate.batch_size=2", "generate.max_new_tokens=8", "generate.stop_strings=[]",
        "score.bootstrap_samples=20"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_splits(tmp_path_factory.mktemp("data"), train=40, validation=2, test=8)


def run_args(model, data_dir, out, *extra):
    return ["run", f"model.source={model}", f"data.source={data_dir}", f"output.dir={out}", *TRAIN, *REST, *extra]


class SignalOn(logging.Handler):
    """Sends this process SIGTERM the first time a log line matches `pattern`: the stop lands right after the event
    the line reports, on the thread that logged it (the job's own handlers then decide what a stop there means)."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern, self.fired = re.compile(pattern), None

    def emit(self, record):
        if self.fired is None and self.pattern.search(record.getMessage()):
            self.fired = record.getMessage()
            os.kill(os.getpid(), signal.SIGTERM)


def interrupted(args, pattern):
    """Runs the job with a SignalOn(pattern) on the root logger; the exit code and the line it stopped on."""
    trigger = SignalOn(pattern)
    logging.getLogger().addHandler(trigger)
    try:
        code = main(args)
    finally:
        logging.getLogger().removeHandler(trigger)
    assert trigger.fired, f"the job never logged a line matching {pattern!r}"
    return code, trigger.fired


def outputs(out):
    """What an interrupted-and-resumed run must share with an uninterrupted one."""
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    return {"adapter": (out / "train" / "adapter" / "adapter_model.safetensors").read_bytes(),
            "predictions": (out / "generate" / "predictions.jsonl").read_bytes(),
            "metrics": report["metrics"], "deltas": report["deltas"], "rows": report["rows"]}


@pytest.fixture(scope="module")
def straight(tiny_model_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    assert main(run_args(tiny_model_dir, data_dir, out)) == 0
    return out


def checkpoint_steps(out):
    return sorted(int(p.name.split("-")[1]) for p in (out / "train" / "checkpoints").glob("checkpoint-*"))


# Each stop point: the log line it lands on, and what must hold when the stopped job has exited.
STOPS = {
    # A step's line is logged after the step's stop check, so the job stops at the end of the next step.
    # Before the first scheduled checkpoint: the stop saves checkpoint-3, which the rerun's first rotation deletes.
    "early": (r"^train: step 2/", lambda out: checkpoint_steps(out) == [3]),
    # After checkpoint-10 rotated checkpoint-5 away: the stop saves checkpoint-12 and rotates checkpoint-10 away.
    "after a rotation": (r"^train: step 11/", lambda out: checkpoint_steps(out) == [12]),
    # The last step's log line comes before the final checkpoint, the validation loss and the adapter's save: those
    # finish, then the job stops with the train stage done.
    "during the final save": (rf"^train: step {STEPS}/{STEPS}",
                              lambda out: (out / "train" / "train_summary.json").is_file()
                              and not (out / "generate").exists()),
    # The base model's rows are written; the tuned model's first batch is flushed, then the job stops.
    "during generation": (r"^generate base: \d+ rows",
                          lambda out: not (out / "generate" / "generate_summary.json").exists()),
    # Scoring has no safe point to wait for: it stops at once and writes no report.
    "during scoring": (r"^score: semantic", lambda out: not (out / "report.json").exists()),
}


def stop_then_check(args, stop, out, capsys):
    """Runs the job until `stop`'s line, then checks it exited 143 leaving the state that stop point leaves; what
    it printed on stderr."""
    pattern, stopped_state = STOPS[stop]
    code, line = interrupted(args, pattern)
    assert code == 143, f"{stop}: exit {code}: {capsys.readouterr().err[-2000:]}"
    assert stopped_state(out), f"{stop}: stopped at {line!r}: {sorted(p.name for p in out.rglob('*'))[:40]}"
    return capsys.readouterr().err


def assert_same_as_straight(out, straight):
    got, want = outputs(out), outputs(straight)
    assert got["adapter"] == want["adapter"]
    assert got["predictions"] == want["predictions"]
    assert (got["metrics"], got["deltas"], got["rows"]) == (want["metrics"], want["deltas"], want["rows"])


def test_stopped_early_the_rerun_outlives_its_rotated_checkpoint(straight, tiny_model_dir, data_dir, tmp_path,
                                                                  capsys):
    """The preempted Kubernetes Job: stopped before the first checkpoint, its replacement resumes from the stop's
    checkpoint, which the Trainer deletes at its next save; the run must still finish (it ended in exit 4)."""
    out = tmp_path / "interrupted"
    args = run_args(tiny_model_dir, data_dir, out)
    printed = stop_then_check(args, "early", out, capsys)
    assert "rerun the same command to resume" in printed and not (out / "train" / "train_summary.json").exists()
    checkpoint = out / "train" / "checkpoints" / "checkpoint-3"
    resumed_tokens = json.loads((checkpoint / "trainer_state.json").read_text())["num_input_tokens_seen"]

    assert main(args) == 0, capsys.readouterr().err[-2000:]
    assert_same_as_straight(out, straight)
    assert f"resuming from {checkpoint}" in (out / "job.log").read_text(encoding="utf-8")
    summary = json.loads((out / "train" / "train_summary.json").read_text())
    assert summary["steps"] == STEPS and summary["resumed_from"] == str(checkpoint)
    assert [step for step, _ in summary["loss_curve"]] == list(range(1, STEPS + 1))
    assert checkpoint_steps(out) == [STEPS]  # checkpoint-3 was rotated away before the end
    # This session's rate: the tokens trained on since the checkpoint over this session's training time.
    assert 0 < resumed_tokens < summary["tokens_seen"]
    assert summary["session_tokens"] == summary["tokens_seen"] - resumed_tokens
    assert summary["tokens_per_second"] == pytest.approx(
        summary["session_tokens"] / summary["train_runtime_seconds"], rel=0.05)  # the runtime is rounded
    # The resumed epoch's last batch made accelerate log "The used dataset had no length, ..." four times.
    assert "accelerate" not in (out / "job.log").read_text(encoding="utf-8")


def test_stopped_at_every_later_point_in_turn_the_reruns_end_as_an_uninterrupted_run(straight, tiny_model_dir,
                                                                                     data_dir, tmp_path, capsys):
    """One run stopped at each later point in turn (each rerun goes on until the next stop), then rerun to the end."""
    out = tmp_path / "interrupted"
    args = run_args(tiny_model_dir, data_dir, out)
    kept = None
    for stop in ("after a rotation", "during the final save", "during generation", "during scoring"):
        stop_then_check(args, stop, out, capsys)
        if stop == "during generation":  # whole lines only: base's 8 rows and the tuned model's first batch of 2
            kept = (out / "generate" / "predictions.jsonl").read_text(encoding="utf-8")
            assert kept.endswith("\n") and kept.count("\n") == 8 + 2
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    assert_same_as_straight(out, straight)
    summary = json.loads((out / "train" / "train_summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-12")
    generated = json.loads((out / "generate" / "generate_summary.json").read_text())
    assert generated["resumed_rows"] == kept.count("\n")  # the rerun started from the rows kept ...
    assert sum(m["generated_rows"] for m in generated["models"].values()) == 16 - kept.count("\n")  # ... did the rest
