"""The generate stage's predictions.jsonl, one JSON row per (test row, model), and the shard of each process of a
data-parallel run: what is already written (a rerun resumes there, whatever process count wrote it; a torn last
line left by a hard kill counts as not written), and the merge into one file in (model, original row) order, so
that an interrupted-and-resumed run ends with the same bytes as an uninterrupted one.

    done = read_done(stage_dir, own_file)       rows = merge_predictions(path, ids, names)
    summarize(rows, per_model, names) -> per model: rows, hit-max rate, mean new tokens, and this run's rates
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.atomic import write_text_atomic
from pipeline.errors import DataError

log = logging.getLogger(__name__)


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
