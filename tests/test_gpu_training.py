"""Training arguments on CUDA (pipeline/gpu_training.py): the configured effective batch in larger per-device
batches, padded batches grouped by length; on a CPU every argument as the config sets it."""

from pathlib import Path

import pytest
from trl import SFTConfig

from pipeline import gpu_training, sft
from pipeline.config import TrainConfig, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("configured, on_cuda", [
    ((4, 1), (4, 1)),    # the demo and 1B configs: a larger batch would change what is trained
    ((4, 4), (16, 1)),   # the same 16 rows a step, in one batch
    ((2, 12), (12, 2)),  # 24 a step: the largest divisor up to 16
    ((4, 3), (12, 1)),
    ((3, 7), (7, 3)),    # 21 a step: 7 rows x 3
    ((32, 1), (32, 1)),  # never below the configured per-device batch
    ((1, 64), (16, 4)),
])
def test_cuda_keeps_the_effective_batch_in_larger_batches(configured, on_cuda):
    section = TrainConfig(per_device_train_batch_size=configured[0], gradient_accumulation_steps=configured[1])
    assert gpu_training.batch_split(section, on_cuda=True) == on_cuda
    assert on_cuda[0] * on_cuda[1] == configured[0] * configured[1]
    assert gpu_training.batch_split(section, on_cuda=False) == configured


def test_padded_batches_are_grouped_by_length_on_cuda_only(tmp_path):
    padded = TrainConfig(padding_free=False)
    assert gpu_training.sampling(TrainConfig(padding_free=True), on_cuda=True) == {}
    assert gpu_training.sampling(padded, on_cuda=False) == {}
    grouped = SFTConfig(output_dir=str(tmp_path), use_cpu=True, **gpu_training.sampling(padded, on_cuda=True))
    assert getattr(grouped, "train_sampling_strategy", None) == "group_by_length" or grouped.group_by_length


def test_the_cpu_arguments_are_the_configs(tmp_path, monkeypatch):
    """The demo's SFTConfig on a CPU: the batch, accumulation and sampler exactly as configured and by default."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    cfg = load_config(ROOT / "configs/demo.yaml", ["train.gradient_accumulation_steps=4"])
    args = sft.training_arguments(cfg, tmp_path / "checkpoints")
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size, args.gradient_accumulation_steps) == (
        4, 4, 4)
    default = SFTConfig(output_dir=str(tmp_path), use_cpu=True)
    for name in ("train_sampling_strategy", "group_by_length", "dataloader_num_workers"):
        if hasattr(default, name):
            assert getattr(args, name) == getattr(default, name), name
    assert getattr(args, sft.CHECKPOINTING) is cfg.train.gradient_checkpointing is False
    assert args.padding_free is cfg.train.padding_free is True
