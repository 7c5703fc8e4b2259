"""The sections of report.html and compare.html made from the report's 3.1 blocks, and the HTML helpers both pages
use (eval/html.py assembles the pages).

    warnings_banner(warnings)            the sanity warnings, above everything else
    semantic_fact(semantic)              the semantic metric: on or off, why, what it cost
    sanity_table(report)                 the outputs' sanity counters per model, cells past a warning's limit red
    bucket_table(buckets, reference)     rows regressed / improved / unchanged per model, the worst linked
    types_tables(report)                 type accuracy and macro-F1 against the baselines; predicted types
    type_delta_table(report, min_rows)   each type's paired change against the reference, with its row count

Each returns "" (its section left out) for a report without the block: a 3.0 report renders without them. Every
text from the report is escaped here.
"""

from __future__ import annotations

import html
import math
from urllib.parse import quote

from eval import metrics
from eval.report_view import MISSING, SANITY_SHARES, distribution, excludes_zero, per_type_deltas, warned

WORST_LINKED = 5  # regressed rows linked per model in the bucket table (all of them are in the example browser)


def warnings_banner(warnings: list[dict] | None, whose: str = "") -> str:
    if not warnings:
        return ""
    items = "".join(f"<li><b>{esc(w['model'])}</b>: {esc(w['message'])} <small>({esc(w['kind'])} {w['value']:.1%}, "
                    f"limit {w['limit']:.0%})</small></li>" for w in warnings)
    return (f"<div class=warnings id=warnings role=alert><b>Warnings{esc(whose)}</b>: the metrics below may look "
            f"fine while the outputs are not. <ul>{items}</ul></div>")


def semantic_fact(semantic: dict | None) -> list[tuple[str, str]]:
    """The run-facts line of the semantic block; none for a report without one."""
    if not semantic:
        return []
    if semantic["enabled"]:
        seconds = f" in {semantic['seconds']:.1f} s" if semantic.get("seconds") is not None else ""
        state = (f"<b>on</b>: <code>{esc(semantic['model'])}</code> ({esc(semantic['backend'])}), "
                 f"{semantic['texts']:,} distinct texts embedded{seconds}. Compressed range: unrelated sentences "
                 "still score about 0.8 and degenerate outputs score high; read it with the sanity table.")
    else:
        state = "<b>off</b>."
    return [("semantic metric", f"{state} <span class=note>{esc(semantic['reason'])}</span>")]


def sanity_table(report: dict) -> str:
    sanity = report.get("sanity")
    if not sanity:
        return ""
    flagged = warned(report)
    head = ("<tr><th>model</th>" + "".join(f"<th>{esc(title)}</th>" for _, title in SANITY_SHARES) +
            "<th>length vs reference</th><th class=text>most repeated output</th></tr>")
    out = []
    for model, values in sanity.items():
        cells = "".join(f"<td{' class=bad' if (model, key) in flagged else ''}>{_share(values.get(key))}</td>"
                        for key, _ in SANITY_SHARES)
        out.append(f"<tr><td>{esc(model)}</td>{cells}<td>{values['length_ratio']:.2f}×</td>"
                   f"{_most_common(values['most_common_output'])}</tr>")
    return ("<p class=note>Shares of the test rows. A model that repeats the reference model's outputs, or one text "
            "for many rows, can still score well on overlap and semantic metrics; red: past a warning's limit.</p>"
            f"<table id=sanity-table>{head}{''.join(out)}</table>")


def bucket_table(buckets: dict, reference: str) -> str:
    """{model: {"threshold", "regressed"/"improved"/"unchanged": {"count", "ids"}}} as counts, with links to the
    worst regressed rows."""
    if not buckets:
        return "<p>Only one model: nothing to compare.</p>"
    head = (f"<tr><th>model vs {esc(reference)}</th><th>regressed</th><th>improved</th><th>unchanged</th>"
            "<th>worst regressed</th></tr>")
    rows = []
    for model, b in buckets.items():
        links = " ".join(f"<a href=\"#row-{esc(quote(row_id))}\">{esc(row_id)}</a>"
                         for row_id in b["regressed"]["ids"][:WORST_LINKED])
        rows.append(f"<tr><td>{esc(model)}</td>" + "".join(f"<td>{b[name]['count']}</td>" for name in (
            "regressed", "improved", "unchanged")) + f"<td class=text>{links}</td></tr>")
    return f"<table id=bucket-table>{head}{''.join(rows)}</table>"


