"""Data sources: a Hub dataset id (through `datasets`), or local jsonl/csv/parquet files read here.

Every split comes back as plain rows {"id": "test:17", "input": ..., "target": ...} (ids stable across runs),
validated before any work starts: a bad row is reported with its file, split, row number and column, and all
text is NFC-normalized (pipeline/text.py), so NFD and NFC copies of a dataset are the same data.

A run uses up to data.max_<split>_samples rows of each split, chosen by data.sample (sample_split): the first N
(the default), a seeded uniform sample, or a sample stratified by question type. The chosen ids enter the stages'
hashes through fingerprint(), so another sample is never taken for the one a stage already made.

Row numbers: jsonl, the line of the file; csv, the data row (the header is row 0) and its line; parquet and the
Hub, the 1-based row. Ids are 0-based indices of the split.

Local files are read here rather than by `datasets`, whose parsers cannot say which line is bad and reject what
people produce every day: a UTF-8 byte-order mark, a trailing blank line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections import Counter
from pathlib import Path

from pipeline.config import DataConfig
from pipeline.errors import ConfigError, DataError, first_line, hub_error
from pipeline.text import normalize, question_type, with_label

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SUFFIXES = (".jsonl", ".csv", ".parquet")


def load_split(cfg: DataConfig, split: str, token: str | None = None, limit: int | None = None) -> list[dict]:
    """One validated split as rows {id, input, target}, failing on its first bad row; `limit` keeps the first N
    rows (and reads no further)."""
    rows = []
    for row, problem in _checked_rows(cfg, split, token):
        if problem:
            raise DataError(problem)
        rows.append(row)
        if len(rows) == limit:
            break
    return rows


def check_split(cfg: DataConfig, split: str, token: str | None = None) -> tuple[list[dict], list[str]]:
    """Every row of a split validated, for `data check`: the good rows and one message per bad row (a split that
    cannot be read at all, one message)."""
    rows, problems = [], []
    try:
        for row, problem in _checked_rows(cfg, split, token):
            if problem:
                problems.append(problem)
            else:
                rows.append(row)
    except DataError as exc:
        problems.append(str(exc))
    return rows, problems


def load_splits(cfg: DataConfig, token: str | None, names: tuple[str, ...] = SPLITS) -> dict[str, list[dict]]:
    """The splits `names`, each validated and cut to its data.max_<split>_samples as data.sample says."""
    return {split: sample_split(cfg, split, token) for split in names}


def sample_split(cfg: DataConfig, split: str, token: str | None = None) -> list[dict]:
    """The rows of `split` a run uses: data.max_<split>_samples of them chosen by data.sample (`first` reads no
    further than it keeps; `random` and `stratified` read and validate the whole split to choose)."""
    limit = getattr(cfg, f"max_{split}_samples")
    if cfg.sample == "first":
        return load_split(cfg, split, token, limit)
    return subset(cfg, split, load_split(cfg, split, token))


def subset(cfg: DataConfig, split: str, rows: list[dict]) -> list[dict]:
    """The rows of a whole split that data.max_<split>_samples and data.sample keep, in the split's order.

    random and stratified rank rows by sha256(seed:id), not by a random generator: the same seed and ids choose
    the same rows on every machine and Python version, and a larger limit keeps every row a smaller one chose."""
    limit = getattr(cfg, f"max_{split}_samples")
    if limit is None or limit >= len(rows):
        return rows
    if cfg.sample == "first":
        return rows[:limit]
    seed = str(cfg.sample_seed).encode()
    ranked = sorted(range(len(rows)), key=lambda i: hashlib.sha256(seed + b":" + rows[i]["id"].encode()).digest())
    if cfg.sample == "random":
        return [rows[i] for i in sorted(ranked[:limit])]
    groups: dict[str, list[int]] = {}
    for i in ranked:
        groups.setdefault(question_type(rows[i]["target"]), []).append(i)
    if limit < len(groups):
        raise ConfigError(f"data.max_{split}_samples: {limit} rows cannot hold one of each of the {len(groups)} "
                          f"question types of the {split} split (data.sample=stratified); keep at least "
                          f"{len(groups)}, or set data.sample=random")
    sizes = stratum_sizes({label: len(indices) for label, indices in groups.items()}, limit)
    return [rows[i] for i in sorted(i for label, indices in groups.items() for i in indices[:sizes[label]])]


def stratum_sizes(counts: dict[str, int], n: int) -> dict[str, int]:
    """How many of `n` rows each group gets so that the subset keeps the groups' proportions: the floor of each
    quota n * count / total, the rows left over to the largest remainders (ties: the larger group, then the name),
    then one row to every group still without one, each taken from the group most over its quota. Exact integer
    arithmetic; needs n >= len(counts)."""
    total = sum(counts.values())
    sizes = {label: n * count // total for label, count in counts.items()}
    by_remainder = sorted(counts, key=lambda label: (-(n * counts[label] % total), -counts[label], label))
    for label in by_remainder[:n - sum(sizes.values())]:
        sizes[label] += 1
    for label in [label for label in by_remainder if sizes[label] == 0]:
        donor = min((d for d in sizes if sizes[d] > 1),
                    key=lambda d: (-(sizes[d] * total - n * counts[d]), -counts[d], d))
        sizes[donor] -= 1
        sizes[label] = 1
    return sizes


# What generation reads of a row: an edited target (reference) changes no prediction.
INPUT_FIELDS = ("id", "input")


def fingerprint(rows: list[dict], fields: tuple[str, ...] = ("id", "input", "target")) -> dict:
    """The rows by content: how many, and a sha256 over their ids, inputs and targets (or `fields`) in order, as
    validated and NFC-normalized (no second read of any file). A report's test_set is this hash of the rows it
    scored; generation depends on INPUT_FIELDS only."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row[field] for field in fields], ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return {"rows": len(rows), "sha256": digest.hexdigest()}


