"""make gpu-check: one script for a CUDA machine (the README records its figures).

Runs train (bf16) + generate + score on the embedded Gemma 3 270M with the shipped sample (260 training rows,
60 test rows, both models), then prints training examples/s and generation rows/s and tokens/s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "gpu-check"


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("gpu-check needs a CUDA GPU (torch.cuda.is_available() is False)")
    command = [sys.executable, "entrypoint.py", "run", "--config", "configs/demo.yaml", f"output.dir={OUT}",
               "model.dtype=bfloat16", "train.per_device_train_batch_size=16", "train.learning_rate=1.0e-3",
               "generate.batch_size=64"]
    subprocess.run(command, cwd=ROOT, check=True)
    train = json.loads((OUT / "train" / "train_summary.json").read_text())
    generate = json.loads((OUT / "generate" / "generate_summary.json").read_text())
    print(f"\ngpu-check on {generate['device_name']}, torch {torch.__version__}")
    print(f"train    : {train['examples_per_second']:.1f} examples/s, {train['tokens_per_second']:.0f} tokens/s, "
          f"{train['steps']} steps, loss {train['first_loss']} -> {train['last_loss']}")
    for name, stats in generate["models"].items():
        print(f"generate : {name:<5} {stats['rows_per_second']:.1f} rows/s, {stats['tokens_per_second']:.0f} tokens/s")
    print(f"peak GPU memory: train {train['peak_memory'].get('gpu_allocated_gib')} GiB, "
          f"generate {generate['peak_memory'].get('gpu_allocated_gib')} GiB")


if __name__ == "__main__":
    main()
