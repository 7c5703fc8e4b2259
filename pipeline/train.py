"""Train stage: LoRA SFT with TRL's SFTTrainer and PEFT.

    train(cfg, output_dir) -> <output>/train/{adapter/, checkpoints/, train_summary.json}

Reads top to bottom: setup (everything a user can get wrong is checked before the model loads: training
settings, every split the run will use, then the target modules) / train (resumes from the newest checkpoint;
all processes stop together on a signal) / save (adapter renamed into place, summary last, so its presence means
the stage finished). The tutorial's defects are designed out here: target modules are checked against the model,
padding uses a pad token distinct from EOS (pipeline/models.py, set_pad_token: EOS is never masked), and the loss
falls on the completion only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import signal
import time
from pathlib import Path

import peft
import torch
import transformers
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from pipeline import attention, card, data, families, gpu_training, identity, models, sources, tracking
from pipeline.config import Config
from pipeline.errors import ConfigError, Interrupted, ResourceError, first_line, is_out_of_memory
from pipeline.prompt import STYLES, fit_inputs
from pipeline.stage import (atomic_path, check_stage_dir, claim_stage_dir, inputs_hash, normalize_modes, peak_memory,
                            recorded_hash, stop_on_signal, write_json_atomic)

log = logging.getLogger(__name__)
# transformers 5 renamed gradient_checkpointing to activation_checkpointing (the old name warns that it goes away in
# v6): pass the name the installed SFTConfig has, so a user sees no warning they cannot act on.
CHECKPOINTING = ("activation_checkpointing" if "activation_checkpointing" in {f.name for f in
                                                                             dataclasses.fields(SFTConfig)}
                 else "gradient_checkpointing")


def train(cfg: Config, output_dir: Path) -> Path:
    stage_dir = Path(output_dir) / "train"
    summary_path = stage_dir / "train_summary.json"
    started = time.perf_counter()
    transformers.set_seed(cfg.train.seed)

    # --- setup -------------------------------------------------------------------------------------------------
    args = training_arguments(cfg, stage_dir / "checkpoints")
    splits = load_splits(cfg)
    with args.main_process_first(local=True):  # one process converts the embedded model, the others reuse it
        source = sources.model_source(cfg.model)
    inputs = identity.train_inputs(cfg, splits, source)  # by content: the rows, the model, the prompt
    digest = inputs_hash(inputs)
    check_stage_dir(stage_dir, "train", digest)  # another config's checkpoints: refused, before any work
    if summary_path.is_file() and recorded_hash(stage_dir) == digest:
        log.info("train: already finished in %s from the same inputs, skipping", stage_dir)
        return stage_dir
    source = identity.pinned(source, inputs["model"])
    tokenizer = models.load_tokenizer(cfg.model, source)  # with a pad token distinct from EOS
    model = models.load_model(cfg.model, source)
    models.check_target_modules(model, cfg.lora.target_modules, cfg.model.source)
    with args.main_process_first(local=False):  # across nodes too: the output dir is shared
        claim_stage_dir(stage_dir, "train", inputs)  # only now: a run that failed on its inputs leaves none
    overlap = data.warn_on_overlap(splits)
    train_set, truncated = sft_dataset(splits["train"], tokenizer, cfg)
    eval_set, _ = sft_dataset(splits["validation"], tokenizer, cfg)
    trainer = build_trainer(cfg, args, model, tokenizer, train_set, eval_set)
    adapted = describe_model(trainer)
    runs: dict = {}
    trainer.add_callback(RecordTrackerRuns(runs))

    with stop_on_signal() as received:
        # --- train ---------------------------------------------------------------------------------------------
        result, resumed, eval_loss = fit(trainer, cfg, received)
        # --- save (the main process; the others wait so that no one reads a half-written stage) --------------
        if trainer.is_world_process_zero():
            save(trainer, tokenizer, cfg, stage_dir, {
                "inputs_hash": digest, "model_source": cfg.model.source, **adapted,
                "train_rows": len(train_set), "validation_rows": len(eval_set), "train_prompts_truncated": truncated,
                "inputs_shared_between_splits": overlap, "resumed_from": resumed.path if resumed else None,
                **describe_run(trainer, result, resumed), "validation_loss": round(eval_loss, 6),
                "wall_seconds": round(time.perf_counter() - started, 1), "trackers": runs})
        trainer.accelerator.wait_for_everyone()
    if received:  # it came after the last step (evaluating, saving): the stage is done, the run stops here
        raise Interrupted(received[0], "stopped after the train stage finished: rerun the same command to continue")
    return stage_dir


def save(trainer: SFTTrainer, tokenizer, cfg: Config, stage_dir: Path, summary: dict) -> None:
    """The adapter (renamed into place), then train_summary.json: its presence marks the stage finished."""
    adapter_dir = save_adapter(trainer.model, tokenizer, stage_dir, cfg)
    write_json_atomic(stage_dir / "train_summary.json", {
        **summary, "peak_memory": peak_memory(),
        "adapter_megabytes": round((adapter_dir / "adapter_model.safetensors").stat().st_size / 2**20, 2),
        "trackers": {**summary["trackers"], "tensorboard": tracking.tensorboard_dir(trainer)},
        "provenance": identity.provenance(),
    })
    log.info("train: done; adapter in %s", adapter_dir)


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


def load_splits(cfg: Config) -> dict[str, list[dict]]:
    """Every split the run uses, validated: the test split too, so that a bad test row never costs a training
    run (and train/test leakage is counted)."""
    return data.load_splits(cfg.data, sources.hf_token(cfg.model))


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
    and the validation loss. When a signal has been `received` (pipeline.stage.stop_on_signal), every process
    finishes the same step and one checkpoint is saved before Interrupted is raised (exit 143/130)."""
    checkpoints = Path(trainer.args.output_dir)
    checkpoint = newest_complete_checkpoint(checkpoints)
    # Read now: save_total_limit may delete the resumed checkpoint while training, so nothing reads its files after.
    resumed = Resumed.read(checkpoint) if checkpoint else None
    if checkpoint:
        log.info("train: resuming from %s (step %d)", checkpoint, resumed.step)
    # The CPU tuning measured on the model's family (pipeline/families.py); the stock Trainer for any other model;
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


