"""The train stage's Trainer callbacks: stopping every process together on a signal, noting the trackers' runs,
the modes of saved checkpoints, and a progress line per logging step.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import transformers

from pipeline import tracking
from pipeline.atomic import normalize_modes

log = logging.getLogger(__name__)


class StopTogetherOnSignal(transformers.TrainerCallback):
    """After every optimizer step, all processes learn whether any of them received SIGTERM/SIGINT (accelerate's
    trigger: one all-reduce of a flag), so they finish the same step, save one checkpoint together (the Trainer
    has the main process write the model, the others wait) and stop. One process alone: the same, no collective."""

    def __init__(self, accelerator, received: list[int]):
        self.accelerator, self.received, self.stopped_at = accelerator, received, None

    def on_step_end(self, args, state, control, **kwargs):
        if self.received:
            self.accelerator.set_trigger()
        if self.accelerator.check_trigger():
            self.stopped_at = state.global_step
            control.should_save = control.should_training_stop = True
        return control


class RecordTrackerRuns(transformers.TrainerCallback):
    """Notes the runs of train.report_to's trackers when training begins (after their own callbacks made them), so
    that the score stage can log its metrics to the same runs (pipeline/tracking.py)."""

    def __init__(self, runs: dict):
        self.runs = runs

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.runs.update(tracking.current_runs(args))


class ReadableCheckpoints(transformers.TrainerCallback):
    """The Trainer writes its checkpoints itself, not through atomic_path, and safetensors makes their weights
    0600: each saved checkpoint gets the modes of every other output (pipeline/atomic.py, normalize_modes)."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            normalize_modes(Path(args.output_dir) / f"checkpoint-{state.global_step}")


class ProgressLog(transformers.TrainerCallback):
    """One log line per logging step (for non-TTY logs such as Kubernetes): step, loss, rate."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.start_step = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            elapsed = time.perf_counter() - self.started
            rate = (state.global_step - self.start_step) / elapsed if elapsed > 0 else 0.0
            log.info("train: step %d/%d  loss %.4f  lr %.2e  %.2f steps/s", state.global_step, state.max_steps,
                     logs["loss"], logs.get("learning_rate", 0.0), rate)
