"""Train stage: LoRA SFT with TRL's SFTTrainer and PEFT.

    train(cfg, output_dir) -> <output>/train/{adapter/, checkpoints/, train_summary.json}

Reads top to bottom: setup (model, target-module check, data) / train (resumes from the newest checkpoint) /
save (adapter renamed into place, summary last, so its presence means the stage finished).
The tutorial's defects are designed out here: target modules are checked against the model, padding uses the
tokenizer's own pad token (EOS is never a pad, so it is never masked), and the loss falls on the completion only.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import logging
import os
import shutil
import time
from pathlib import Path

import peft
import torch
import transformers
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from pipeline import cpu, data, models
from pipeline.config import Config
from pipeline.errors import ConfigError, Interrupted, ResourceError
from pipeline.prompt import fit_input, training_ids
from pipeline.stage import claim_stage_dir, package_versions, peak_memory, stop_on_signal, write_json_atomic

log = logging.getLogger(__name__)


def train(cfg: Config, output_dir: Path) -> Path:
    stage_dir = Path(output_dir) / "train"
    summary_path = stage_dir / "train_summary.json"
    config_hash = claim_stage_dir(stage_dir, "train", cfg)
    if summary_path.is_file() and (stage_dir / "adapter" / "adapter_model.safetensors").is_file():
        log.info("train: already finished in %s, skipping", stage_dir)
        return stage_dir
    started = time.perf_counter()
    transformers.set_seed(cfg.train.seed)

    # --- setup -------------------------------------------------------------------------------------------------
    source = models.resolve_source(cfg.model)
    tokenizer = models.load_tokenizer(cfg.model, source)
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ConfigError(f"the tokenizer of {cfg.model.source} has no pad token distinct from EOS; padding with "
                          "EOS would mask EOS from the loss and the model would never learn to stop")
    model = models.load_model(cfg.model, source)
    check_target_modules(model, cfg.lora.target_modules, cfg.model.source)

    token = models.hf_token(cfg.model)
    train_split = data.load_split(cfg.data, "train", token, limit=cfg.data.max_train_samples)
    eval_split = data.load_split(cfg.data, "validation", token, limit=cfg.data.max_eval_samples)
    overlap = data.warn_on_overlap({"train": train_split, "validation": eval_split})
    train_set, train_truncated = sft_dataset(train_split, tokenizer, cfg)
    eval_set, _ = sft_dataset(eval_split, tokenizer, cfg)

    trainer = build_trainer(cfg, model, tokenizer, train_set, eval_set, stage_dir / "checkpoints")
    trainable, adapted = describe_adapters(trainer.model)
    log.info("train: LoRA r=%d on %s: %s trainable parameters of %s (%.3f%%)", cfg.lora.r, ", ".join(adapted),
             f"{trainable:,}", f"{count_params(trainer.model):,}", 100 * trainable / count_params(trainer.model))

    # --- train -------------------------------------------------------------------------------------------------
    checkpoints = stage_dir / "checkpoints"
    checkpoint = transformers.trainer_utils.get_last_checkpoint(checkpoints) if checkpoints.is_dir() else None
    if checkpoint:
        log.info("train: resuming from %s", checkpoint)
    cpu.mmap_large_allocations()
    with completion_only_lm_head(), cpu.trl_lm_head_on_onednn(trainer.args.device), \
            stop_on_signal() as received:
        trainer.add_callback(SaveAndStopOnSignal(received))
        try:
            result = trainer.train(resume_from_checkpoint=checkpoint)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise ResourceError(f"disk full while writing under {stage_dir}; the checkpoints saved before are "
                                    "intact: free space and rerun to resume") from None
            raise
        if received:
            raise Interrupted(received[0], f"train interrupted at step {trainer.state.global_step}; checkpoint saved "
                                           f"in {stage_dir / 'checkpoints'}: rerun the same command to resume")
        eval_loss = trainer.evaluate()["eval_loss"]

    # --- save (the main process; the others wait so that no one reads a half-written stage) ------------------
    if not trainer.is_world_process_zero():
        trainer.accelerator.wait_for_everyone()
        return stage_dir
    adapter_dir = save_adapter(trainer.model, tokenizer, stage_dir, cfg.model.source)
    history = trainer.state.log_history
    losses = [[h["step"], round(h["loss"], 6)] for h in history if "loss" in h]
    tokens = max((h.get("num_tokens", 0) for h in history), default=0)
    runtime = result.metrics["train_runtime"]
    write_json_atomic(summary_path, {
        "config_hash": config_hash,
        "model_source": cfg.model.source,
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": str(trainer.args.device),
        "trainable_parameters": trainable,
        "total_parameters": count_params(trainer.model),
        "adapted_modules": adapted,
        "adapted_layers": count_adapted_layers(trainer.model),
        "train_rows": len(train_set), "validation_rows": len(eval_set), "train_prompts_truncated": train_truncated,
        "inputs_shared_between_splits": overlap,
        "steps": trainer.state.global_step,
        "resumed_from": checkpoint,
        "loss_curve": losses,
        "first_loss": losses[0][1] if losses else None, "last_loss": losses[-1][1] if losses else None,
        "validation_loss": round(eval_loss, 6),
        "examples_per_second": round(result.metrics["train_samples_per_second"], 3),
        "tokens_per_second": round(tokens / runtime, 1) if runtime else None,
        "train_runtime_seconds": round(runtime, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "peak_memory": peak_memory(),
        "adapter_megabytes": round((adapter_dir / "adapter_model.safetensors").stat().st_size / 2**20, 2),
        "packages": package_versions(),
    })
    log.info("train: done in %.0f s; loss %s -> %s; adapter in %s", time.perf_counter() - started,
             losses[0][1] if losses else "?", losses[-1][1] if losses else "?", adapter_dir)
    trainer.accelerator.wait_for_everyone()
    return stage_dir


def build_trainer(cfg: Config, model, tokenizer, train_set: Dataset, eval_set: Dataset,
                  checkpoint_dir: Path) -> SFTTrainer:
    """SFTConfig and LoraConfig built from our config, every default that matters set explicitly."""
    lora_config = peft.LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules), bias=cfg.lora.bias, task_type="CAUSAL_LM",
    )
    args = SFTConfig(
        output_dir=str(checkpoint_dir),
        seed=cfg.train.seed, data_seed=cfg.train.seed,
        learning_rate=cfg.train.learning_rate, num_train_epochs=cfg.train.num_train_epochs,
        max_steps=cfg.train.max_steps, per_device_train_batch_size=cfg.train.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.train.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.train.gradient_accumulation_steps, optim=cfg.train.optim,
        lr_scheduler_type=cfg.train.lr_scheduler_type, warmup_steps=cfg.train.warmup_ratio,  # < 1: a ratio
        weight_decay=cfg.train.weight_decay, max_grad_norm=cfg.train.max_grad_norm,
        # The model is already loaded in its dtype (bf16 on capable GPUs, fp32 on CPU); fp16 is never used.
        bf16=model.dtype == torch.bfloat16, fp16=False,
        # TRL turns gradient checkpointing on by default; it costs ~40% speed and a LoRA run rarely needs it.
        gradient_checkpointing=cfg.train.gradient_checkpointing,
        # Padding-free batches: no compute on pad tokens. Prompts are already cut to fit, so no max_length.
        padding_free=cfg.train.padding_free, max_length=None,
        completion_only_loss=True,
        logging_steps=cfg.train.logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=cfg.train.save_steps, save_total_limit=cfg.train.save_total_limit,
        eval_strategy="no", report_to="none", disable_tqdm=False, dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        # Without a GPU, say so: under torchrun/accelerate launch that makes the run DDP over gloo on CPUs.
        use_cpu=not torch.cuda.is_available(),
    )
    return SFTTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                      processing_class=tokenizer, peft_config=lora_config, callbacks=[ProgressLog()])


@contextlib.contextmanager
def completion_only_lm_head():
    """Let TRL's fused LM head score only the completion positions on every device, not just Triton ones.

    TRL (1.16) projects only the positions that are in the loss through the output layer on CUDA/XPU, but every
    position elsewhere, so that Neuron's compiled tile shapes stay fixed. On a CPU that spends most of a step
    pushing prompt tokens, whose loss is masked anyway, through Gemma's 262,144-word output layer. Scoring only
    the completion positions gives identical losses (tested) and trains 1.7x faster on 2 cores. TRL has no option
    for it, so its private decision function is swapped for the duration of training and restored after.
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:  # another TRL version: leave it alone
        yield
        return
    trl_utils._use_triton = lambda device: device.type != "neuron"
    try:
        yield
    finally:
        trl_utils._use_triton = original


