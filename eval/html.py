"""report.html and compare.html: one self-contained file each (inline CSS and JavaScript, no CDN, no server), so a
report opens from file:// and works as a CI artifact.

    render_html(report, rows, per_example)           -> report.html: warnings, run facts, metrics with deltas, 95%
                                                        intervals and p-values, output sanity, regressions, question
                                                        types, per-type tables and deltas, example browser
    render_compare_html(comparison)                  -> compare.html: the reports' warnings, the gate's checks and
                                                        the worst regressed rows

The pages are Jinja2 templates in eval/templates/ (report.html.j2 and compare.html.j2 extend page.html.j2, the CSS
and the script; macros.html.j2 holds what both show); this module computes what they show. Autoescaping is on:
every text from a report, a model or a user is escaped by the environment, none by hand. A report without a
block (3.0) is shown without its section. This module imports nothing of eval.report, which writes report.html
through it.

The example browser is data: JSON in a <script type="application/json"> (Jinja's tojson: <, >, & and ' as \\u
escapes, so no text can close the element or open a comment) drawn by page.html.j2's script with DOM calls and
textContent, so model outputs are never parsed as HTML. Each row is linkable as #row-<id>: opening such a link
scrolls to the row and highlights it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import jinja2

from eval import metrics
from eval.gate_spec import MIN_TYPE_ROWS, REGRESSION_THRESHOLD
from eval.report_view import (MISSING, NO_LABEL, SANITY_SHARES, compared_models, distribution, excludes_zero,
                              per_type_deltas, signed, warned)
from eval.stats import regression_buckets
from pipeline.text import split_label

TEMPLATES = Path(__file__).with_name("templates")
WORST_LINKED = 5  # regressed rows linked per model in the bucket table (all of them are in the example browser)


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def number(value) -> str:
    """A metric's value in a table: four decimals, blank where the report has none or it is not finite."""
    return format(value, ".4f") if finite(value) else ""


def metric_format(name: str) -> str:
    """The format spec of a metric in the narrow tables (eval/metrics.py: .2f for BLEU and chrF, .3f for shares)."""
    return getattr(metrics.metric(name), "format", ".4f")


# StrictUndefined: a key a template misspells is an error, not a blank cell. trim/lstrip_blocks: a {% %} line leaves
# no blank line behind. `x|fmt(spec)` is Python's format(x, spec), as the f-strings before it.
ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined,
                         trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
ENV.policies["json.dumps_kwargs"] = {"ensure_ascii": False, "allow_nan": False}  # tojson: Korean as written, no NaN
ENV.filters.update(fmt=format, signed=signed, number=number)
ENV.tests["finite"] = finite
ENV.globals.update(MISSING=MISSING, SANITY_SHARES=SANITY_SHARES, distribution=distribution, warned=warned,
                   excludes_zero=excludes_zero, metric_format=metric_format)