def sft_dataset(rows: list[dict], tokenizer, cfg: Config) -> tuple[Dataset, int]:
    """Tokenized prompt/completion examples (input_ids + completion_mask) from the prompt style.

    Tokenized here rather than by TRL: the prompt ids are then exactly the generation prompt's, and TRL's own
    preparation would spend a minute dill-hashing the 262k-token tokenizer for the datasets cache fingerprint.
    Prompts over train.max_prompt_tokens are cut from the left of the context.
    """
    style = STYLES[cfg.prompt.format]
    fitted, truncated = fit_inputs(tokenizer, [row["input"] for row in rows], style, cfg.train.max_prompt_tokens,
                                   "train.max_prompt_tokens")
    examples = [style.training_ids(tokenizer, text, row["target"]) for text, row in zip(fitted, rows)]
    return Dataset.from_list(examples), truncated


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


def save_adapter(model, tokenizer, stage_dir: Path, cfg: Config) -> Path:
    """Saves the adapter to adapter/ through a temporary folder (never half written). adapter_config.json names
    the base model by Hub id or folder name, never by a path of this machine (pipeline/card.py); PEFT's README
    template (whose base_model is the cache path the model was loaded from) is replaced by a card built from the
    config, which the score stage fills with its numbers. The tokenizer only with train.save_tokenizer: training
    does not change it, and nothing reads it from here."""
    for config in model.peft_config.values():
        config.base_model_name_or_path = card.adapter_base_name(cfg.model)
    with atomic_path(stage_dir / "adapter") as tmp:
        # No embedding layers: only linear layers are adapted and the vocabulary is never resized ("auto" would
        # look the base model up on the Hub by the name set above, a network call that can hang offline).
        model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
        card.write_card(tmp / "README.md", card.model_card(cfg))
        if cfg.train.save_tokenizer:
            tokenizer.save_pretrained(tmp)
    return stage_dir / "adapter"


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
    0600: each saved checkpoint gets the modes of every other output (pipeline/stage.py, normalize_modes)."""

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
