"""One model's pass over its test rows: length-sorted batches (longest first, so an out-of-memory error shows up
at once), each finished batch appended to the predictions file and fsynced, so a crash loses at most the batch in
flight. generate.batch_size=auto starts at generate.max_batch_size and halves it on an out-of-memory error
(accelerate's find_executable_batch_size), keeping the rows already written.

    stats = run_model(model, tokenizer, name, todo, work, out, received)
    append_flushed(out, lines)     # lines of predictions.jsonl (decode.prediction_line), written and fsynced
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from pipeline import batch_size
from pipeline.decode import Decoding, decode_batch, decode_row, decoder, prediction_line
from pipeline.errors import Interrupted, ResourceError, first_line, is_out_of_memory

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
                lines.append(prediction_line(work.rows[row], name, record))
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
            # On CUDA: the rows that fit in free memory (pipeline/batch_size.py); elsewhere max_batch_size.
            sizes = [batch_size.first_try(model, len(work.prompts[remaining[0]]), work.decoding,
                                          work.max_batch_size)]
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
    return {"generated_rows": counts["rows"], "decoder": decoder(model, work.decoding), "batch_size": used,
            "seconds": round(elapsed, 2),
            "rows_per_second": round(counts["rows"] / elapsed, 3),
            "tokens_per_second": round(counts["tokens"] / elapsed, 2)}


def append_flushed(out, lines: list[str]) -> None:
    try:
        out.write("".join(lines))
        out.flush()
        os.fsync(out.fileno())
    except OSError as exc:
        raise ResourceError(f"cannot write {out.name}: {exc.strerror}; the rows written before are intact, "
                            "rerun to continue") from None
