"""report.html and compare.html: one self-contained file each (inline CSS and JavaScript, no CDN, no server), so a
report opens from file:// and works as a CI artifact.

    render_html(report, rows, per_example)           -> report.html: warnings, run facts, metrics with deltas, 95%
                                                        intervals and p-values, output sanity, regressions, question
                                                        types, per-type tables and deltas, example browser
    render_compare_html(comparison)                  -> compare.html: the reports' warnings, the gate's checks and
                                                        the worst regressed rows

The sections made from schema 3.1's blocks are eval/html_sections.py's; a report without a block (3.0) is shown
without its section. This module imports nothing of eval.report, which writes report.html through it.

The static parts are HTML (every text escaped); the example browser is data (JSON in a
<script type="application/json">, "<" escaped so that no text can close the element) drawn by the small script in
report_template.html with DOM calls and textContent, so model outputs are never parsed as HTML. Each row is linkable
as #row-<id>: opening such a link scrolls to the row and highlights it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

from eval.gate_spec import REGRESSION_THRESHOLD
from eval.html_sections import (bucket_table, esc, facts, finite, sanity_table, section, semantic_fact,
                                type_delta_table, types_tables, value_text, warnings_banner)
from eval.gate_spec import MIN_TYPE_ROWS
from eval.report_view import NO_LABEL, compared_models, signed
from eval.stats import regression_buckets
from pipeline.text import split_label

TEMPLATE_PATH = Path(__file__).with_name("report_template.html")


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
    body = "\n".join(filter(None, [
        f"<h1>Evaluation report</h1><p class=sub>{esc(report['created_at'])} · {report['rows']} test rows · "
        f"reference model <b>{esc(reference)}</b></p>",
        warnings_banner(report.get("warnings")),
        section("Run", _run_facts(report)),
        section("Metrics", _metric_tables(report, models)),
        section("Output sanity", sanity_table(report)),
        section(f"Rows that changed ({diff_metric}, threshold ±{regression_threshold:g})",
                bucket_table(report.get("regressions") or buckets, reference)),
        section("Question types", types_tables(report)),
        section("By question type", _type_table(report, models, min_type_rows)),
        section("Change by question type", type_delta_table(report, min_type_rows)),
        section("Examples", BROWSER_CONTROLS),
    ]))
    return _page(f"Evaluation report · {report['config']['model']['source']}", body, data)


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
    verdict = "PASSED" if comparison["passed"] else "FAILED"
    sides = [(which, f"{esc(side['path'])} · {side['rows']} rows · {esc(side['created_at'])} · commit "
                     f"<code>{esc((side.get('commit') or 'unknown')[:12])}</code>")
             for which, side in (("baseline", comparison["baseline"]), ("candidate", comparison["candidate"]))]
    checks = ["<table><tr><th>check</th><th>baseline</th><th>candidate</th><th>change</th><th>95% interval</th>"
              "<th>limit</th><th>se</th><th>detectable</th><th>rule</th><th>result</th></tr>"]
    for c in comparison["checks"]:
        result = "ok" if c["ok"] else ("REGRESSED" if c["kind"] == "drop" else "FAILED")
        power = _power_cells(c.get("sensitivity")) if c["kind"] == "drop" else "<td>—</td><td>—</td>"
        checks.append(f"<tr class={'ok' if c['ok'] else 'bad'}><td>{esc(c['metric'])} "
                      f"{'drop' if c['kind'] == 'drop' else 'vs base'}</td><td>{c['baseline']:.4f}</td>"
                      f"<td>{c['candidate']:.4f}</td><td>{signed(c['candidate'] - c['baseline'])}</td>"
                      f"<td>{_interval(c.get('interval'))}</td>"
                      f"<td>{'—' if c['limit'] is None else format(c['limit'], '.4f')}</td>{power}"
                      f"<td>{esc(c['rule'])}</td><td>{result}</td></tr>")
    checks.append("</table>" + "".join(f"<p class='note bad'>limit below what the rows detect: {esc(w)}</p>"
                                       for w in comparison.get("power_warnings", ()))
                  + "".join(f"<p class=note>{esc(n)}</p>" for n in comparison["notes"]))
    failures = "" if comparison["passed"] else "".join(f"<li>{esc(f)}</li>" for f in comparison.get("failures", ()))
    parts = [f"<h1>Regression gate: <span class={'ok' if comparison['passed'] else 'bad'}>{verdict}</span></h1>"
             f"<p class=sub>model <b>{esc(comparison['model'])}</b>, candidate against baseline</p>"
             + (f"<ul class=bad id=failures>{failures}</ul>" if failures else ""),
             *(warnings_banner(comparison[which].get("warnings"), f" in the {which} report")
               for which in ("candidate", "baseline")),
             section("Reports", facts(sides)), section("Checks", "".join(checks))]
    if comparison.get("type_checks"):
        types = ["<table id=type-checks><tr><th>question type</th><th>rows</th><th>metric</th><th>baseline</th>"
                 "<th>candidate</th><th>change</th><th>95% interval</th><th>limit</th><th>se</th><th>detectable</th>"
                 "<th>result</th></tr>"]
        for c in comparison["type_checks"]:
            result = ("ok" if c["ok"] else "REGRESSED") if c["judged"] else \
                f"too few rows to judge (&lt; {comparison['min_type_rows']})"
            kind = ("ok" if c["ok"] else "bad") if c["judged"] else "few"
            types.append(f"<tr class={kind}><td>{esc(c['label'])}</td><td>{c['rows']}</td><td>{esc(c['metric'])}</td>"
                         f"<td>{c['baseline']:.4f}</td><td>{c['candidate']:.4f}</td>"
                         f"<td>{signed(c['candidate'] - c['baseline'])}</td><td>{_interval(c.get('interval'))}</td>"
                         f"<td>{c['limit']:.4f}</td>{_power_cells(c.get('sensitivity'))}"
                         f"<td{' class=few' if kind == 'few' else ''}>{result}</td></tr>")
        parts.append(section(f"By question type (rule {comparison['type_checks'][0]['rule']})",
                              "".join(types) + "</table>"))
    regression = comparison.get("regression")
    if regression:
        metric, shown = regression["metric"], regression["regressed"]["ids"][:worst]
        counts = ", ".join(f"{regression[b]['count']} {b}" for b in ("regressed", "improved", "unchanged"))
        items = [f"<p>Per-example {esc(metric)}, candidate − baseline, threshold ±{regression['threshold']:g}: "
                 f"{counts}." + (f" The {len(shown)} worst regressed rows:" if shown else "") + "</p>"]
        for row_id in shown:
            row = comparison["rows"][row_id]
            items.append(
                f"<article class=row id=\"row-{esc(row_id)}\"><h3><a href=\"#row-{esc(quote(row_id))}\">{esc(row_id)}</a>"
                f" <span class=diff>{row['candidate_score'] - row['baseline_score']:+.4f}</span></h3>"
                f"<dl><dt>input</dt><dd>{esc(row['input'])}</dd><dt>reference</dt><dd>{esc(row['reference'])}</dd>"
                f"<dt>baseline <small>{row['baseline_score']:.4f}</small></dt><dd>{esc(row['baseline'])}</dd>"
                f"<dt>candidate <small>{row['candidate_score']:.4f}</small></dt><dd>{esc(row['candidate'])}</dd>"
                "</dl></article>")
        parts.append(section("Regressed rows", "".join(items)))
    return _page(f"Regression gate · {verdict}", "\n".join(filter(None, parts)), None)


def _interval(interval) -> str:
    return f"[{signed(interval[0])}, {signed(interval[1])}]" if interval else "n/a"


def _power_cells(sensitivity: dict | None) -> str:
    """The standard error of the change and the smallest drop caught, red where the limit is below it."""
    if not sensitivity:
        return "<td>n/a</td><td>n/a</td>"
    return (f"<td>{sensitivity['standard_error']:.4f}</td><td{'' if sensitivity['visible'] else ' class=bad'}>"
            f"{sensitivity['detectable']:.4f}</td>")


BROWSER_CONTROLS = """<div class=controls>
<label>type <select id=type-filter><option value="">all types</option></select></label>
<label>model <select id=model-filter></select></label>
<label>rows <select id=bucket-filter><option value="">all</option><option value=regressed>regressed</option>
<option value=improved>improved</option><option value=unchanged>unchanged</option></select></label>
<label><input type=checkbox id=differ-filter> outputs differ from the reference model's</label>
<label>sort <select id=sort><option value=row>row order</option><option value=diff-asc>difference, worst first
</option><option value=diff-desc>difference, best first</option></select></label>
<span id=shown-count></span></div><div id=rows></div><button id=more hidden>show more</button>"""


def _page(title: str, body: str, data: dict | None) -> str:
    payload = "" if data is None else (
        '<script type="application/json" id="report-data">' + _json_for_script(data) + "</script>")
    values = {"title": esc(title), "body": body, "data": payload}  # one pass: no inserted text is searched again
    return re.sub(r"\{\{(title|body|data)\}\}", lambda m: values[m.group(1)],
                  TEMPLATE_PATH.read_text(encoding="utf-8"))


def _json_for_script(data: dict) -> str:
    """JSON that cannot end its <script> element or open a comment: <, > and & as \\u escapes (still valid JSON)."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _run_facts(report: dict) -> str:
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
    commit_text = ", ".join(f"{name} <code>{esc((git['commit'] or 'unknown')[:12])}</code>"
                            f"{' (dirty)' if git['dirty'] else ''}" for name, git in commits.items())
    if not report["provenance"]["same_commit"]:
        commit_text += " <b class=bad>stages ran from different commits</b>"
    settings = report["metric_settings"]
    return facts([
        ("models", esc(", ".join(report["models"]))),
        ("base model", f"<code>{esc(cfg['model']['source'])}</code>"),
        ("adapters", esc("; ".join(adapters)) or "none"),
        ("data", f"<code>{esc(cfg['data']['source'] or '')}</code>"),
        ("decoding", esc(decoding)),
        ("test set", f"{report['test_set']['rows']} rows, sha256 <code>{esc(report['test_set']['sha256'][:16])}</code>"),
        ("metrics", f"tokenize {esc(settings['tokenize'])}, fingerprint <code>{esc(settings['fingerprint'])}</code>"),
        ("commit", commit_text),
        *semantic_fact(report.get("semantic")),
    ])