def local_split_path(cfg: DataConfig, split: str) -> Path | None:
    """The file for `split`, or None when the source is a Hub id. Missing local files are a DataError."""
    explicit = getattr(cfg, f"{split}_path")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise DataError(f"data.{split}_path: file not found: {path}")
        if path.suffix not in SUFFIXES:
            raise DataError(f"data.{split}_path: {path} must end in one of {', '.join(SUFFIXES)}")
        return path
    source = Path(cfg.source).expanduser()
    if source.is_dir():
        candidates = [source / f"{split}{ext}" for ext in SUFFIXES if (source / f"{split}{ext}").is_file()]
        if not candidates:
            raise DataError(f"data.source: {source} has no {split} file ({', '.join(split + e for e in SUFFIXES)})")
        return candidates[0]
    if source.is_file() or cfg.source.startswith((".", "/", "~")) or source.suffix in SUFFIXES:
        raise DataError(f"data.source: {source} is not a directory of split files (missing or a single file; "
                        f"give per-split files with data.train_path / data.validation_path / data.test_path)")
    return None


def label_counts(rows: list[dict]) -> Counter:
    return Counter(question_type(row["target"]) for row in rows)


def warn_on_overlap(splits: dict[str, list[dict]]) -> dict[str, int]:
    """Counts inputs shared between splits (leakage); logs a warning per pair and returns the counts."""
    names = list(splits)
    overlap = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = len({r["input"] for r in splits[a]} & {r["input"] for r in splits[b]})
            if shared:
                overlap[f"{a}/{b}"] = shared
                log.warning("%d inputs appear in both %s and %s: scores on %s may be inflated", shared, a, b, b)
    return overlap


# --- reading: each yields (place, row) with the place a row is reported by --------------------------------------

class Unreadable(str):
    """A reader's message in place of a row it could not parse (malformed JSON, a csv row whose fields do not
    match the header), so that the rows after it are still read and checked."""


