"""make profile: where our generation step and our training step spend their time (torch.profiler).

Prints the top operators by self time for one batched generation (48 prompts, 16 new tokens) and for two
training steps of ours, on the embedded Gemma 3 270M, and writes them to profile.txt in --out (default
outputs/bench/, ignored by git); bench/profile.txt is the committed reference profile.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench.run import OUT, setup, test_rows, train_rows

ROWS = 20


def top_ops(prof, title: str) -> str:
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    return f"== {title} ==\n" + prof.key_averages().table(sort_by=sort, row_limit=ROWS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(OUT), help="folder for profile.txt (default: outputs/bench)")
    args = parser.parse_args(argv)
    from pipeline import cpu_tuning
    from pipeline.decode import Decoding, decode_batch
    from pipeline.sft import build_trainer, training_arguments
    from pipeline.tokenized import prompt_ids, sft_dataset

    cfg, tokenizer, model = setup()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    prompts = sorted(prompt_ids(tokenizer, test_rows(48), cfg)[0], key=len, reverse=True)
    with profile(activities=activities) as generation:  # no stop tokens: every row runs 16 steps
        decode_batch(model, tokenizer, prompts, Decoding(max_new_tokens=16, stop_ids=(), stop_strings=(),
                                                         pad_id=tokenizer.pad_token_id))

    dataset, _ = sft_dataset(train_rows(8), tokenizer, cfg)
    trainer = build_trainer(cfg, training_arguments(cfg, Path(tempfile.mkdtemp())), model, tokenizer, dataset,
                            dataset)
    batches = iter(trainer.get_train_dataloader())
    trainer.model.train()
    with cpu_tuning.for_training(trainer.args.device), profile(activities=activities) as training:
        for _ in range(2):
            loss = trainer.compute_loss(trainer.model, trainer._prepare_inputs(next(batches)))
            loss.backward()
    report = top_ops(generation, "generation: 48 prompts x 16 new tokens, batched") + "\n\n" + top_ops(
        training, "training: 2 steps of 4 examples, forward + backward")
    path = Path(args.out) / "profile.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report + "\n", encoding="utf-8")
    print(report)
    print(f"profile: {path}")


if __name__ == "__main__":
    main()