def render_html(report: dict, rows: dict[str, list[dict]], per_example: dict[str, dict[str, Sequence[float]]], *,
                diff_metric: str | None = None, regression_threshold: float | None = None,
                min_type_rows: int = MIN_TYPE_ROWS) -> str:
    """report.html for a report.json (`report`), its prediction rows per model (as eval.predictions.read_predictions
    gives them: id, input, reference, prediction; aligned across models) and per-example scores
    {metric: {model: one value per row}}; rows regress by `diff_metric` beyond `regression_threshold` (default:
    those of the report's regressions block, else rougeL and REGRESSION_THRESHOLD), and question types with fewer than
    `min_type_rows` rows are marked too few to judge. The sections of the blocks a report lacks are left out."""
    counted = next(iter((report.get("regressions") or {}).values()), {})
    diff_metric = diff_metric or counted.get("metric", "rougeL")
    regression_threshold = (counted.get("threshold", REGRESSION_THRESHOLD) if regression_threshold is None
                            else regression_threshold)
    reference = report["reference"]
    models = [m for m in compared_models(report) if m in rows]
    if diff_metric not in per_example:
        raise ValueError(f"per_example has no {diff_metric!r} (it has {', '.join(per_example) or 'nothing'})")
    base_rows = rows[reference]
    ids = [r["id"] for r in base_rows]
    diffs = per_example[diff_metric]
    buckets = {m: regression_buckets(diffs[reference], diffs[m], regression_threshold, ids)
               for m in models if m != reference}
    bucket_of = {m: {i: name for name in ("regressed", "improved", "unchanged") for i in b[name]["ids"]}
                 for m, b in buckets.items()}
    data = {
        "reference": reference, "models": models, "metrics": list(per_example), "diff_metric": diff_metric,
        "threshold": regression_threshold,
        "rows": [{"id": row["id"], "type": split_label(row["reference"])[0] or NO_LABEL, "input": row["input"],
                  "reference": row["reference"], "outputs": {m: rows[m][i]["prediction"] for m in models},
                  "scores": {m: {name: _number(values[m][i]) for name, values in per_example.items() if m in values}
                             for m in models},
                  "buckets": {m: bucket_of[m][row["id"]] for m in buckets}}
                 for i, row in enumerate(base_rows)],
    }
    tested = list(dict.fromkeys(name for m in models if m != reference for name in report["deltas"].get(m, {})))
    type_deltas = per_type_deltas(report)
    return ENV.get_template("report.html.j2").render(
        report=report, models=models, run=_run_facts(report), data=data, min_type_rows=min_type_rows,
        tested=tested, untested=[name for name in report["metrics"][reference] if name not in tested],
        diff_metric=diff_metric, threshold=regression_threshold, buckets=report.get("regressions") or buckets,
        worst_linked=WORST_LINKED, type_deltas=type_deltas,
        delta_names=list(dict.fromkeys(name for *_, deltas in type_deltas for name in deltas)))


def render_compare_html(comparison: dict, worst: int = 20) -> str:
    """compare.html from plain data (eval/compare.py builds it):
        passed: bool; model: the model compared; baseline, candidate: {"path", "created_at", "commit", "rows",
          optionally "warnings" (the report's, schema 3.1: shown as a banner, the candidate's first)};
        checks: [dataclasses.asdict(Check)]: kind, metric, baseline, candidate, limit (None: an improvement
          check), ok, rule, interval ([lo, hi] or None), optionally sensitivity (None, or {"standard_error",
          "detectable", "visible"}); notes: [str]; optionally failures: [str] (what failed) and power_warnings:
          [str] (the limits below what the rows detect);
        regression: None, or {"metric": name, **regression_buckets(baseline values, candidate values, t, ids)};
        rows: {id: {"input", "reference", "baseline", "candidate", "baseline_score", "candidate_score"}} for at
          least the `worst` first regressed ids;
        optionally type_checks: [dataclasses.asdict(TypeCheck)]: label, rows, metric, baseline, candidate, limit,
          ok, judged (False: fewer rows than min_type_rows, not gated), rule, interval, sensitivity; and
          min_type_rows.
    """
    return ENV.get_template("compare.html.j2").render(comparison=comparison, worst=worst)


def _run_facts(report: dict) -> dict:
    """The run facts that take more than a lookup: the adapters, the decoding, each stage's commit."""
    cfg, gen = report["config"], report["config"]["generate"]
    train = report.get("train")
    adapters = ([f"tuned: LoRA r={cfg['lora']['r']}, alpha {cfg['lora']['alpha']} on "
                 f"{', '.join(train['adapted_modules'])}, {train['steps']} steps"] if train else
                [f"tuned: {report['adapter']}"] if report.get("adapter") else [])
    adapters += [f"{name}: {path}" for name, path in gen.get("adapters", {}).items()]
    sampling = f"sampling, temperature {gen['temperature']}, top_p {gen['top_p']}" if gen["do_sample"] else "greedy"
    decoding = (f"{sampling}; max_new_tokens {gen['max_new_tokens']}; stop "
                f"{json.dumps(gen['stop_strings'], ensure_ascii=False)}; prompt {cfg['prompt']['format']}")
    commits = {name: p["git"] for name, p in report["provenance"].items() if isinstance(p, dict)}
    return {"adapters": adapters, "decoding": decoding, "commits": commits}


def _number(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
