"""Generate stage: a question for every test row, with the base model and then with the tuned one.

    generate(cfg, output_dir) -> <output>/generate/{predictions.jsonl, generate_summary.json}

The base model is loaded once; after the base outputs, the adapter is attached and merged into the weights
(no second load from disk, no LoRA overhead per token). Prompts are the training prompts, token for token.
Rows are generated in batches sorted by prompt length (less padding), appended and flushed batch by batch, so a
crash loses at most the batch in flight; a rerun skips the ids already written. At the end the file is rewritten
in the original row order, so an interrupted-and-resumed run ends with the same bytes as an uninterrupted one.

Data parallel: under `accelerate launch` / `torchrun` each process takes every N-th row and writes its own shard
file; the main process merges the shards in the original order into one predictions.jsonl.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pipeline import data, models
from pipeline.config import Config
from pipeline.decode import decode_batch
from pipeline.errors import DataError, Interrupted, ResourceError
from pipeline.prompt import fit_input, generation_prompt_ids
from pipeline.stage import (claim_stage_dir, package_versions, peak_memory, process_state, stop_on_signal,
                            write_json_atomic, write_text_atomic)

log = logging.getLogger(__name__)

MODELS = ("base", "tuned")


def generate(cfg: Config, output_dir: Path) -> Path:
    stage_dir = Path(output_dir) / "generate"
    predictions_path, summary_path = stage_dir / "predictions.jsonl", stage_dir / "generate_summary.json"
    config_hash = claim_stage_dir(stage_dir, "generate", cfg)
    if summary_path.is_file():
        log.info("generate: already finished in %s, skipping", stage_dir)
        return stage_dir
    adapter_dir = Path(output_dir) / "train" / "adapter"
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        if (adapter_dir / "adapter_model.bin").is_file():
            raise ResourceError(f"{adapter_dir / 'adapter_model.bin'} is a pickle file, which can run code when "
                                "loaded: only adapter_model.safetensors is accepted")
        raise ResourceError(f"no trained adapter in {adapter_dir}: run the train stage first")
    started = time.perf_counter()
    state = process_state()  # one process, or one of N under accelerate launch / torchrun
    shard_path = predictions_path if state.num_processes == 1 else (
        stage_dir / f"predictions.rank{state.process_index}-of-{state.num_processes}.jsonl")

    # --- setup -------------------------------------------------------------------------------------------------
    test = data.load_split(cfg.data, "test", models.hf_token(cfg.model), limit=cfg.data.max_eval_samples).to_list()
    source = models.resolve_source(cfg.model)
    tokenizer = models.load_tokenizer(cfg.model, source)
    device = state.device
    model = models.load_model(cfg.model, source, device=device).eval()
    prompts, truncated = [], 0
    for input_text in (row["input"] for row in test):
        fitted, cut = fit_input(tokenizer, input_text, cfg.prompt.format, cfg.generate.max_prompt_tokens)
        prompts.append(generation_prompt_ids(tokenizer, fitted, cfg.prompt.format))
        truncated += cut
    if truncated:
        log.info("generate: %d prompts longer than %d tokens were cut from the left", truncated,
                 cfg.generate.max_prompt_tokens)
    done = read_done(shard_path)
    stop_ids = stop_token_ids(tokenizer, cfg.prompt.format)
    mine = range(state.process_index, len(test), state.num_processes)

    # --- generate: base, then the same weights with the adapter merged in --------------------------------------
    per_model = {}
    with shard_path.open("a", encoding="utf-8") as out, stop_on_signal() as received:
        for name in MODELS:
            if name == "tuned":
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload().eval()
            todo = [i for i in mine if (test[i]["id"], name) not in done]
            per_model[name] = run_model(model, tokenizer, name, prompts, todo, test, cfg, stop_ids, out, received)
    state.wait_for_everyone()
    if not state.is_main_process:
        return stage_dir

    # --- save: shards merged in the original order, then the summary (its presence marks the stage finished) ---
    shards = sorted(stage_dir.glob(f"predictions.rank*-of-{state.num_processes}.jsonl"))
    rows = merge_predictions(predictions_path, shards, [row["id"] for row in test])
    summary = {"config_hash": config_hash, "rows": len(test), "processes": state.num_processes,
               "device": device.type,
               "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                               else f"CPU ({os.cpu_count()} cores)"),
               "dtype": str(model.dtype).removeprefix("torch."), "prompts_truncated": truncated,
               "max_new_tokens": cfg.generate.max_new_tokens, "batch_size": cfg.generate.batch_size,
               "models": {}, "wall_seconds": round(time.perf_counter() - started, 1),
               "peak_memory": peak_memory(), "packages": package_versions()}
    for name in MODELS:
        model_rows = [r for r in rows if r["model"] == name]
        # generated_rows, seconds, rows/s and tokens/s are the main process's share when there are several.
        summary["models"][name] = {
            **per_model[name], "rows": len(model_rows),
            "hit_max_new_tokens_rate": round(sum(r["hit_max_new_tokens"] for r in model_rows) / len(model_rows), 4),
            "mean_new_tokens": round(sum(r["new_tokens"] for r in model_rows) / len(model_rows), 2),
        }
    write_json_atomic(summary_path, summary)
    log.info("generate: %d rows x %d models in %.0f s -> %s", len(test), len(MODELS),
             time.perf_counter() - started, predictions_path)
    return stage_dir


@torch.inference_mode()
def run_model(model, tokenizer, name, prompts, todo, test, cfg: Config, stop_ids, out, received) -> dict:
    """Generates rows `todo` in length-sorted batches, appending each finished batch to `out`.

    Stops after the batch in flight when a signal has been `received`."""
    gen = cfg.generate
    todo = sorted(todo, key=lambda i: (-len(prompts[i]), i))  # longest first: an OOM shows up at once
    started, new_tokens = time.perf_counter(), 0
    generator = torch.Generator(model.device).manual_seed(gen.seed) if gen.do_sample else None
    bar = tqdm(total=len(todo), desc=f"generate {name}", unit="row", disable=not todo)
    for start in range(0, len(todo), gen.batch_size):
        batch = todo[start:start + gen.batch_size]
        outputs = decode_batch(model, [prompts[i] for i in batch], max_new_tokens=gen.max_new_tokens,
                               stop_ids=stop_ids, stop_strings=gen.stop_strings, tokenizer=tokenizer,
                               pad_id=tokenizer.pad_token_id, do_sample=gen.do_sample, temperature=gen.temperature,
                               top_p=gen.top_p, generator=generator)
        lines = []
        for row, generated in zip(batch, outputs):
            record = decode_row(tokenizer, generated, stop_ids, gen.stop_strings, gen.max_new_tokens)
            new_tokens += record["new_tokens"]
            lines.append(json.dumps({"id": test[row]["id"], "model": name, "input": test[row]["input"],
                                     "reference": test[row]["target"], **record}, ensure_ascii=False) + "\n")
        append_flushed(out, lines)
        if received:
            raise Interrupted(received[0], f"generate interrupted; the rows written so far are kept in {out.name}: "
                                           "rerun the same command to continue")
        bar.update(len(batch))
        elapsed = time.perf_counter() - started
        bar.set_postfix(tokens_per_s=f"{new_tokens / elapsed:.1f}")
    bar.close()
    elapsed = time.perf_counter() - started
    log.info("generate %s: %d rows, %d new tokens in %.1f s", name, len(todo), new_tokens, elapsed)
    return {"generated_rows": len(todo), "seconds": round(elapsed, 2),
            "rows_per_second": round(len(todo) / elapsed, 3) if todo else None,
            "tokens_per_second": round(new_tokens / elapsed, 2) if todo else None}


def decode_row(tokenizer, generated: list[int], stop_ids: list[int], stop_strings, max_new_tokens: int) -> dict:
    """Cuts the new tokens after a stop token, decodes, and cuts the text at the first stop string."""
    length, stopped = len(generated), False
    for position, token in enumerate(generated):
        if token in stop_ids:
            length, stopped = position + 1, True
            break
    raw = tokenizer.decode(generated[:length], skip_special_tokens=False)
    text = tokenizer.decode(generated[:length], skip_special_tokens=True)
    for stop in stop_strings:
        if stop in text:
            text, stopped = text.split(stop, 1)[0], True
    return {"prediction": text.strip(), "raw": raw, "new_tokens": length,
            "hit_max_new_tokens": not stopped and length >= max_new_tokens}


def stop_token_ids(tokenizer, fmt: str) -> list[int]:
    ids = [tokenizer.eos_token_id]
    if fmt == "chat":  # instruction-tuned Gemma ends its turn with <end_of_turn>, not <eos>
        end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
        if end_of_turn is not None and end_of_turn != tokenizer.unk_token_id:
            ids.append(end_of_turn)
    return ids


def append_flushed(out, lines: list[str]) -> None:
    try:
        out.write("".join(lines))
        out.flush()
        os.fsync(out.fileno())
    except OSError as exc:
        raise ResourceError(f"cannot write {out.name}: {exc.strerror}; the rows written before are intact, "
                            "rerun to continue") from None


def read_done(path: Path) -> set[tuple[str, str]]:
    """(id, model) pairs already written. A torn last line (a crash mid-write) is cut off the file."""
    if not path.is_file():
        return set()
    content = path.read_bytes()
    complete = content[: content.rfind(b"\n") + 1]
    if len(complete) != len(content):
        log.warning("generate: dropping a torn last line of %s", path)
        with path.open("r+b") as handle:
            handle.truncate(len(complete))
    done = set()
    for number, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
            done.add((row["id"], row["model"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{path} line {number} is not a prediction row; move the file away to regenerate "
                            "it") from None
    if done:
        log.info("generate: resuming, %d rows already in %s", len(done), path)
    return done


def merge_predictions(path: Path, shards: list[Path], ids: list[str]) -> list[dict]:
    """Rewrites predictions.jsonl atomically from itself and any per-process shards, in (model, original row)
    order; checks that every (id, model) pair is there exactly once; removes the merged shards."""
    order = {row_id: index for index, row_id in enumerate(ids)}
    rows = []
    for source in ([path] if path.is_file() else []) + shards:
        rows += [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()]
    keys = [(r["id"], r["model"]) for r in rows]
    if len(set(keys)) != len(keys):
        raise DataError(f"{path} holds an (id, model) pair twice; move the file away to regenerate it")
    if len(keys) != len(MODELS) * len(ids):
        raise DataError(f"{path}: {len(keys)} predictions for {len(ids)} rows x {len(MODELS)} models; rerun generate")
    rows.sort(key=lambda r: (MODELS.index(r["model"]), order[r["id"]]))
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    for shard in shards:
        shard.unlink()
    return rows
