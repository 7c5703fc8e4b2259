"""Reading predictions.jsonl (the generate stage's rows): the one place the score stage and the gate read them.

    read_predictions(path)                        -> {model: rows}, base first, every model's rows aligned by id
    predictions_of(report, report_path, given)    -> the predictions file a report was scored from, or None
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import data
from pipeline.errors import ConfigError, DataError
from pipeline.identity import file_sha256


def read_predictions(path: Path) -> dict[str, list[dict]]:
    """Rows per model (base first, then the file's order), each model's rows aligned with base's by id."""
    if not path.is_file():
        raise ConfigError(f"no predictions in {path}: run the generate stage first")
    by_model: dict[str, list[dict]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
            by_model.setdefault(row["model"], []).append(row)
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{path} line {number} is not a prediction row") from None
    if "base" not in by_model:
        raise DataError(f"{path} has no base-model rows; rerun generate")
    ids = [r["id"] for r in by_model["base"]]
    for name, model_rows in by_model.items():
        if [r["id"] for r in model_rows] != ids:
            raise DataError(f"{path}: model {name!r} does not cover the same rows as base; rerun generate")
    return {"base": by_model.pop("base"), **by_model}


def predictions_of(report: dict, report_path: Path, given: Path | None) -> Path | None:
    """The report's predictions.jsonl: `given`, or where the report says (relative to the report), if its hash
    still matches and its references are the ones the report was scored against; None when it is not there."""
    path = Path(given) if given else Path(report_path).parent / report["predictions"]["path"]
    if not path.is_file():
        return None
    if file_sha256(path) != report["predictions"]["sha256"]:
        raise DataError(f"{path} is not the predictions file {report_path} was scored from (its sha256 differs)")
    # The score stage reads references from the data: after an edited reference was rescored, the references that
    # generation wrote into the file are not the report's, and pairing its rows would score them against old ones.
    if data.fingerprint(read_predictions(path)["base"], ("id", "input", "reference"))["sha256"] != \
            report["test_set"]["sha256"]:
        raise DataError(f"the references in {path} are not those {report_path} was scored against (a reference was "
                        "edited and rescored): compare with --unpaired, or regenerate the predictions")
    return path