def _metric_tables(report: dict, models: list[str]) -> str:
    reference, others = report["reference"], [m for m in models if m != report["reference"]]
    tested = list(dict.fromkeys(name for m in others for name in report["deltas"].get(m, {})))
    head = (f"<tr><th>metric</th><th>{esc(reference)}</th>" +
            "".join(f"<th>{esc(m)}</th><th>Δ vs {esc(reference)} [95% interval]</th><th>p</th>" for m in others) +
            "</tr>")

    def rows(names: list[str]) -> str:
        out = []
        for name in names:
            cells = [f"<td>{value_text(report['metrics'][reference].get(name))}</td>"]
            for m in others:
                value, delta = report["metrics"][m].get(name), report["deltas"].get(m, {}).get(name)
                if delta:
                    clear = delta["ci95_low"] > 0 or delta["ci95_high"] < 0
                    cells.append(f"<td>{value_text(value)}</td><td class={'clear' if clear else 'unclear'}>"
                                 f"{delta['delta']:+.4f} [{delta['ci95_low']:+.4f}, {delta['ci95_high']:+.4f}]</td>"
                                 f"<td>{delta['p_value']:.3f}</td>")
                else:
                    change = (f"{value - report['metrics'][reference][name]:+.4f}"
                              if finite(value) and finite(report['metrics'][reference].get(name)) else "")
                    cells.append(f"<td>{value_text(value)}</td><td>{change}</td><td></td>")
            out.append(f"<tr><td>{esc(name)}</td>{''.join(cells)}</tr>")
        return "".join(out)

    rest = [n for n in report["metrics"][reference] if n not in tested]
    return (f"<p class=note>Paired bootstrap over the same rows; bold: the interval excludes 0. p is one-sided: the "
            f"share of resamples in which the model is not better than {esc(reference)}.</p>"
            f"<table id=metric-table>{head}{rows(tested)}</table>"
            f"<details><summary>all {len(rest)} other metrics</summary><table>{head}{rows(rest)}</table></details>")


def _type_table(report: dict, models: list[str], min_type_rows: int) -> str:
    reference = report["reference"]
    head = ("<tr><th>type</th><th>rows</th>" + "".join(f"<th>{esc(m)} ROUGE-L</th><th>{esc(m)} type acc.</th>"
                                                       for m in models) + "<th></th></tr>")
    out = []
    for label, base in report["per_type"][reference].items():
        few = base["rows"] < min_type_rows
        cells = "".join(f"<td>{report['per_type'][m][label]['rougeL']:.4f}</td>"
                        f"<td>{report['per_type'][m][label]['type_accuracy']:.3f}</td>" for m in models)
        mark = f"<td class=few>too few rows to judge (&lt; {min_type_rows})</td>" if few else "<td></td>"
        out.append(f"<tr class={'few' if few else 'enough'}><td>{esc(label)}</td><td>{base['rows']}</td>{cells}{mark}"
                   "</tr>")
    return f"<table id=type-table>{head}{''.join(out)}</table>"


def _number(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
