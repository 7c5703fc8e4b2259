"""train.report_to, with real trackers writing real files: TensorBoard (event files) and mlflow (a local file store),
each read back with its own reader. wandb and trackio are passed through untested (README "Tracking")."""

import json
from pathlib import Path

import pytest

from conftest import write_splits
from entrypoint import main


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


def test_mlflow_gets_the_training_loss_and_the_final_scores_in_one_run(tiny_model_dir, tmp_path, monkeypatch):
    """A real mlflow (the dev extra's mlflow-skinny) logging to a local file store: the Trainer's run holds the
    training loss at every step and, at the last step, the score stage's headline metrics, read back with mlflow's
    own client; the run is finished when the job ends."""
    import mlflow
    from mlflow.tracking import MlflowClient

    store = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 wants a database; a folder is enough here
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "socratic-test")
    write_splits(tmp_path / "data", train=8, validation=2, test=3)
    out = tmp_path / "out"
    assert main(["run", f"model.source={tiny_model_dir}", f"data.source={tmp_path / 'data'}", f"output.dir={out}",
                 "train.max_steps=3", "train.logging_steps=1", "generate.max_new_tokens=4",
                 "score.bootstrap_samples=20", "train.report_to=[mlflow]"]) == 0
    assert mlflow.active_run() is None  # nothing left open in the process
    run_id = json.loads((out / "train" / "train_summary.json").read_text())["trackers"]["mlflow"]["run_id"]
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "socratic-test"
    assert [(m.step) for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3]
    summary = json.loads((out / "train" / "train_summary.json").read_text())
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == pytest.approx(
        [loss for _, loss in summary["loss_curve"]], abs=1e-6)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    for model in ("base", "tuned"):
        for metric in ("rougeL", "bleu", "chrf", "type_accuracy", "empty_rate"):
            history = client.get_metric_history(run_id, f"eval.{model}.{metric}")
            assert [(m.step, m.value) for m in history] == [(3, pytest.approx(report["metrics"][model][metric]))]
