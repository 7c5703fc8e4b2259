"""make bench: the tutorial's way against ours, side by side, on this machine with the embedded Gemma 3 270M.

    python -m bench.run                 # all cases, each in its own process (so peak memory is its own)
    python -m bench.run --out bench     # the same, replacing the committed reference run (bench/results.json)
    python -m bench.run --case NAME     # one case, prints its JSON

generation: the tutorial's transformers text-generation pipeline, one prompt at a time, against our batched,
length-sorted generate stage; same 48 test prompts, greedy, same max_new_tokens and stop rules (EOS, newline).
training: the tutorial's setup (pad = EOS, loss on the whole text, TRL defaults including gradient
checkpointing, padded batches of 4) against ours (completion-only loss with EOS learned, padding-free, no
gradient checkpointing, and pipeline/cpu_tuning.py's CPU tweaks, through the train stage's own `fit`); same rows,
same number of steps, LoRA r=16 on q/k/v/o in both
(the tutorial's q_prog/o_prog typos would adapt only k/v: less work, and wrong).
Writes results.json to --out (default outputs/bench/, ignored by git: a bench run leaves the checkout clean) and
prints a table; bench/results.json is the committed reference run. Figures are benchmarks, never test assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "bench"  # what make bench/profile write: untracked, so no report calls the checkout dirty
PROMPTS, MAX_NEW_TOKENS, TRAIN_STEPS, TRAIN_BATCH = 48, 48, 8, 4
TRAIN_RUNS = 2  # training cases alternate and the faster run of each counts: this shared machine is noisy


def setup(tutorial: bool = False):
    """The demo config, its (converted) embedded model and tokenizer: loaded our way, or as the tutorial does."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline import models, sources
    from pipeline.config import load_config

    cfg = load_config(ROOT / "configs/demo.yaml", [
        f"generate.max_new_tokens={MAX_NEW_TOKENS}",
        f"train.max_steps={TRAIN_STEPS}", f"train.per_device_train_batch_size={TRAIN_BATCH}",
        "train.save_steps=100000", "train.logging_steps=1", "model.dtype=float32"])
    source = sources.model_source(cfg.model)
    if tutorial:  # fp32 (the tutorial's fp16 is for its GPU; Gemma 3 overflows in fp16 and CPUs lack fast fp16)
        return (cfg, AutoTokenizer.from_pretrained(source.location),
                AutoModelForCausalLM.from_pretrained(source.location, dtype=torch.float32).eval())
    return cfg, models.load_tokenizer(cfg.model, source), models.load_model(cfg.model, source).eval()


def test_rows(count: int) -> list[dict]:
    lines = (ROOT / "data/sample/test.jsonl").read_text(encoding="utf-8").splitlines()[:count]
    return [{"id": f"test:{i}", **json.loads(line)} for i, line in enumerate(lines)]


def train_rows(count: int) -> list[dict]:
    lines = (ROOT / "data/sample/train.jsonl").read_text(encoding="utf-8").splitlines()[:count]
    return [{"id": f"train:{i}", **json.loads(line)} for i, line in enumerate(lines)]


def generate_tutorial() -> dict:
    from transformers import pipeline

    from pipeline.prompt import STYLES

    cfg, tokenizer, model = setup(tutorial=True)
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    rows, outputs = test_rows(PROMPTS), {}
    started = time.perf_counter()
    for row in rows:
        # add_special_tokens=True: BOS as in training; without it Gemma degrades and outputs could not be compared.
        result = pipe(STYLES["plain"].prompt_text(row["input"]), max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                      return_full_text=False, stop_sequence="\n", add_special_tokens=True)
        outputs[row["id"]] = result[0]["generated_text"].split("\n", 1)[0].strip()
    return {"seconds": time.perf_counter() - started, "rows": len(rows), "outputs": outputs}


def generate_ours() -> dict:
    from pipeline.batches import Work, run_model
    from pipeline.tokenized import decoding
    from pipeline.tokenized import prompt_ids

    cfg, tokenizer, model = setup()
    rows = test_rows(PROMPTS)
    work = Work(rows=rows, prompts=prompt_ids(tokenizer, rows, cfg)[0], decoding=decoding(tokenizer, cfg),
                batch_size=cfg.generate.batch_size, max_batch_size=cfg.generate.max_batch_size, seed=cfg.generate.seed)
    with tempfile.NamedTemporaryFile("w+", suffix=".jsonl", encoding="utf-8") as out:
        started = time.perf_counter()
        stats = run_model(model, tokenizer, "base", list(range(len(rows))), work, out, received=[])
        seconds = time.perf_counter() - started
        out.seek(0)
        outputs = {r["id"]: r["prediction"] for r in map(json.loads, out.read().splitlines())}
    return {"seconds": seconds, "rows": len(rows), "batch_size": cfg.generate.batch_size,
            "tokens_per_second": stats["tokens_per_second"], "outputs": outputs}


