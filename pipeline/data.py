"""Data sources: a Hub dataset id, or local jsonl/csv/parquet files, loaded through `datasets`.

Every split comes back with the columns `id` ("test:17", stable across runs), `input` and `target`, and is
validated before any work starts: a bad row is reported with its file, split, row number and column.
Row numbers are 1-based rows of the file (for jsonl, the line number), ids are 0-based indices of the split.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import DataConfig
from pipeline.errors import DataError, ResourceError, is_offline_error

if TYPE_CHECKING:  # imported where used: the score stage and split_label need none of its ~80 MB
    import datasets

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
LABEL_PATTERN = re.compile(r"^\s*\(([^()]+)\)\s*")


def split_label(text: str) -> tuple[str | None, str]:
    """'(다른 관점 생각하기) 질문?' -> ('다른 관점 생각하기', '질문?'); no leading label -> (None, text)."""
    match = LABEL_PATTERN.match(text)
    if not match:
        return None, text.strip()
    return match.group(1).strip(), text[match.end():].strip()


def load_split(cfg: DataConfig, split: str, token: str | None = None, limit: int | None = None) -> datasets.Dataset:
    """One validated split with columns id/input/target; `limit` keeps the first N rows."""
    import datasets

    path = local_split_path(cfg, split)
    where = str(path) if path else f"{cfg.source} (Hub)"
    if path is not None:
        if path.suffix == ".jsonl":
            _check_jsonl(path, split, (cfg.input_column, cfg.target_column))
        try:
            dataset = datasets.load_dataset(BUILDERS[path.suffix], data_files={split: str(path)}, split=split)
        except Exception as exc:  # pyarrow/csv parser errors carry no row number; this is the best we know
            raise DataError(f"{path} (split {split}): cannot be read: {_first_line(exc)}") from None
    else:
        dataset = _load_hub_split(cfg, split, token)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    _validate(dataset, cfg, split, where)
    dataset = dataset.select_columns([cfg.input_column, cfg.target_column])
    if cfg.input_column != "input":
        dataset = dataset.rename_column(cfg.input_column, "input")
    if cfg.target_column != "target":
        dataset = dataset.rename_column(cfg.target_column, "target")
    ids = [f"{split}:{i}" for i in range(len(dataset))]
    return dataset.add_column("id", ids).select_columns(["id", "input", "target"])


def local_split_path(cfg: DataConfig, split: str) -> Path | None:
    """The file for `split`, or None when the source is a Hub id. Missing local files are a DataError."""
    explicit = getattr(cfg, f"{split}_path")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise DataError(f"data.{split}_path: file not found: {path}")
        if path.suffix not in BUILDERS:
            raise DataError(f"data.{split}_path: {path} must end in one of {', '.join(BUILDERS)}")
        return path
    source = Path(cfg.source).expanduser()
    if source.is_dir():
        candidates = [source / f"{split}{ext}" for ext in BUILDERS if (source / f"{split}{ext}").is_file()]
        if not candidates:
            raise DataError(f"data.source: {source} has no {split} file ({', '.join(split + e for e in BUILDERS)})")
        return candidates[0]
    if source.is_file() or cfg.source.startswith((".", "/", "~")) or source.suffix in BUILDERS:
        raise DataError(f"data.source: {source} is not a directory of split files (missing or a single file; "
                        f"give per-split files with data.train_path / data.validation_path / data.test_path)")
    return None


def label_counts(dataset: datasets.Dataset) -> Counter:
    return Counter(split_label(t)[0] or "(no label)" for t in dataset["target"])


def warn_on_overlap(splits: dict[str, datasets.Dataset]) -> dict[str, int]:
    """Counts inputs shared between splits (leakage); logs a warning per pair and returns the counts."""
    names = list(splits)
    overlap = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = len(set(splits[a]["input"]) & set(splits[b]["input"]))
            if shared:
                overlap[f"{a}/{b}"] = shared
                log.warning("%d inputs appear in both %s and %s: scores on %s may be inflated", shared, a, b, b)
    return overlap


def _load_hub_split(cfg: DataConfig, split: str, token: str | None) -> datasets.Dataset:
    import datasets

    try:
        return datasets.load_dataset(cfg.source, split=split, revision=cfg.revision, token=token)
    except Exception as exc:
        if is_offline_error(exc):
            raise ResourceError(f"cannot load dataset {cfg.source!r} from the Hub: the Hub is unreachable "
                                "(offline?); download it where there is network and set data.source to a local "
                                "directory of train/validation/test files") from None
        raise ResourceError(f"cannot load split {split!r} of dataset {cfg.source!r}: {_first_line(exc)}") from None


def _check_jsonl(path: Path, split: str, columns: tuple[str, str]) -> None:
    """datasets reports a malformed or mistyped jsonl line without its number; check each line ourselves."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                raise DataError(f"{path} (split {split}) row {number}: blank line")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} (split {split}) row {number}: malformed JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path} (split {split}) row {number}: expected a JSON object, "
                                f"got {type(row).__name__}")
            for column in columns:
                problem = _value_problem(row.get(column))
                if problem:
                    raise DataError(f"{path} (split {split}) row {number}: column {column!r} {problem}")


def _validate(dataset: datasets.Dataset, cfg: DataConfig, split: str, where: str) -> None:
    if len(dataset) == 0:
        raise DataError(f"{where} (split {split}): the split is empty")
    for column in (cfg.input_column, cfg.target_column):
        if column not in dataset.column_names:
            raise DataError(f"{where} (split {split}): required column {column!r} is missing "
                            f"(columns: {', '.join(dataset.column_names)}; set data.input_column/target_column)")
        for index, value in enumerate(dataset[column]):
            problem = _value_problem(value)
            if problem:
                raise DataError(f"{where} (split {split}) row {index + 1}: column {column!r} {problem}")


def _value_problem(value) -> str | None:
    if value is None:
        return "is missing or null"
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__} {value!r:.40}"
    if not value.strip():
        return "is empty or whitespace only"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
