"""Training on CUDA: batches that use the card, the optimization the config asks for; the CPU's arguments as they are.

    per_device, accumulation = gpu_training.batch_split(cfg.train, on_cuda)
    SFTConfig(..., **gpu_training.sampling(cfg.train, on_cuda))

The config's effective batch (train.per_device_train_batch_size x train.gradient_accumulation_steps) is what the
optimizer sees, on any device. On CUDA it is run as the largest per-device batch up to CUDA_BATCH that divides it
(never below the configured per-device batch), with the accumulation making up the rest: a config of 4 x 4 trains
16 x 1 on a GPU and 4 x 4 on a CPU, the same steps either way. A config of 4 x 1 stays 4 x 1: a larger batch would
change what is trained, which is the config's to decide.

Padded batches (train.padding_free=false) are grouped by length on CUDA, so a batch pads to its own longest row, not
to a random one's: TRL's padding-free batches have no padding to save and are left as they are. Gradient
checkpointing stays as configured (off by default; it costs ~20-40% speed, and a LoRA run of a 1B model fits an
80 GB card without it). The data is tokenized once, before the Trainer (pipeline/train.py, sft_dataset), so no
dataloader workers: collating pre-tokenized rows costs microseconds a batch.
"""

from __future__ import annotations

import dataclasses

from trl import SFTConfig

CUDA_BATCH = 16  # per-device rows on a GPU: 16 rows of ~150 tokens keep a 1B model's matmuls busy on an H100/H200
SFT_FIELDS = {field.name for field in dataclasses.fields(SFTConfig)}


def batch_split(train, on_cuda: bool) -> tuple[int, int]:
    """(per-device batch, gradient accumulation steps) for `train` (the config's train section): on CUDA the
    effective batch as described above; elsewhere the configured values."""
    per_device, accumulation = train.per_device_train_batch_size, train.gradient_accumulation_steps
    if not on_cuda:
        return per_device, accumulation
    effective = per_device * accumulation
    rows = max(d for d in range(per_device, max(per_device, min(CUDA_BATCH, effective)) + 1) if effective % d == 0)
    return rows, effective // rows


def sampling(train, on_cuda: bool) -> dict:
    """The SFTConfig setting that groups padded batches by length on CUDA (its name in the installed transformers:
    train_sampling_strategy from 5.2x, group_by_length before); none elsewhere or for padding-free batches."""
    if not on_cuda or train.padding_free:
        return {}
    if "train_sampling_strategy" in SFT_FIELDS:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}