def sft_dataset(split: Dataset, tokenizer, cfg: Config) -> tuple[Dataset, int]:
    """Tokenized prompt/completion examples (input_ids + completion_mask) from the one template.

    Tokenized here rather than by TRL: the prompt ids are then exactly the generation prompt's, and TRL's own
    preparation would spend a minute dill-hashing the 262k-token tokenizer for the datasets cache fingerprint.
    Prompts over train.max_prompt_tokens are cut from the left of the context.
    """
    rows, truncated = [], 0
    for input_text, target in zip(split["input"], split["target"]):
        fitted, cut = fit_input(tokenizer, input_text, cfg.prompt.format, cfg.train.max_prompt_tokens)
        truncated += cut
        rows.append(training_ids(tokenizer, fitted, target, cfg.prompt.format))
    if truncated:
        log.info("train: %d prompts longer than %d tokens were cut from the left", truncated,
                 cfg.train.max_prompt_tokens)
    return Dataset.from_list(rows), truncated


def check_target_modules(model, target_modules, source: str) -> None:
    """A target name that matches no linear module is an error, with the closest real name suggested.

    PEFT itself raises only when *no* target matches; one typo among four (the tutorial's q_prog/o_prog) would
    silently adapt only the rest.
    """
    linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Linear)})
    unknown = [name for name in target_modules if name not in linear]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, linear, n=1)
            hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
        raise ConfigError(f"lora.target_modules: {', '.join(hints)} match no linear module of {source}; "
                          f"its linear modules are {', '.join(linear)}")


def describe_adapters(model) -> tuple[int, list[str]]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adapted = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                      if isinstance(module, peft.tuners.lora.LoraLayer)})
    return trainable, adapted


def count_adapted_layers(model) -> int:
    return sum(isinstance(module, peft.tuners.lora.LoraLayer) for module in model.modules())


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def save_adapter(model, tokenizer, stage_dir: Path, base_source: str) -> Path:
    """Saves adapter + tokenizer to a temporary folder, then renames it to adapter/ (never half written).

    adapter_config.json names the configured source (a Hub id or embedded:...), not a temporary cache path.
    """
    final, tmp = stage_dir / "adapter", stage_dir / f".adapter.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for config in model.peft_config.values():
        config.base_model_name_or_path = base_source
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    return final


class SaveAndStopOnSignal(transformers.TrainerCallback):
    """After the step in flight, save a checkpoint (model, optimizer, scheduler, RNG) and stop."""

    def __init__(self, received: list[int]):
        self.received = received

    def on_step_end(self, args, state, control, **kwargs):
        if self.received:
            control.should_save = control.should_training_stop = True
        return control


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