def train_tutorial() -> dict:
    import peft
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    cfg, tokenizer, model = setup(tutorial=True)
    tokenizer.pad_token = tokenizer.eos_token  # the tutorial's choice: EOS is then masked as padding
    texts = [{"text": f"### context: {r['input']}\n### question: {r['target']}"}
             for r in train_rows(TRAIN_STEPS * TRAIN_BATCH)]
    args = SFTConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=TRAIN_BATCH, max_steps=TRAIN_STEPS,
                     learning_rate=1e-4, optim="adamw_torch", logging_steps=1, save_strategy="no",
                     report_to="none", bf16=False, seed=42)  # everything else: TRL defaults
    lora = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(texts), processing_class=tokenizer,
                         peft_config=lora)
    return train_figures(trainer, trainer.train(), args.gradient_checkpointing)


def train_ours() -> dict:
    from pipeline.sft import build_trainer, fit, training_arguments
    from pipeline.tokenized import sft_dataset

    cfg, tokenizer, model = setup()
    dataset, _ = sft_dataset(train_rows(TRAIN_STEPS * TRAIN_BATCH), tokenizer, cfg)
    eval_set, _ = sft_dataset(train_rows(TRAIN_BATCH), tokenizer, cfg)
    trainer = build_trainer(cfg, training_arguments(cfg, Path(tempfile.mkdtemp())), model, tokenizer, dataset,
                            eval_set)
    result, _, _ = fit(trainer, cfg, received=[])  # as pipeline.train.train() runs it: CPU tuning, resume
    return train_figures(trainer, result, cfg.train.gradient_checkpointing)


def train_figures(trainer, result, gradient_checkpointing: bool) -> dict:
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"seconds": result.metrics["train_runtime"], "steps": trainer.state.global_step,
            "examples_per_second": result.metrics["train_samples_per_second"],
            "gradient_checkpointing": gradient_checkpointing, "first_loss": losses[0], "last_loss": losses[-1]}


CASES = {"generate_tutorial": generate_tutorial, "generate_ours": generate_ours,
         "train_tutorial": train_tutorial, "train_ours": train_ours}


def run_case(name: str) -> dict:
    print(f"bench: {name} ...", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, "-m", "bench.run", "--case", name], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if done.returncode != 0:
        sys.exit(f"bench case {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=CASES, help="run one case in this process and print its JSON")
    parser.add_argument("--out", default=str(OUT), help="folder for results.json (default: outputs/bench)")
    args = parser.parse_args(argv)
    if args.case:
        from pipeline.runtime import peak_memory

        result = CASES[args.case]()
        print(json.dumps({**result, "peak_memory": peak_memory()}, ensure_ascii=False))
        return
    import torch

    cases = {name: run_case(name) for name in ("generate_tutorial", "generate_ours")}
    runs = {name: [] for name in ("train_tutorial", "train_ours")}
    for _ in range(TRAIN_RUNS):
        for name in runs:
            runs[name].append(run_case(name))
    for name, results in runs.items():
        cases[name] = {**min(results, key=lambda r: r["seconds"]), "runs_seconds": [r["seconds"] for r in results],
                       "peak_memory": {"cpu_rss_gib": max(r["peak_memory"]["cpu_rss_gib"] for r in results)}}
    tutorial, ours = cases["generate_tutorial"], cases["generate_ours"]
    same = sum(tutorial["outputs"][k] == ours["outputs"][k] for k in tutorial["outputs"])
    for case in (tutorial, ours):
        case["rows_per_second"] = case["rows"] / case["seconds"]
    results = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(),
                    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"},
        "settings": {"prompts": PROMPTS, "max_new_tokens": MAX_NEW_TOKENS, "our_generate_batch": ours["batch_size"],
                     "train_steps": TRAIN_STEPS, "train_batch": TRAIN_BATCH, "train_runs": TRAIN_RUNS},
        "generation": {
            "tutorial": {k: v for k, v in tutorial.items() if k != "outputs"},
            "ours": {k: v for k, v in ours.items() if k != "outputs"},
            "speedup": ours["rows_per_second"] / tutorial["rows_per_second"],
            "outputs_equal_share": same / len(tutorial["outputs"]),
        },
        "training": {"tutorial": cases["train_tutorial"], "ours": cases["train_ours"],
                     "speedup": cases["train_ours"]["examples_per_second"]
                     / cases["train_tutorial"]["examples_per_second"]},
    }
    path = Path(args.out) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(table(results))
    print(f"results: {path}")


def table(results: dict) -> str:
    gen, train = results["generation"], results["training"]
    rows = [f"{'':<30}{'tutorial':>12}{'ours':>12}{'ratio':>9}",
            f"{'generation rows/s':<30}{gen['tutorial']['rows_per_second']:>12.3f}{gen['ours']['rows_per_second']:>12.3f}"
            f"{gen['speedup']:>8.1f}x",
            f"{'generation peak RSS GiB':<30}{gen['tutorial']['peak_memory']['cpu_rss_gib']:>12.2f}"
            f"{gen['ours']['peak_memory']['cpu_rss_gib']:>12.2f}",
            f"{'greedy outputs equal':<30}{gen['outputs_equal_share']:>24.0%}",
            f"{'training examples/s':<30}{train['tutorial']['examples_per_second']:>12.3f}"
            f"{train['ours']['examples_per_second']:>12.3f}{train['speedup']:>8.1f}x",
            f"{'training peak RSS GiB':<30}{train['tutorial']['peak_memory']['cpu_rss_gib']:>12.2f}"
            f"{train['ours']['peak_memory']['cpu_rss_gib']:>12.2f}"]
    return "\n".join(rows)


if __name__ == "__main__":
    main()