def types_tables(report: dict) -> str:
    types = report.get("types")
    if not types:
        return ""
    majority = types["majority_baseline"]
    head = "<tr><th>model</th><th>type accuracy</th><th>macro-F1</th><th></th></tr>"
    rows = "".join(
        f"<tr><td>{esc(model)}</td><td>{v['accuracy']:.3f}</td><td>{v['macro_f1']:.3f}</td>"
        + ("<td class=few>below the majority baseline</td>" if v["accuracy"] < majority else "<td></td>") + "</tr>"
        for model, v in types["models"].items())
    models = list(types["models"])
    spread = "".join(f"<tr><td>{esc(label)}</td><td>{reference}</td>" + "".join(
        f"<td{' class=bad' if predicted[m] and not reference else ''}>{predicted[m]}</td>" for m in models) + "</tr>"
        for label, reference, predicted in distribution(report))
    return (f"<p class=note>Baselines: always predicting the most frequent type ({esc(types['majority_label'])}) is "
            f"right on {majority:.1%} of the rows; guessing uniformly among {len(types['labels'])} types, "
            f"{types['chance_baseline']:.1%}. Macro-F1: the mean over the reference's types of each type's F1.</p>"
            f"<table id=types-table>{head}{rows}</table>"
            "<h3>Predicted types against the reference texts'</h3>"
            f"<table id=type-distribution><tr><th>type</th><th>reference rows</th>"
            + "".join(f"<th>{esc(m)} predicted</th>" for m in models) + f"</tr>{spread}</table>")


def type_delta_table(report: dict, min_type_rows: int) -> str:
    table = per_type_deltas(report)
    if not table:
        return ""
    names = list(dict.fromkeys(name for _, _, _, deltas in table for name in deltas))
    head = ("<tr><th>model</th><th class=text>type</th><th>rows</th>" + "".join(
        f"<th>Δ {esc(name)} <small>[95%] p</small></th>" for name in names) + "<th></th></tr>")
    out = []
    for model, label, rows, deltas in table:
        few = rows < min_type_rows
        cells = "".join(_delta_cell(name, deltas.get(name)) for name in names)
        mark = f"<td class=few>too few rows to judge (&lt; {min_type_rows})</td>" if few else "<td></td>"
        out.append(f"<tr class={'few' if few else 'enough'}><td>{esc(model)}</td><td class=text>{esc(label)}</td>"
                   f"<td>{rows}</td>"
                   f"{cells}{mark}</tr>")
    return (f"<p class=note>Each type's change against {esc(report['reference'])}, a paired bootstrap over that type's "
            "rows alone: a small type gets the wide interval it deserves. Bold: the interval excludes 0.</p>"
            f"<table id=type-deltas>{head}{''.join(out)}</table>")


def _delta_cell(name: str, delta: dict | None) -> str:
    if not delta:
        return f"<td>{MISSING}</td>"
    spec = getattr(metrics.metric(name), "format", ".4f")
    return (f"<td class={'clear' if excludes_zero(delta) else 'unclear'}>{delta['delta']:+{spec}}<br><small>"
            f"[{delta['ci95_low']:+{spec}}, {delta['ci95_high']:+{spec}}] p {delta['p_value']:.3f}</small></td>")


def _most_common(common: dict) -> str:
    if common["count"] < 2:
        return "<td class=text><small>no output repeats</small></td>"
    text = common["text"] if len(common["text"]) <= 60 else common["text"][:59] + "…"
    return (f"<td class=text title=\"{esc(common['text'])}\">{esc(text) or '(empty)'} <small>× {common['count']}"
            "</small></td>")


def _share(value) -> str:
    return MISSING if value is None else f"{value:.1%}"


def section(title: str, content: str) -> str:
    """A titled section; none when it has no content (a block the report lacks)."""
    return f"<section><h2>{esc(title)}</h2>{content}</section>" if content else ""


def facts(pairs: list[tuple[str, str]]) -> str:
    return "<dl class=facts>" + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def value_text(value) -> str:
    return f"{value:.4f}" if finite(value) else ""
