"""Score stage: predictions.jsonl -> report.json / report.md / report.png.

    score(cfg, output_dir) -> <output>/report.json

Metrics per model on the same rows, tuned-minus-base deltas with paired-bootstrap intervals, a per-type table
and ten example rows. The report records what is needed to rerun it: the resolved config and its hash, package
versions, the git commit, the hardware and each stage's wall time.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from eval import metrics
from eval.report import SCHEMA_VERSION, write_report
from pipeline.config import Config, to_dict
from pipeline.errors import DataError, ResourceError
from pipeline.stage import STAGE_SECTIONS, config_hash, package_versions

log = logging.getLogger(__name__)


def score(cfg: Config, output_dir: Path) -> Path:
    output_dir = Path(output_dir)
    report_path = output_dir / "report.json"
    digest = config_hash(cfg, STAGE_SECTIONS["score"])
    if report_path.is_file() and json.loads(report_path.read_text(encoding="utf-8")).get("config_hash") == digest:
        log.info("score: %s is up to date, skipping", report_path)
        return report_path
    started = time.perf_counter()
    train_summary = _read_json(output_dir / "train" / "train_summary.json", "train")
    generate_summary = _read_json(output_dir / "generate" / "generate_summary.json", "generate")
    rows = paired_rows(output_dir / "generate" / "predictions.jsonl")
    references = [r["reference"] for r in rows["base"]]
    predictions = {model: [r["prediction"] for r in model_rows] for model, model_rows in rows.items()}

    per_model, per_type = {}, {}
    for model, preds in predictions.items():
        per_model[model] = metrics.all_metrics(preds, references)
        per_model[model]["hit_max_new_tokens_rate"] = float(np.mean([r["hit_max_new_tokens"] for r in rows[model]]))
        per_type[model] = metrics.per_type(preds, references)
    deltas = metrics.paired_bootstrap(predictions["base"], predictions["tuned"], references,
                                      cfg.score.bootstrap_samples, cfg.score.seed)
    picks = np.linspace(0, len(references) - 1, num=min(cfg.score.num_examples, len(references))).round()
    examples = [{"id": rows["base"][i]["id"], "input": rows["base"][i]["input"], "reference": references[i],
                 "base": predictions["base"][i], "tuned": predictions["tuned"][i]} for i in sorted(set(picks.astype(int)))]

    report = {
        "schema_version": SCHEMA_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": to_dict(cfg),
        "config_hash": digest,
        "packages": package_versions(),
        "git": git_state(),
        "hardware": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                     "accelerator": generate_summary.get("device_name", generate_summary.get("device"))},
        "stage_seconds": {"train": train_summary.get("wall_seconds"), "generate": generate_summary.get("wall_seconds"),
                          "score": None},
        "rows": len(references),
        "metrics": per_model,
        "deltas": deltas,
        "per_type": per_type,
        "signatures": metrics.signatures(predictions["tuned"], references),
        "train": {k: train_summary.get(k) for k in ("steps", "loss_curve", "validation_loss", "trainable_parameters",
                                                      "adapted_modules", "examples_per_second", "tokens_per_second",
                                                      "peak_memory")},
        "generate": {k: generate_summary.get(k) for k in ("models", "prompts_truncated", "max_new_tokens",
                                                         "batch_size", "peak_memory")},
        "examples": examples,
    }
    report["stage_seconds"]["score"] = round(time.perf_counter() - started, 1)
    write_report(report, output_dir)
    log.info("score: %s", report_path)
    return report_path


def paired_rows(path: Path) -> dict[str, list[dict]]:
    """Base and tuned rows, aligned by id, in the file's (original) order."""
    if not path.is_file():
        raise ResourceError(f"no predictions in {path}: run the generate stage first")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    by_model = {"base": [r for r in rows if r["model"] == "base"], "tuned": [r for r in rows if r["model"] == "tuned"]}
    if not by_model["base"] or [r["id"] for r in by_model["base"]] != [r["id"] for r in by_model["tuned"]]:
        raise DataError(f"{path}: base and tuned predictions do not cover the same rows; rerun generate")
    return by_model


def git_state() -> dict:
    """The commit this code came from ($GIT_COMMIT in a container without .git) and whether it had edits."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, check=True).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": os.environ.get("GIT_COMMIT"), "dirty": None}


def _read_json(path: Path, stage: str) -> dict:
    if not path.is_file():
        raise ResourceError(f"{path} is missing: run the {stage} stage first")
    return json.loads(path.read_text(encoding="utf-8"))
