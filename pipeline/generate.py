"""Generate stage: a question for every test row, from the base model and from each adapter of the run.

    generate(cfg, output_dir) -> <output>/generate/{predictions.jsonl, generate_summary.json}

The base model is loaded once. Its rows come first; then each adapter (pipeline/adapters.py: the tuned one, any
generate.adapters, training checkpoints with score.checkpoints) is merged into the same weights in turn and
taken out again bit for bit. Prompts are the training prompts, token for token.

Rows are generated in batches sorted by prompt length (less padding), appended and fsynced batch by batch, so a
crash loses at most the batch in flight; a rerun skips the (id, model) pairs already written. At the end the
file is rewritten in (model, original row) order, so an interrupted-and-resumed run ends with the same bytes as
an uninterrupted one. generate.batch_size=auto starts at generate.max_batch_size and halves it on an
out-of-memory error (accelerate's find_executable_batch_size), keeping the rows already written.

Data parallel: under torchrun (or accelerate launch), on one node or several, each process takes every N-th row
and writes its own shard file; the main process merges the shards in the original order into one file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pipeline import adapters as adapters_module
from pipeline import attention, batch_size, data, identity, models, sources
from pipeline.config import Config
from pipeline.decode import Decoding, decode_batch, decode_row, decoder
from pipeline.errors import DataError, Interrupted, ResourceError, first_line, is_out_of_memory
from pipeline.prompt import STYLES, fit_inputs
from pipeline.stage import (claim_stage_dir, inputs_hash, peak_memory, process_state, recorded_hash, stop_on_signal,
                            write_json_atomic, write_text_atomic)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Work:
    """What one model's pass generates: the test rows, their prompt ids, how to decode, and in what batches."""

    rows: list[dict]
    prompts: list[list[int]]
    decoding: Decoding
    batch_size: int | str  # or "auto"
    max_batch_size: int
    seed: int


def generate(cfg: Config, output_dir: Path) -> Path:
    stage_dir = Path(output_dir) / "generate"
    predictions_path, summary_path = stage_dir / "predictions.jsonl", stage_dir / "generate_summary.json"
    started = time.perf_counter()
    state = process_state()  # one process, or one of N under torchrun

    # --- setup: everything checked before the first row is generated ----------------------------------------
    test = data.sample_split(cfg.data, "test", sources.hf_token(cfg.model))
    with state.local_main_process_first():  # one process per node converts the embedded model
        source = sources.model_source(cfg.model)
    adapters, inputs = identity.generate_inputs(cfg, output_dir, test, source)  # by content: rows, model, adapters
    digest = inputs_hash(inputs)
    if summary_path.is_file() and recorded_hash(stage_dir) == digest:
        log.info("generate: already finished in %s from the same inputs, skipping", stage_dir)
        return stage_dir
    source = identity.pinned(source, inputs["model"])
    tokenizer = models.load_tokenizer(cfg.model, source)
    model = models.load_model(cfg.model, source, device=state.device).eval()
    for adapter in adapters:
        adapters_module.check(adapter, model, cfg)
    with state.main_process_first():  # only now: a run that fails its checks leaves earlier predictions in place
        claim_stage_dir(stage_dir, "generate", inputs)
    prompts, truncated = prompt_ids(tokenizer, test, cfg)
    work = Work(rows=test, prompts=prompts, decoding=decoding(tokenizer, cfg), batch_size=cfg.generate.batch_size,
                max_batch_size=cfg.generate.max_batch_size, seed=cfg.generate.seed)
    used = decoder(model, work.decoding)  # the loop only for a family whose spec has it (pipeline/families.py)
    log.info("generate: decoding %s (model type %s) with %s", cfg.model.source, model.config.model_type, used)
    shard_path = predictions_path if state.num_processes == 1 else (
        stage_dir / f"predictions.rank{state.process_index}-of-{state.num_processes}.jsonl")
    done = read_done(stage_dir, shard_path)  # whatever process count wrote them
    state.wait_for_everyone()  # every process has read the files before any appends to its own
    mine = range(state.process_index, len(test), state.num_processes)

    # --- generate: the base model, then each adapter merged into the same weights -----------------------------
    per_model, names = {}, ["base"] + [a.name for a in adapters]
    with stop_on_signal() as received, shard_path.open("a", encoding="utf-8") as out:
        for adapter in [None] + adapters:
            name = adapter.name if adapter else "base"
            todo = [i for i in mine if (test[i]["id"], name) not in done]
            if not todo:
                per_model[name] = {"generated_rows": 0}
                continue
            if adapter is None:
                per_model[name] = run_model(model, tokenizer, name, todo, work, out, received)
            else:
                with adapters_module.merged(model, adapter) as tuned:
                    per_model[name] = run_model(tuned, tokenizer, name, todo, work, out, received)
            if work.batch_size == "auto":  # the next model starts from the size that fit
                work = dataclasses.replace(work, max_batch_size=per_model[name]["batch_size"])
        out.close()
        state.wait_for_everyone()
        # --- save: the files merged in the original order, then the summary (its presence marks the end) ------
        if state.is_main_process:
            rows = merge_predictions(predictions_path, [row["id"] for row in test], names)
            write_json_atomic(summary_path, {
                "inputs_hash": digest, "rows": len(test), "models": summarize(rows, per_model, names),
                "processes": state.num_processes, "device": state.device.type,
                "dtype": str(model.dtype).removeprefix("torch."),
                "model_type": model.config.model_type, "decoder": used, "attention": attention.describe(model),
                "prompts_truncated": truncated, "resumed_rows": len(done),
                "max_new_tokens": cfg.generate.max_new_tokens,
                "batch_size": next((s["batch_size"] for s in reversed(per_model.values()) if "batch_size" in s), None),
                "batch_size_setting": cfg.generate.batch_size, "wall_seconds": round(time.perf_counter() - started, 1),
                "peak_memory": peak_memory(), "provenance": identity.provenance()})
            log.info("generate: %d rows x %d models in %.0f s -> %s", len(test), len(names),
                     time.perf_counter() - started, predictions_path)
        state.wait_for_everyone()
    if received:  # it came after the last batch (merging, saving): the stage is done, the run stops here
        raise Interrupted(received[0], "stopped after the generate stage finished: rerun the same command to continue")
    return stage_dir


