"""TRL's SFTTrainer for the train stage: its arguments from the config, the trainer with its LoRA and callbacks,
training it (resuming from the newest complete checkpoint, stopping together on a signal) and what it did.

    args = training_arguments(cfg, checkpoint_dir)      trainer = build_trainer(cfg, args, model, tokenizer, ...)
    result, resumed, eval_loss = fit(trainer, cfg, received)
    describe_model(trainer)     describe_run(trainer, result, resumed)
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import signal
from pathlib import Path

import peft
import torch
import transformers
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from pipeline import attention, families, gpu_training, models
from pipeline.callbacks import ProgressLog, ReadableCheckpoints, StopTogetherOnSignal
from pipeline.config import Config
from pipeline.errors import ConfigError, Interrupted, ResourceError, first_line, is_out_of_memory

log = logging.getLogger(__name__)
# transformers 5 renamed gradient_checkpointing to activation_checkpointing (the old name warns that it goes away in
# v6): pass the name the installed SFTConfig has, so a user sees no warning they cannot act on.
CHECKPOINTING = ("activation_checkpointing" if "activation_checkpointing" in {f.name for f in
                                                                             dataclasses.fields(SFTConfig)}
                 else "gradient_checkpointing")


def training_arguments(cfg: Config, checkpoint_dir: Path) -> SFTConfig:
    """TRL's SFTConfig from our config, every default that matters set explicitly. Built before any model loads,
    so that a value only transformers or TRL can judge (an optimizer name, say) fails in seconds, naming the key."""
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    for key, value, allowed in (("train.optim", cfg.train.optim, OptimizerNames),
                                ("train.lr_scheduler_type", cfg.train.lr_scheduler_type, SchedulerType)):
        if value not in {member.value for member in allowed}:
            raise ConfigError(f"{key}: {value!r} is not one of transformers {transformers.__version__}'s values: "
                              f"{', '.join(member.value for member in allowed)}")
    # On CUDA the same effective batch in larger per-device batches (pipeline/gpu_training.py); the CPU's as set.
    per_device, accumulation = gpu_training.batch_split(cfg.train, torch.cuda.is_available())
    try:
        return SFTConfig(
            output_dir=str(checkpoint_dir),
            seed=cfg.train.seed, data_seed=cfg.train.seed,
            learning_rate=cfg.train.learning_rate, num_train_epochs=cfg.train.num_train_epochs,
            max_steps=cfg.train.max_steps, per_device_train_batch_size=per_device,
            per_device_eval_batch_size=per_device, auto_find_batch_size=cfg.train.auto_find_batch_size,
            gradient_accumulation_steps=accumulation, optim=cfg.train.optim,
            lr_scheduler_type=cfg.train.lr_scheduler_type, warmup_steps=cfg.train.warmup_ratio,  # < 1: a ratio
            weight_decay=cfg.train.weight_decay, max_grad_norm=cfg.train.max_grad_norm,
            # The model is loaded in its dtype (bf16 on capable GPUs, fp32 on CPU); fp16 is never used.
            bf16=models.resolve_dtype(cfg.model) == torch.bfloat16, fp16=False,
            # TRL turns gradient checkpointing on by default; it costs ~40% speed and a LoRA run rarely needs it.
            **{CHECKPOINTING: cfg.train.gradient_checkpointing},
            # Padding-free batches: no compute on pad tokens. Prompts are already cut to fit, so no max_length.
            padding_free=cfg.train.padding_free, max_length=None,
            **gpu_training.sampling(cfg.train, torch.cuda.is_available()),
            completion_only_loss=True,
            logging_steps=cfg.train.logging_steps, logging_first_step=True,
            # The Trainer counts the tokens it trains on and keeps the count in its checkpoints, so tokens/s after
            # a resume divides this session's tokens by this session's time.
            include_num_input_tokens_seen="non_padding",
            save_strategy="steps", save_steps=cfg.train.save_steps, save_total_limit=cfg.train.save_total_limit,
            eval_strategy="no", report_to=list(cfg.train.report_to) or "none", disable_tqdm=False,
            dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available(),
            # Without a GPU, say so: under torchrun that makes the run DDP over gloo on CPUs.
            use_cpu=not torch.cuda.is_available(),
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"train: TRL/transformers rejected the training settings: {first_line(exc)}") from None


def build_trainer(cfg: Config, args: SFTConfig, model, tokenizer, train_set: Dataset,
                  eval_set: Dataset) -> SFTTrainer:
    lora_config = peft.LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules), bias=cfg.lora.bias, task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                         processing_class=tokenizer, peft_config=lora_config,
                         callbacks=[ProgressLog(), ReadableCheckpoints()])
    # PEFT keeps target_modules as a set and saves list(set): an order that follows the process's string hash seed,
    # so the same training wrote a different adapter_config.json (and generate hash) run to run. Sorted, once the
    # modules are adapted, for every checkpoint and the adapter.
    for config in trainer.model.peft_config.values():
        for name, value in vars(config).items():
            if isinstance(value, set):
                setattr(config, name, sorted(value))
    return trainer


def fit(trainer: SFTTrainer, cfg: Config,
        received: list[int]) -> tuple[transformers.trainer_utils.TrainOutput, Resumed | None, float]:
    """Trains from the newest checkpoint (if any) and evaluates; returns the result, what the run resumed from
    and the validation loss. When a signal has been `received` (pipeline.signals.stop_on_signal), every process
    finishes the same step and one checkpoint is saved before Interrupted is raised (exit 143/130)."""
    checkpoints = Path(trainer.args.output_dir)
    checkpoint = newest_complete_checkpoint(checkpoints)
    # Read now: save_total_limit may delete the resumed checkpoint while training, so nothing reads its files after.
    resumed = Resumed.read(checkpoint) if checkpoint else None
    if checkpoint:
        log.info("train: resuming from %s (step %d)", checkpoint, resumed.step)
    # The CPU tuning measured on the model's family (pipeline/families.py), the stock Trainer for any other model;
    # on CUDA SDPA without cuDNN's kernel (pipeline/attention.py).
    with families.of(trainer.model.config).training_tuning(trainer.args.device), attention.kernels(trainer.model), \
            quiet_scalar_gathers():
        stop = StopTogetherOnSignal(trainer.accelerator, received)
        trainer.add_callback(stop)
        try:
            result = trainer.train(resume_from_checkpoint=checkpoint)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise ResourceError(f"disk full while writing under {checkpoints}; the checkpoints saved before are "
                                    "intact: free space and rerun to resume") from None
            raise
        except RuntimeError as exc:
            if not is_out_of_memory(exc) and "No executable batch size" not in str(exc):
                raise
            raise ResourceError(
                f"out of memory while training at train.per_device_train_batch_size="
                f"{cfg.train.per_device_train_batch_size}: lower it (and raise train.gradient_accumulation_steps to "
                f"keep the effective batch), or set train.auto_find_batch_size=true"
                f"{' in a new output.dir (checkpoints of this batch size exist)' if checkpoint else ''} "
                f"({first_line(exc)})") from None
        if stop.stopped_at is not None:
            raise Interrupted(received[0] if received else signal.SIGTERM,
                              f"train interrupted at step {stop.stopped_at}; checkpoint saved in {checkpoints}: "
                              "rerun the same command to resume")
        eval_loss = trainer.evaluate()["eval_loss"]
    return result, resumed, eval_loss


@contextlib.contextmanager
def quiet_scalar_gathers():
    """TRL gathers its per-step metrics (token counts, entropy, accuracy: scalars) with gather_for_metrics; after a
    resume the Trainer skips batches through a dataloader without a length, and accelerate then logs "The used
    dataset had no length, returning gathered tensors. You should drop the remainder yourself." on every gather of
    the last batch. There is no remainder in a scalar and nothing for a user to do: that line is dropped."""
    accelerate_log = logging.getLogger("accelerate.accelerator")
    notice = NoLengthNotice()
    accelerate_log.addFilter(notice)
    try:
        yield
    finally:
        accelerate_log.removeFilter(notice)


class NoLengthNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "The used dataset had no length" not in record.getMessage()


@dataclasses.dataclass(frozen=True)
class Resumed:
    """What describe_run needs of the checkpoint a run resumed from, read before training (the Trainer's rotation
    can delete that checkpoint before the run ends)."""
    path: str
    step: int
    tokens_seen: int

    @classmethod
    def read(cls, checkpoint: str) -> Resumed:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
        return cls(checkpoint, state.get("global_step", 0), state.get("num_input_tokens_seen", 0))


def newest_complete_checkpoint(checkpoints: Path) -> str | None:
    """The newest checkpoint-N that was saved to the end (the Trainer writes trainer_state.json last): a process
    killed while saving leaves a partial one, which must not be resumed from."""
    found = sorted(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])
                   if p.name.split("-")[-1].isdigit() else -1)
    complete = [p for p in found if (p / "trainer_state.json").is_file()]
    if len(complete) < len(found):
        log.warning("train: ignoring %s: saved only in part", ", ".join(p.name for p in found if p not in complete))
    return str(complete[-1]) if complete else None


def describe_model(trainer: SFTTrainer) -> dict:
    model = trainer.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    adapted = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                      if isinstance(module, peft.tuners.lora.LoraLayer)})
    log.info("train: LoRA on %s: %s trainable parameters of %s (%.3f%%)", ", ".join(adapted), f"{trainable:,}",
             f"{total:,}", 100 * trainable / total)
    return {"dtype": str(model.dtype).removeprefix("torch."), "device": str(trainer.args.device),
            "trainable_parameters": trainable, "total_parameters": total, "adapted_modules": adapted,
            "adapted_layers": sum(isinstance(m, peft.tuners.lora.LoraLayer) for m in model.modules())}


def describe_run(trainer: SFTTrainer, result, resumed: Resumed | None) -> dict:
    """Steps, the loss curve and this session's rates: examples/s from the Trainer's own metric (it counts only
    the steps run in this call), tokens/s from its token count minus what the checkpoint resumed from had seen."""
    history = trainer.state.log_history
    losses = [[h["step"], round(h["loss"], 6)] for h in history if "loss" in h]
    session_tokens = trainer.state.num_input_tokens_seen - (resumed.tokens_seen if resumed else 0)
    runtime = result.metrics["train_runtime"]
    return {"steps": trainer.state.global_step, "per_device_train_batch_size": trainer.state.train_batch_size,
            "loss_curve": losses, "first_loss": losses[0][1] if losses else None,
            "last_loss": losses[-1][1] if losses else None,
            "examples_per_second": round(result.metrics["train_samples_per_second"], 3),
            "tokens_seen": trainer.state.num_input_tokens_seen, "session_tokens": session_tokens,
            "tokens_per_second": round(session_tokens / runtime, 1) if runtime else None,
            "train_runtime_seconds": round(runtime, 1)}
