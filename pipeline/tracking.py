"""Experiment trackers (train.report_to): the Trainer logs training to them through its own integrations; this
module remembers which run that was and adds the score stage's final metrics to the same run.

    runs = current_runs(trainer.args)             # once training has begun: where each integration logs
    log_final_metrics(runs, metrics, step)        # after scoring: the report's headline numbers, same runs

Each tracker is reached through its public API (TensorBoard's SummaryWriter; mlflow, wandb and trackio resume a run
by its id or name), imported only when it is in train.report_to (config validation checked it is installed).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def current_runs(args) -> dict:
    """The run each of the Trainer's integrations logs to, read once training has begun (their callbacks create
    the runs in on_train_begin): mlflow's run id, wandb's run id and project, trackio's project and run name."""
    runs, trackers = {}, set(args.report_to or [])
    if "mlflow" in trackers:
        import mlflow

        run = mlflow.active_run()
        runs["mlflow"] = {"run_id": run.info.run_id} if run else None
    if "wandb" in trackers:
        import wandb

        runs["wandb"] = {"id": wandb.run.id, "project": wandb.run.project} if wandb.run else None
    if "trackio" in trackers:
        runs["trackio"] = {"project": args.project, "name": args.run_name}
    return runs


def tensorboard_dir(trainer) -> str | None:
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir:
            return str(callback.logging_dir)
    return None


def log_final_metrics(runs: dict, metrics: dict[str, float], step: int) -> None:
    """`metrics` ({"eval/tuned/rougeL": 0.35, ...}) into each recorded run, at the final training step."""
    if runs.get("tensorboard"):
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=runs["tensorboard"]) as writer:
            for name, value in metrics.items():
                writer.add_scalar(name, value, global_step=step)
    if runs.get("mlflow"):
        import mlflow

        with mlflow.start_run(run_id=runs["mlflow"]["run_id"]):
            mlflow.log_metrics({name.replace("/", "."): value for name, value in metrics.items()}, step=step)
    if runs.get("wandb"):
        import wandb

        run = wandb.init(id=runs["wandb"]["id"], project=runs["wandb"]["project"], resume="must")
        run.log(metrics, step=step)
        run.finish()
    if runs.get("trackio"):
        import trackio

        trackio.init(project=runs["trackio"]["project"], name=runs["trackio"]["name"], resume="must")
        trackio.log(metrics, step=step)
        trackio.finish()
    if any(runs.values()):
        log.info("score: final metrics logged to %s", ", ".join(name for name, run in runs.items() if run))