def prompt_ids(tokenizer, test: list[dict], cfg: Config) -> tuple[list[list[int]], int]:
    """Each row's prompt ids, exactly as training tokenized its prompts; and how many inputs had to be cut."""
    style = STYLES[cfg.prompt.format]
    fitted, truncated = fit_inputs(tokenizer, [row["input"] for row in test], style, cfg.generate.max_prompt_tokens,
                                   "generate.max_prompt_tokens")
    return [style.prompt_ids(tokenizer, text) for text in fitted], truncated


def decoding(tokenizer, cfg: Config) -> Decoding:
    """How rows are decoded and where they stop: the prompt style's stop tokens, generate.stop_strings (the
    style's unless set) and the generate settings."""
    gen = cfg.generate
    return Decoding(max_new_tokens=gen.max_new_tokens, stop_ids=STYLES[cfg.prompt.format].stop_ids(tokenizer),
                    stop_strings=gen.stop_strings, pad_id=tokenizer.pad_token_id, do_sample=gen.do_sample,
                    temperature=gen.temperature, top_p=gen.top_p, decoder=gen.decoder)


def run_model(model, tokenizer, name: str, todo: list[int], work: Work, out, received: list[int]) -> dict:
    """Generates rows `todo` in length-sorted batches, appending each finished batch to `out`; stops after the
    batch in flight when a signal has been `received`. With batch_size auto, an out-of-memory error halves the
    batch and the rows not yet written are retried."""
    from accelerate.utils import find_executable_batch_size

    remaining = sorted(todo, key=lambda i: (-len(work.prompts[i]), i))  # longest first: an OOM shows up at once
    started, counts = time.perf_counter(), {"rows": 0, "tokens": 0}
    if work.decoding.do_sample:
        torch.manual_seed(work.seed)  # sampling draws from torch's global stream (model.generate)
    bar = tqdm(total=len(remaining), desc=f"generate {name}", unit="row")

    def batches(batch_size: int) -> int:
        while remaining:
            batch = remaining[:batch_size]
            outputs = decode_batch(model, tokenizer, [work.prompts[i] for i in batch], work.decoding)
            lines = []
            for row, generated in zip(batch, outputs):
                record = decode_row(tokenizer, generated, work.decoding)
                counts["tokens"] += record["new_tokens"]
                source = work.rows[row]
                lines.append(json.dumps({"id": source["id"], "model": name, "input": source["input"],
                                         "reference": source["target"], **record}, ensure_ascii=False) + "\n")
            append_flushed(out, lines)
            del remaining[:len(batch)]
            counts["rows"] += len(batch)
            bar.update(len(batch))
            if received:
                raise Interrupted(received[0], f"generate interrupted; the rows written so far are kept in "
                                               f"{out.name}: rerun the same command to continue")
        return batch_size

    try:
        if work.batch_size == "auto":
            sizes = [batch_size.first_try(model, len(work.prompts[remaining[0]]), work.decoding, work.max_batch_size)]
            used = find_executable_batch_size(batches, starting_batch_size=sizes[0],
                                              reduce_batch_size_fn=lambda: sizes.append(sizes[-1] // 2) or sizes[-1])()
            if len(sizes) > 1:
                log.info("generate %s: batch size %d fits (tried %s)", name, used, ", ".join(map(str, sizes)))
        else:
            used = batches(work.batch_size)
    except RuntimeError as exc:
        if work.batch_size == "auto" and "No executable batch size" in str(exc):
            raise ResourceError("out of memory while generating even one row at a time: lower "
                                "generate.max_prompt_tokens or generate.max_new_tokens, or use a larger GPU") from None
        if not is_out_of_memory(exc):
            raise
        raise ResourceError(f"out of memory while generating at generate.batch_size={work.batch_size}: lower it, "
                            f"or set generate.batch_size=auto to find the size that fits ({first_line(exc)})") from None
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    log.info("generate %s: %d rows, %d new tokens in %.1f s", name, counts["rows"], counts["tokens"], elapsed)
    return {"generated_rows": counts["rows"], "batch_size": used, "seconds": round(elapsed, 2),
            "rows_per_second": round(counts["rows"] / elapsed, 3),
            "tokens_per_second": round(counts["tokens"] / elapsed, 2)}


def summarize(rows: list[dict], per_model: dict, names: list[str]) -> dict:
    """Per model: rows, hit-max rate and mean new tokens over all rows; generated rows, batch size, time and rates
    of this run (the main process's share when there are several)."""
    summary = {}
    for name in names:
        model_rows = [r for r in rows if r["model"] == name]
        summary[name] = {
            **per_model[name], "rows": len(model_rows),
            "hit_max_new_tokens_rate": round(sum(r["hit_max_new_tokens"] for r in model_rows) / len(model_rows), 4),
            "mean_new_tokens": round(sum(r["new_tokens"] for r in model_rows) / len(model_rows), 2),
        }
    return summary


def append_flushed(out, lines: list[str]) -> None:
    try:
        out.write("".join(lines))
        out.flush()
        os.fsync(out.fileno())
    except OSError as exc:
        raise ResourceError(f"cannot write {out.name}: {exc.strerror}; the rows written before are intact, "
                            "rerun to continue") from None


def read_done(stage_dir: Path, own: Path) -> set[tuple[str, str]]:
    """(id, model) pairs already written, in predictions.jsonl or any process's shard (a rerun may use another
    process count). A torn last line (a crash mid-write) counts as not written, in every file; it is cut off this
    process's own file, which is appended to next."""
    done = set()
    for path in prediction_files(stage_dir):
        rows, torn = complete_rows(path)
        if torn and path == own:
            log.warning("generate: dropping a torn last line of %s", path)
            with path.open("r+b") as handle:
                handle.truncate(path.stat().st_size - torn)
        done.update((row["id"], row["model"]) for row in rows)
    if done:
        log.info("generate: resuming, %d rows already in %s", len(done), stage_dir)
    return done


def complete_rows(path: Path) -> tuple[list[dict], int]:
    """The prediction rows of a file that may have been left by a hard kill, and the length in bytes of its torn
    last line (0 if none). Any other line that is not a prediction row is a DataError naming it."""
    content = path.read_bytes()
    complete = content[: content.rfind(b"\n") + 1]
    rows = []
    for number, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or "id" not in row or "model" not in row:
            raise DataError(f"{path} line {number} is not a prediction row; move the file away to regenerate it")
        rows.append(row)
    return rows, len(content) - len(complete)


def prediction_files(stage_dir: Path) -> list[Path]:
    return sorted(stage_dir.glob("predictions*.jsonl"))


def merge_predictions(path: Path, ids: list[str], names: list[str]) -> list[dict]:
    """Rewrites predictions.jsonl atomically from itself and every shard, in (model, original row) order, each
    (id, model) pair once (a pair in two files, after a crash between the rewrite and the shards' removal, is the
    same row: the first is kept); checks that every pair is there; then removes the shards."""
    order, rows = {row_id: index for index, row_id in enumerate(ids)}, {}
    files = prediction_files(path.parent)
    for source in files:
        for row in complete_rows(source)[0]:  # a torn line in another process count's shard was regenerated
            rows.setdefault((row["id"], row["model"]), row)
    if set(rows) != {(row_id, name) for row_id in ids for name in names}:
        raise DataError(f"{path}: {len(rows)} predictions for {len(ids)} rows x {len(names)} models; rerun generate")
    merged = sorted(rows.values(), key=lambda r: (names.index(r["model"]), order[r["id"]]))
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in merged))
    for shard in files:
        if shard != path:
            shard.unlink()
    return merged
