"""report.html and compare.html: one self-contained file each (inline CSS and JavaScript, no CDN, no server), so a
report opens from file:// and works as a CI artifact.

    render_html(report, rows, per_example)           -> report.html: run facts, metrics with deltas, 95% intervals
                                                        and p-values, regressions, per-type table, example browser
    render_compare_html(comparison)                  -> compare.html: the gate's checks and the worst regressed rows
    regression_buckets(ref_values, model_values, threshold, ids) -> rows regressed / improved / unchanged

The static parts are HTML written here (every text escaped); the example browser is data (JSON in a
<script type="application/json">, "<" escaped so that no text can close the element) drawn by the small script in
report_template.html with DOM calls and textContent, so model outputs are never parsed as HTML. Each row is linkable
as #row-<id>: opening such a link scrolls to the row and highlights it.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

from eval.report import compared_models
from pipeline.text import split_label

TEMPLATE_PATH = Path(__file__).with_name("report_template.html")
NO_LABEL = "(no label)"
FLOAT_NOISE = 1e-12  # 0.55 - 0.5 is 0.05000000000000004: a difference of exactly the threshold stays unchanged


def regression_buckets(ref_values: Sequence[float], model_values: Sequence[float], threshold: float,
                       ids: Sequence[str]) -> dict:
    """Rows by the per-example difference model - reference: regressed below -threshold, improved above +threshold,
    unchanged otherwise (a difference of exactly the threshold, float noise aside, is unchanged). Counts and row ids:
    regressed worst first, improved best first, unchanged in row order; ties keep row order."""
    if not (len(ref_values) == len(model_values) == len(ids)):
        raise ValueError(f"{len(ref_values)} reference values, {len(model_values)} model values, {len(ids)} ids")
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, not {threshold}")
    differences = [float(m) - float(r) for r, m in zip(ref_values, model_values)]
    limit = threshold + FLOAT_NOISE
    order = sorted(range(len(ids)), key=lambda i: differences[i])
    regressed = [ids[i] for i in order if differences[i] < -limit]
    improved = [ids[i] for i in sorted(range(len(ids)), key=lambda i: -differences[i]) if differences[i] > limit]
    unchanged = [ids[i] for i in range(len(ids)) if -limit <= differences[i] <= limit]
    return {"threshold": threshold, **{name: {"count": len(bucket), "ids": bucket} for name, bucket in
                                        (("regressed", regressed), ("improved", improved), ("unchanged", unchanged))}}


def render_html(report: dict, rows: dict[str, list[dict]], per_example: dict[str, dict[str, Sequence[float]]], *,
                diff_metric: str = "rougeL", regression_threshold: float = 0.05, min_type_rows: int = 30) -> str:
    """report.html for a report.json (`report`), its prediction rows per model (as eval.score.read_predictions
    gives them: id, input, reference, prediction; aligned across models) and per-example scores
    {metric: {model: one value per row}}; rows regress by `diff_metric` beyond `regression_threshold`, and
    question types with fewer than `min_type_rows` rows are marked too few to judge."""
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
    body = "\n".join([
        f"<h1>Evaluation report</h1><p class=sub>{_e(report['created_at'])} · {report['rows']} test rows · "
        f"reference model <b>{_e(reference)}</b></p>",
        _section("Run", _run_facts(report)),
        _section("Metrics", _metric_tables(report, models)),
        _section(f"Rows that changed ({diff_metric}, threshold ±{regression_threshold:g})",
                 _bucket_table(buckets, reference)),
        _section("By question type", _type_table(report, models, min_type_rows)),
        _section("Examples", BROWSER_CONTROLS),
    ])
    return _page(f"Evaluation report · {report['config']['model']['source']}", body, data)


def render_compare_html(comparison: dict, worst: int = 20) -> str:
    """compare.html from plain data (eval/compare.py builds it):
        passed: bool; model: the model compared; baseline, candidate: {"path", "created_at", "commit", "rows"};
        checks: [dataclasses.asdict(Check)]: kind, metric, baseline, candidate, limit, ok, rule, interval ([lo, hi]
          or None); notes: [str];
        regression: None, or {"metric": name, **regression_buckets(baseline values, candidate values, t, ids)};
        rows: {id: {"input", "reference", "baseline", "candidate", "baseline_score", "candidate_score"}} for at
          least the `worst` first regressed ids;
        optionally type_checks: [dataclasses.asdict(TypeCheck)]: label, rows, metric, baseline, candidate, limit,
          ok, judged (False: fewer rows than min_type_rows, not gated), rule, interval; and min_type_rows.
    """
    verdict = "PASSED" if comparison["passed"] else "FAILED"
    facts = [(which, f"{_e(side['path'])} · {side['rows']} rows · {_e(side['created_at'])} · commit "
                     f"<code>{_e((side.get('commit') or 'unknown')[:12])}</code>")
             for which, side in (("baseline", comparison["baseline"]), ("candidate", comparison["candidate"]))]
    checks = ["<table><tr><th>check</th><th>baseline</th><th>candidate</th><th>change</th><th>95% interval</th>"
              "<th>limit</th><th>rule</th><th>result</th></tr>"]
    for c in comparison["checks"]:
        interval = f"[{c['interval'][0]:+.4f}, {c['interval'][1]:+.4f}]" if c.get("interval") else "n/a"
        result = "ok" if c["ok"] else ("REGRESSED" if c["kind"] == "drop" else "FAILED")
        checks.append(f"<tr class={'ok' if c['ok'] else 'bad'}><td>{_e(c['metric'])} "
                      f"{'drop' if c['kind'] == 'drop' else 'vs base'}</td><td>{c['baseline']:.4f}</td>"
                      f"<td>{c['candidate']:.4f}</td><td>{c['candidate'] - c['baseline']:+.4f}</td><td>{interval}</td>"
                      f"<td>{c['limit']:.4f}</td><td>{_e(c['rule'])}</td><td>{result}</td></tr>")
    checks.append("</table>" + "".join(f"<p class=note>{_e(n)}</p>" for n in comparison["notes"]))
    parts = [f"<h1>Regression gate: <span class={'ok' if comparison['passed'] else 'bad'}>{verdict}</span></h1>"
             f"<p class=sub>model <b>{_e(comparison['model'])}</b>, candidate against baseline</p>",
             _section("Reports", _facts(facts)), _section("Checks", "".join(checks))]
    if comparison.get("type_checks"):
        types = ["<table id=type-checks><tr><th>question type</th><th>rows</th><th>metric</th><th>baseline</th>"
                 "<th>candidate</th><th>change</th><th>95% interval</th><th>limit</th><th>result</th></tr>"]
        for c in comparison["type_checks"]:
            interval = f"[{c['interval'][0]:+.4f}, {c['interval'][1]:+.4f}]" if c.get("interval") else "n/a"
            result = ("ok" if c["ok"] else "REGRESSED") if c["judged"] else \
                f"too few rows to judge (&lt; {comparison['min_type_rows']})"
            kind = ("ok" if c["ok"] else "bad") if c["judged"] else "few"
            types.append(f"<tr class={kind}><td>{_e(c['label'])}</td><td>{c['rows']}</td><td>{_e(c['metric'])}</td>"
                         f"<td>{c['baseline']:.4f}</td><td>{c['candidate']:.4f}</td>"
                         f"<td>{c['candidate'] - c['baseline']:+.4f}</td><td>{interval}</td><td>{c['limit']:.4f}</td>"
                         f"<td{' class=few' if kind == 'few' else ''}>{result}</td></tr>")
        parts.append(_section(f"By question type (rule {comparison['type_checks'][0]['rule']})",
                              "".join(types) + "</table>"))
    regression = comparison.get("regression")
    if regression:
        metric, shown = regression["metric"], regression["regressed"]["ids"][:worst]
        counts = ", ".join(f"{regression[b]['count']} {b}" for b in ("regressed", "improved", "unchanged"))
        items = [f"<p>Per-example {_e(metric)}, candidate − baseline, threshold ±{regression['threshold']:g}: "
                 f"{counts}." + (f" The {len(shown)} worst regressed rows:" if shown else "") + "</p>"]
        for row_id in shown:
            row = comparison["rows"][row_id]
            items.append(
                f"<article class=row id=\"row-{_e(row_id)}\"><h3><a href=\"#row-{_e(quote(row_id))}\">{_e(row_id)}</a>"
                f" <span class=diff>{row['candidate_score'] - row['baseline_score']:+.4f}</span></h3>"
                f"<dl><dt>input</dt><dd>{_e(row['input'])}</dd><dt>reference</dt><dd>{_e(row['reference'])}</dd>"
                f"<dt>baseline <small>{row['baseline_score']:.4f}</small></dt><dd>{_e(row['baseline'])}</dd>"
                f"<dt>candidate <small>{row['candidate_score']:.4f}</small></dt><dd>{_e(row['candidate'])}</dd>"
                "</dl></article>")
        parts.append(_section("Regressed rows", "".join(items)))
    return _page(f"Regression gate · {verdict}", "\n".join(parts), None)


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
    values = {"title": _e(title), "body": body, "data": payload}  # one pass: no inserted text is searched again
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
    commit_text = ", ".join(f"{name} <code>{_e((git['commit'] or 'unknown')[:12])}</code>"
                            f"{' (dirty)' if git['dirty'] else ''}" for name, git in commits.items())
    if not report["provenance"]["same_commit"]:
        commit_text += " <b class=bad>stages ran from different commits</b>"
    settings = report["metric_settings"]
    return _facts([
        ("models", _e(", ".join(report["models"]))),
        ("base model", f"<code>{_e(cfg['model']['source'])}</code>"),
        ("adapters", _e("; ".join(adapters)) or "none"),
        ("data", f"<code>{_e(cfg['data']['source'] or '')}</code>"),
        ("decoding", _e(decoding)),
        ("test set", f"{report['test_set']['rows']} rows, sha256 <code>{_e(report['test_set']['sha256'][:16])}</code>"),
        ("metrics", f"tokenize {_e(settings['tokenize'])}, fingerprint <code>{_e(settings['fingerprint'])}</code>"),
        ("commit", commit_text),
    ])


def _metric_tables(report: dict, models: list[str]) -> str:
    reference, others = report["reference"], [m for m in models if m != report["reference"]]
    tested = list(dict.fromkeys(name for m in others for name in report["deltas"].get(m, {})))
    head = (f"<tr><th>metric</th><th>{_e(reference)}</th>" +
            "".join(f"<th>{_e(m)}</th><th>Δ vs {_e(reference)} [95% interval]</th><th>p</th>" for m in others) +
            "</tr>")

    def rows(names: list[str]) -> str:
        out = []
        for name in names:
            cells = [f"<td>{_value(report['metrics'][reference].get(name))}</td>"]
            for m in others:
                value, delta = report["metrics"][m].get(name), report["deltas"].get(m, {}).get(name)
                if delta:
                    clear = delta["ci95_low"] > 0 or delta["ci95_high"] < 0
                    cells.append(f"<td>{_value(value)}</td><td class={'clear' if clear else 'unclear'}>"
                                 f"{delta['delta']:+.4f} [{delta['ci95_low']:+.4f}, {delta['ci95_high']:+.4f}]</td>"
                                 f"<td>{delta['p_value']:.3f}</td>")
                else:
                    change = (f"{value - report['metrics'][reference][name]:+.4f}"
                              if _finite(value) and _finite(report['metrics'][reference].get(name)) else "")
                    cells.append(f"<td>{_value(value)}</td><td>{change}</td><td></td>")
            out.append(f"<tr><td>{_e(name)}</td>{''.join(cells)}</tr>")
        return "".join(out)

    rest = [n for n in report["metrics"][reference] if n not in tested]
    return (f"<p class=note>Paired bootstrap over the same rows; bold: the interval excludes 0. p is one-sided: the "
            f"share of resamples in which the model is not better than {_e(reference)}.</p>"
            f"<table id=metric-table>{head}{rows(tested)}</table>"
            f"<details><summary>all {len(rest)} other metrics</summary><table>{head}{rows(rest)}</table></details>")


def _bucket_table(buckets: dict, reference: str) -> str:
    if not buckets:
        return "<p>Only one model: nothing to compare.</p>"
    head = "<tr><th>model vs " + _e(reference) + "</th><th>regressed</th><th>improved</th><th>unchanged</th></tr>"
    return "<table id=bucket-table>" + head + "".join(
        f"<tr><td>{_e(m)}</td>" + "".join(f"<td>{b[name]['count']}</td>" for name in ("regressed", "improved",
                                                                                    "unchanged")) + "</tr>"
        for m, b in buckets.items()) + "</table>"


def _type_table(report: dict, models: list[str], min_type_rows: int) -> str:
    reference = report["reference"]
    head = ("<tr><th>type</th><th>rows</th>" + "".join(f"<th>{_e(m)} ROUGE-L</th><th>{_e(m)} type acc.</th>"
                                                       for m in models) + "<th></th></tr>")
    out = []
    for label, base in report["per_type"][reference].items():
        few = base["rows"] < min_type_rows
        cells = "".join(f"<td>{report['per_type'][m][label]['rougeL']:.4f}</td>"
                        f"<td>{report['per_type'][m][label]['type_accuracy']:.3f}</td>" for m in models)
        mark = f"<td class=few>too few rows to judge (&lt; {min_type_rows})</td>" if few else "<td></td>"
        out.append(f"<tr class={'few' if few else 'enough'}><td>{_e(label)}</td><td>{base['rows']}</td>{cells}{mark}"
                   "</tr>")
    return f"<table id=type-table>{head}{''.join(out)}</table>"


def _section(title: str, content: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{content}</section>"


def _facts(pairs: list[tuple[str, str]]) -> str:
    return "<dl class=facts>" + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _value(value) -> str:
    return f"{value:.4f}" if _finite(value) else ""


def _number(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
