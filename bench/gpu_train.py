"""gpu-check's training figures: our trainer and TRL's stock one, on the same rows, model and LoRA.

    time_training(cfg, model, tokenizer, batch_size, warmup, steps, stock) -> {examples/s, tokens/s, MFU, losses}

Ours is the train stage's own path (pipeline/train.py: training_arguments, build_trainer, fit), so the CUDA
defaults of pipeline/gpu_training.py and the SDPA kernels of pipeline/attention.py are what is timed. The stock
baseline is what a user gets from TRL with its defaults (SFTConfig's own: gradient checkpointing on, padded batches)
at the same batch size, learning rate and seed. Times are taken at optimizer-step ends after a CUDA synchronize; the
`warmup` first steps (kernel selection, allocation) are left out of the rates, and `steps` more are timed.

MFU counts 4 x parameters FLOPs per trained token (2 forward, 2 for the activations' gradients: the base weights are
frozen, LoRA's own are negligible) against the card's dense bf16 peak (PEAK_FLOPS, by device name).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import torch

PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}  # dense bf16, the vendors' data sheets (SXM)
LOSSES_COMPARED = 20  # the first steps' losses, ours against stock


def peak_flops(device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


def time_training(cfg, model, tokenizer, train_rows: list[dict], eval_rows: list[dict], batch_size: int,
                  warmup: int, steps: int, stock: bool) -> dict:
    """Trains `model` (a fresh one: LoRA is added to it) for warmup + steps optimizer steps and times the last
    `steps`; the trainer's own per-device batch and tokens are read back from it, not assumed."""
    from transformers import TrainerCallback

    from pipeline.sft import build_trainer, fit, training_arguments
    from pipeline.tokenized import sft_dataset

    total = warmup + steps
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, per_device_train_batch_size=batch_size, gradient_accumulation_steps=1, max_steps=total,
        save_steps=10**9, logging_steps=1))
    dataset, _ = sft_dataset(train_rows, tokenizer, cfg)
    eval_set, _ = sft_dataset(eval_rows, tokenizer, cfg)
    output_dir = Path(tempfile.mkdtemp()) / "checkpoints"
    trainer = (stock_trainer(cfg, model, tokenizer, dataset, output_dir) if stock else
               build_trainer(cfg, training_arguments(cfg, output_dir), model, tokenizer, dataset, eval_set))
    device = trainer.args.device
    marks: list[tuple[float, int]] = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), state.num_input_tokens_seen))

    trainer.add_callback(StepEnds())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    if stock:
        trainer.train()
    else:
        fit(trainer, cfg, received=[])
    wall = time.perf_counter() - started
    (t0, tokens0), (t1, tokens1) = marks[warmup - 1], marks[-1]
    timed_steps, seconds, tokens = len(marks) - warmup, t1 - t0, tokens1 - tokens0
    rows = timed_steps * trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
    parameters = sum(p.numel() for p in trainer.model.parameters())
    peak = peak_flops(device)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h][:LOSSES_COMPARED]
    return {"path": "stock TRL" if stock else "ours", "batch_size": trainer.args.per_device_train_batch_size,
            "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps,
            "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
            "padding_free": bool(getattr(trainer.args, "padding_free", False)),
            "warmup_steps": warmup, "timed_steps": timed_steps, "timed_seconds": round(seconds, 3),
            "wall_seconds_with_warmup": round(wall, 1), "examples_per_second": round(rows / seconds, 3),
            "tokens_per_second": round(tokens / seconds, 1),
            "mfu": round(4 * parameters * tokens / seconds / peak, 4) if peak else None,
            "first_losses": [round(loss, 4) for loss in losses],
            "gpu_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None}


def stock_trainer(cfg, model, tokenizer, dataset, output_dir: Path):
    """TRL's SFTTrainer with SFTConfig's defaults, but for what the comparison must share with ours: batch, steps,
    learning rate, seeds, dtype, LoRA, the objective (the loss on completion tokens only: TRL's default applies it
    to prompt/completion columns, not to the pre-tokenized rows both trainers get); and the Trainer's token count
    (for tokens/s)."""
    import peft
    from trl import SFTConfig, SFTTrainer

    from pipeline import models

    args = SFTConfig(output_dir=str(output_dir), per_device_train_batch_size=cfg.train.per_device_train_batch_size,
                     max_steps=cfg.train.max_steps, learning_rate=cfg.train.learning_rate, seed=cfg.train.seed,
                     data_seed=cfg.train.seed, completion_only_loss=True,
                     bf16=models.resolve_dtype(cfg.model) == torch.bfloat16, logging_steps=1, save_strategy="no",
                     report_to="none", include_num_input_tokens_seen="non_padding",
                     use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    lora = peft.LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                           target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)


def loss_gap(ours: dict, stock: dict) -> float | None:
    """The largest difference between the two paths' losses over the steps both logged."""
    pairs = list(zip(ours["first_losses"], stock["first_losses"]))
    return round(max(abs(a - b) for a, b in pairs), 4) if pairs else None