def _checked_rows(cfg: DataConfig, split: str, token: str | None):
    """(row, None) for each valid row of a split and (None, message) for each bad one, the message naming file,
    split, row and column; a split without rows is one message. A file that cannot be read raises DataError."""
    path = local_split_path(cfg, split)
    columns = [c for c in (cfg.input_column, cfg.target_column, cfg.label_column) if c]
    if path is None:
        where, numbered = f"{cfg.source} (Hub, split {split})", _hub_rows(cfg, split, token, columns)
    else:
        where, numbered = f"{path} (split {split})", _file_rows(path, split)
    index = -1
    for index, (place, raw) in enumerate(numbered):
        problem = _row_problem(raw, columns)
        if problem:
            yield None, f"{where} {place}: {problem}"
            continue
        values = {column: normalize(raw[column]) for column in columns}
        target = values[cfg.target_column]
        if cfg.label_column:
            target = with_label(values[cfg.label_column], target)
        yield {"id": f"{split}:{index}", "input": values[cfg.input_column], "target": target}, None
    if index < 0:
        yield None, f"{where}: the split has no rows"


def _row_problem(raw, columns: list[str]) -> str | None:
    if isinstance(raw, Unreadable):
        return raw
    if not isinstance(raw, dict):
        return f"expected an object with named columns, got {type(raw).__name__}"
    for column in columns:
        if column not in raw:
            return (f"column {column!r} is missing (columns: {', '.join(raw)}; set data.input_column / "
                    "target_column / label_column)")
        problem = _value_problem(raw[column])
        if problem:
            return f"column {column!r} {problem}"
    return None


def _file_rows(path: Path, split: str):
    where = f"{path} (split {split})"
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{where}: cannot be read: {exc.strerror}") from None
    if path.suffix == ".parquet":
        return _parquet_rows(content, where)
    text = _decode(content, where)
    return _csv_rows(text) if path.suffix == ".csv" else _jsonl_rows(text)


def _decode(content: bytes, where: str) -> str:
    """UTF-8 text without a leading byte-order mark; a bad byte is reported with its line."""
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = content.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{where} line {line}: not valid UTF-8 (byte 0x{content[exc.start]:02x} at offset "
                        f"{exc.start}); re-save the file as UTF-8") from None


def _jsonl_rows(text: str):
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():  # blank lines, a trailing newline, \r\n endings
            continue
        try:
            yield f"row {number}", json.loads(line)
        except json.JSONDecodeError as exc:
            yield f"row {number}", Unreadable(f"malformed JSON: {exc}")


def _csv_rows(text: str):
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        return
    for number, fields in enumerate(reader, start=1):
        if not any(field.strip() for field in fields):
            continue
        if len(fields) != len(header):
            yield f"row {number} (line {reader.line_num})", Unreadable(
                f"{len(fields)} fields where the header has {len(header)} ({', '.join(header)})")
        else:
            yield f"row {number}", dict(zip(header, fields))


def _parquet_rows(content: bytes, where: str):
    import pyarrow
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.read_table(pyarrow.BufferReader(content))
    except pyarrow.ArrowException as exc:
        raise DataError(f"{where}: cannot be read as parquet: {first_line(exc)}") from None
    for index, row in enumerate(table.to_pylist()):
        yield f"row {index + 1}", row


def _hub_rows(cfg: DataConfig, split: str, token: str | None, columns: list[str]):
    import datasets

    try:
        dataset = datasets.load_dataset(cfg.source, split=split, revision=cfg.revision, token=token)
    except Exception as exc:
        raise hub_error(exc, f"data.source: cannot load split {split!r} of dataset {cfg.source!r}",
                        "download it where there is network and set data.source to a local directory of "
                        "train/validation/test files") from None
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise DataError(f"{cfg.source} (Hub, split {split}): column {missing[0]!r} is missing (columns: "
                        f"{', '.join(dataset.column_names)}; set data.input_column / target_column / label_column)")
    for index, row in enumerate(dataset.select_columns(columns).to_list()):
        yield f"row {index + 1}", row


def _value_problem(value) -> str | None:
    if value is None:
        return "is missing or null"
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__} {value!r:.40}"
    if not value.strip():
        return "is empty or whitespace only"
    return None
