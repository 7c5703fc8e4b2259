"""make gpu-check: the H200 targets, timed with Gemma 3 1B's architecture and random bf16 weights.

Speed does not depend on the weights' values, and a GPU machine without the Hub cannot fetch the real model, so
this builds google/gemma-3-1b-it's architecture (dimensions from its config) with random weights and the real
262k tokenizer (the embedded one, or --tokenizer DIR), then runs our code on it with the 1B config:

- generate: our decoding loop (pipeline.generate.run_model) over as many prompts as the real test split has
  (10,573, cycled from data/sample), in the config's batches. Random weights never stop, so every row runs to
  max_new_tokens: the worst case. Base + tuned = twice this pass (the merged tuned model has the same shape).
- train: our trainer (pipeline.sft.build_trainer: TRL SFTTrainer + PEFT LoRA) for a few steps at the config's
  batch size and at 16; steady-state examples/s after the first steps, then the time for 1,000 rows and for
  one epoch of 84,582.

Prompts use the plain layout (the embedded tokenizer has no chat template; chat adds 8 tokens per prompt).
Writes gpu_results.json to --out (default bench/) and prints a table.

    make gpu-check                                   # a CUDA machine with the project installed
    python -m bench.gpu_check --smoke                # a tiny model on CPU: checks this script (tested)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TEST_ROWS, TRAIN_ROWS, SUBSET_ROWS = 10_573, 84_582, 1_000
TARGET_SECONDS = {"generate_base_and_tuned": 180, "train_1000_rows": 120, "train_epoch": 1200}
GEMMA3_1B = dict(hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
                 num_key_value_heads=1, head_dim=256, sliding_window=512, max_position_embeddings=32768,
                 query_pre_attn_scalar=256)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=1, head_dim=16, sliding_window=512, max_position_embeddings=2048)


def random_gemma3(tokenizer, dims: dict, dtype, device):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              tie_word_embeddings=True, **dims)
    torch.manual_seed(0)
    with torch.device(device):
        return Gemma3ForCausalLM(config).to(dtype)


def sample_rows(split: str, count: int) -> list[dict]:
    lines = (ROOT / "data/sample" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [{"id": f"{split}:{i}", **json.loads(lines[i % len(lines)])} for i in range(count)]


def time_generation(cfg, tokenizer, dims, dtype, device, rows: int) -> dict:
    from pipeline.decode import Decoding
    from pipeline.batches import Work, run_model
    from pipeline.tokenized import prompt_ids

    model = random_gemma3(tokenizer, dims, dtype, device).eval()
    test = sample_rows("test", rows)
    # No stop tokens: every row runs to max_new_tokens.
    decoding = Decoding(max_new_tokens=cfg.generate.max_new_tokens, stop_ids=(), stop_strings=(),
                        pad_id=tokenizer.pad_token_id)
    work = Work(rows=test, prompts=prompt_ids(tokenizer, test, cfg)[0], decoding=decoding,
                batch_size=cfg.generate.batch_size, max_batch_size=cfg.generate.max_batch_size, seed=cfg.generate.seed)
    with tempfile.TemporaryFile("w+", encoding="utf-8") as out:
        run_model(model, tokenizer, "warmup", list(range(min(rows, cfg.generate.max_batch_size))), work, out, [])
        sync(device)
        stats = run_model(model, tokenizer, "base", list(range(rows)), work, out, [])
        sync(device)
    seconds = TEST_ROWS / stats["rows_per_second"]  # not stats["seconds"]: rounded to 10 ms, too coarse for 12 rows
    return {"rows": rows, "batch_size": cfg.generate.batch_size, "max_new_tokens": cfg.generate.max_new_tokens,
            "rows_per_second": stats["rows_per_second"], "tokens_per_second": stats["tokens_per_second"],
            "generate_base_and_tuned_seconds": round(2 * seconds, 1), "peak_memory": peak_memory(device)}


def time_training(cfg, tokenizer, dims, dtype, device, batch_size: int, steps: int) -> dict:
    from transformers import TrainerCallback

    from pipeline.sft import build_trainer, fit, training_arguments
    from pipeline.tokenized import sft_dataset

    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, per_device_train_batch_size=batch_size, max_steps=steps, save_steps=10**9, logging_steps=1))
    model = random_gemma3(tokenizer, dims, dtype, device)
    dataset, _ = sft_dataset(sample_rows("train", batch_size * steps), tokenizer, cfg)
    eval_set, _ = sft_dataset(sample_rows("validation", batch_size), tokenizer, cfg)
    trainer = build_trainer(cfg, training_arguments(cfg, Path(tempfile.mkdtemp())), model, tokenizer, dataset,
                            eval_set)
    ends = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            sync(device)
            ends.append(time.perf_counter())

    trainer.add_callback(StepTimes())
    fit(trainer, cfg, received=[])
    warm = min(2, len(ends) - 1)  # the first steps pay for kernel selection and allocation
    per_example = (ends[-1] - ends[warm - 1]) / ((len(ends) - warm) * batch_size)
    return {"batch_size": batch_size, "steps": len(ends), "examples_per_second": round(1 / per_example, 2),
            "train_1000_rows_seconds": round(SUBSET_ROWS * per_example, 1),
            "train_epoch_seconds": round(TRAIN_ROWS * per_example, 1), "peak_memory": peak_memory(device)}


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory(device) -> dict:
    from pipeline.runtime import peak_memory as process_peak

    peak = process_peak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return peak


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model, few rows, on CPU")
    parser.add_argument("--tokenizer", help="a tokenizer directory (default: the embedded model's)")
    parser.add_argument("--out", default=str(ROOT / "bench"), help="folder for gpu_results.json")
    args = parser.parse_args(argv)

    from pipeline import models
    from pipeline.config import ModelConfig, load_config
    from pipeline.sources import Source

    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu-check needs a CUDA GPU (torch.cuda.is_available() is False); --smoke checks the script on CPU")
    device = torch.device("cuda" if not args.smoke else "cpu")
    dtype, dims = (torch.float32, TINY) if args.smoke else (torch.bfloat16, GEMMA3_1B)
    # A tokenizer folder holds no weights, so it is not a model.source (which must hold safetensors).
    tokenizer = models.load_tokenizer(ModelConfig(), Source("local", args.tokenizer, "--tokenizer")
                                      if args.tokenizer else None)
    overrides = ["model.dtype=" + str(dtype).removeprefix("torch."), "prompt.format=plain"]
    if args.smoke:
        overrides += ["generate.batch_size=4", "generate.max_new_tokens=8"]
    cfg = load_config(ROOT / "configs/gemma3-1b-korean-socratic.yaml", overrides)
    cfg = dataclasses.replace(cfg, generate=dataclasses.replace(cfg.generate, stop_strings=()))
    rows, steps = (12, 3) if args.smoke else (TEST_ROWS, 12)

    results = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (smoke)",
               "torch": torch.__version__, "model": "Gemma 3 1B architecture, random weights", "dtype": str(dtype),
               "targets_seconds": TARGET_SECONDS,
               "generate": time_generation(cfg, tokenizer, dims, dtype, device, rows),
               "train": [time_training(cfg, tokenizer, dims, dtype, device, batch, steps)
                         for batch in (cfg.train.per_device_train_batch_size, 16)]}
    path = Path(args.out) / "gpu_results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(table(results))
    print(f"results: {path}")
    return results


def table(results: dict) -> str:
    gen = results["generate"]
    lines = [f"gpu-check on {results['device']}, torch {results['torch']}, {results['model']}, {results['dtype']}",
             f"generate: {gen['rows_per_second']:.1f} rows/s, {gen['tokens_per_second']:.0f} tokens/s (batch "
             f"{gen['batch_size']}, {gen['max_new_tokens']} new tokens every row); base + tuned on 10,573 rows: "
             f"{gen['generate_base_and_tuned_seconds']:.0f} s (target < 180 s)"]
    for run in results["train"]:
        lines.append(f"train batch {run['batch_size']:>2}: {run['examples_per_second']:.1f} examples/s; 1,000 rows "
                     f"{run['train_1000_rows_seconds']:.0f} s (target < 120 s); epoch of 84,582 rows "
                     f"{run['train_epoch_seconds']:.0f} s (target < 1200 s)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
