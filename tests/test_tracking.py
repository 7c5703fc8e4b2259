"""train.report_to: TensorBoard for real (training loss and the final scores in the same event files), and the
other trackers' calls through stand-ins (none of them is installed here, and they would need their servers)."""

import json
import sys
import types
from pathlib import Path

import pytest

from conftest import write_splits
from entrypoint import main
from pipeline import tracking


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = {}
    for events in sorted(log_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return found


def test_tensorboard_gets_the_training_loss_and_the_final_scores(tiny_model_dir, tmp_path):
    write_splits(tmp_path / "data", train=8, validation=2, test=3)
    out = tmp_path / "out"
    assert main(["run", f"model.source={tiny_model_dir}", f"data.source={tmp_path / 'data'}", f"output.dir={out}",
                 "train.max_steps=3", "train.logging_steps=1", "generate.max_new_tokens=4",
                 "score.bootstrap_samples=20", "train.report_to=[tensorboard]"]) == 0
    log_dir = Path(json.loads((out / "train" / "train_summary.json").read_text())["trackers"]["tensorboard"])
    assert out in log_dir.parents  # under the output dir
    found = scalars(log_dir)
    assert [step for step, _ in found["train/loss"]] == [1, 2, 3]
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert found["eval/tuned/rougeL"] == [(3, pytest.approx(report["metrics"]["tuned"]["rougeL"]))]
    assert found["eval/base/bleu"] == [(3, pytest.approx(report["metrics"]["base"]["bleu"]))]


@pytest.fixture
def fake_trackers(monkeypatch):
    """mlflow, wandb and trackio stand-ins that record the calls made to them."""
    calls = []

    class Run:
        def __init__(self, **kwargs):
            calls.append(("wandb.init", kwargs))

        def log(self, metrics, step):
            calls.append(("wandb.log", metrics, step))

        def finish(self):
            calls.append(("wandb.finish",))

    class MlflowRun:
        info = types.SimpleNamespace(run_id="mlflow-run-7")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            calls.append(("mlflow.end_run",))

    mlflow = types.SimpleNamespace(
        active_run=lambda: MlflowRun(),
        start_run=lambda run_id: calls.append(("mlflow.start_run", run_id)) or MlflowRun(),
        log_metrics=lambda metrics, step: calls.append(("mlflow.log_metrics", metrics, step)))
    wandb = types.SimpleNamespace(run=types.SimpleNamespace(id="wandb-run-3", project="socratic"), init=Run)
    trackio = types.SimpleNamespace(init=lambda **kwargs: calls.append(("trackio.init", kwargs)),
                                    log=lambda metrics, step: calls.append(("trackio.log", metrics, step)),
                                    finish=lambda: calls.append(("trackio.finish",)))
    for name, module in (("mlflow", mlflow), ("wandb", wandb), ("trackio", trackio)):
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_the_final_scores_go_to_the_runs_training_logged_to(fake_trackers):
    args = types.SimpleNamespace(report_to=["mlflow", "wandb", "trackio"], project="socratic", run_name="demo")
    runs = tracking.current_runs(args)
    assert runs == {"mlflow": {"run_id": "mlflow-run-7"}, "wandb": {"id": "wandb-run-3", "project": "socratic"},
                    "trackio": {"project": "socratic", "name": "demo"}}
    fake_trackers.clear()
    tracking.log_final_metrics(json.loads(json.dumps(runs)), {"eval/tuned/rougeL": 0.4}, step=65)
    assert fake_trackers == [
        ("mlflow.start_run", "mlflow-run-7"), ("mlflow.log_metrics", {"eval.tuned.rougeL": 0.4}, 65),
        ("mlflow.end_run",),
        ("wandb.init", {"id": "wandb-run-3", "project": "socratic", "resume": "must"}),
        ("wandb.log", {"eval/tuned/rougeL": 0.4}, 65), ("wandb.finish",),
        ("trackio.init", {"project": "socratic", "name": "demo", "resume": "must"}),
        ("trackio.log", {"eval/tuned/rougeL": 0.4}, 65), ("trackio.finish",)]
