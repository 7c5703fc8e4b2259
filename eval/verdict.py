"""The regression gate's verdict (eval/compare.py decides it) and how it is shown.

    format_verdict(verdict)                  # plain-text tables for a terminal or a CI log
    format_verdict(verdict, markdown=True)   # the same as Markdown, for $GITHUB_STEP_SUMMARY or a pull request
    compare_html(verdict)                    # compare.html (eval/html.py's render_compare_html)

Every format shows the checks with each limit's sensitivity (the standard error of the change and the smallest
drop the rows catch; a warning line where the limit is below it), the per-type checks ("too few rows to judge"
below --min-type-rows), the headline metrics not gated ("—" where a report lacks one), the rows by their ROUGE-L
change with the worst regressed ids (Markdown and HTML with their texts), the notes, and the verdict: PASSED, or
FAILED naming the failing checks. Each column means one thing: an improvement check (vs base) has no limit; its
p-value test is its rule.
"""

from __future__ import annotations

import unicodedata
from dataclasses import asdict, dataclass, field

from eval import metrics
from eval.html import render_compare_html
from eval.report_view import MISSING, cell, change, signed
from eval.stats import Sensitivity

LISTED_ROWS = 10  # the worst regressed rows the text and Markdown summaries list (compare.html: all kept)


@dataclass(frozen=True)
class Check:
    kind: str  # "drop": the gate on a metric; "improvement": --require-improvement
    metric: str
    baseline: float
    candidate: float
    limit: float | None  # the allowed drop; None for an improvement check (its test is in `rule`)
    ok: bool
    rule: str  # point, significant, non-inferior; or the significance test of --require-improvement
    interval: tuple[float, float] | None = None
    sensitivity: Sensitivity | None = None  # with the rows paired: what the limit can see (eval/stats.py)


@dataclass(frozen=True)
class TypeCheck:
    """The gate on one metric of one question type (--max-drop-per-type)."""

    label: str  # the reference's "(type)" label
    rows: int
    metric: str
    baseline: float
    candidate: float
    limit: float
    ok: bool  # True for a type not judged
    judged: bool  # False: fewer rows than --min-type-rows
    rule: str
    interval: tuple[float, float] | None = None
    sensitivity: Sensitivity | None = None


@dataclass
class Verdict:
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # The headline metrics not gated, for context: (metric, the baseline model's metrics, the candidate's).
    ungated: list[tuple[str, dict, dict]] = field(default_factory=list)
    type_checks: list[TypeCheck] = field(default_factory=list)
    min_type_rows: int = 0
    model: str = ""
    # Each report's path, created_at, commit, rows and schema version, for compare.html.
    reports: dict[str, dict] = field(default_factory=dict)
    # With the rows paired: eval/paired.py's regressions(), and the texts of the worst regressed rows (worst first).
    regression: dict | None = None
    regressed_rows: dict[str, dict] = field(default_factory=dict)
    # The candidate report's warnings about the gated model (eval/sanity.py), shown always; with
    # --fail-on-warnings (fail_on_warnings) any of them fails the gate.
    warnings: list[dict] = field(default_factory=list)
    fail_on_warnings: bool = False
    allowed_warnings: tuple[str, ...] = ()  # kinds shown but never failing (--allow-warning)

    @property
    def passed(self) -> bool:
        return not self.failures()

    def failures(self) -> list[str]:
        """What failed the gate, one phrase each: the checks (a type's with its label) and the warnings when
        --fail-on-warnings gates them."""
        found = [f"{check_name(c)} {result_text(c)}" for c in self.checks if not c.ok]
        found += [f"{c.metric} of {c.label} REGRESSED" for c in self.type_checks if not c.ok]
        failing = [w for w in self.warnings if w["kind"] not in self.allowed_warnings]
        if self.fail_on_warnings and failing:
            found.append(f"{len(failing)} warning{'s' * (len(failing) > 1)} (--fail-on-warnings)")
        return found

    def verdict_line(self) -> str:
        return "PASSED" if self.passed else f"FAILED: {'; '.join(self.failures())}"

    def warning_lines(self) -> list[str]:
        def result(warning: dict) -> str:
            if warning["kind"] in self.allowed_warnings:
                return f"not gated (--allow-warning {warning['kind']})"
            return "FAILED (--fail-on-warnings)" if self.fail_on_warnings else "not gated (--fail-on-warnings gates it)"

        return [f"WARNING in the candidate report: {w['message']}: {result(w)}" for w in self.warnings]

    def power_warnings(self) -> list[str]:
        """A line per limit below what its rows can detect (overall, and per judged question type)."""
        found = [c.sensitivity.warning(c.metric) for c in self.checks if c.sensitivity and not c.sensitivity.visible]
        found += [c.sensitivity.warning(f"{c.metric} of {c.label}") for c in self.type_checks
                  if c.judged and c.sensitivity and not c.sensitivity.visible]
        return found


def check_name(check: Check) -> str:
    worse = "drop" if metrics.metric(check.metric).direction == metrics.HIGHER else "rise"
    return f"{check.metric} {worse if check.kind == 'drop' else 'vs base'}"


def result_text(check: Check) -> str:
    return "ok" if check.ok else ("REGRESSED" if check.kind == "drop" else "FAILED")


def number(value: float | None) -> str:
    return MISSING if value is None else f"{value:.4f}"


def power_cells(sensitivity: Sensitivity | None) -> list[str]:
    """The standard error of the change and the smallest drop caught ("n/a" without paired rows)."""
    if sensitivity is None:
        return ["n/a", "n/a"]
    mark = "*" if sensitivity.changes else ""  # from another pair's changes: the warning line says whose
    return [f"{sensitivity.standard_error:.4f}{mark}", f"{sensitivity.detectable:.4f}{mark}"]


def format_verdict(verdict: Verdict, markdown: bool = False) -> str:
    """The checks, the limits below what their rows detect, the per-type checks, the headline metrics not gated,
    the rows by their change, the notes, and last the verdict: PASSED, or FAILED with what failed."""
    header = ["check", "baseline", "candidate", "change", "95% interval", "limit", "se", "detectable", "rule",
              "result"]
    rows = []
    for check in verdict.checks:
        power = power_cells(check.sensitivity) if check.kind == "drop" else [MISSING, MISSING]
        rows.append([check_name(check), f"{check.baseline:.4f}", f"{check.candidate:.4f}",
                     signed(check.candidate - check.baseline), interval_text(check.interval), number(check.limit),
                     *power, check.rule, result_text(check)])
    types = [["question type", "rows", "metric", "baseline", "candidate", "change", "95% interval", "limit", "se",
              "detectable", "result"]]
    for check in verdict.type_checks:
        result = ("ok" if check.ok else "REGRESSED") if check.judged else \
            f"too few rows to judge (< {verdict.min_type_rows})"
        types.append([check.label, str(check.rows), check.metric, f"{check.baseline:.4f}", f"{check.candidate:.4f}",
                      signed(check.candidate - check.baseline), interval_text(check.interval), f"{check.limit:.4f}",
                      *power_cells(check.sensitivity), result])
    context = [["not gated", "baseline", "candidate", "change"]] + [
        [name, cell(before, name), cell(after, name), change(before, after, name)]
        for name, before, after in verdict.ungated]
    tables = [([header] + rows, (0, 8, 9))] if rows else []
    tables += [(types, (0, 2, 10))] if verdict.type_checks else []
    tables += [(context, (0,))] if verdict.ungated else []
    power = [f"WARNING (sensitivity): {line}" for line in verdict.power_warnings()]
    if markdown:
        lines = [f"- **{line}**" for line in verdict.warning_lines()] + ([""] if verdict.warnings else [])
        for index, (table, left) in enumerate(tables):
            lines += [markdown_row(table[0]), "|" + "".join("---|" if i in left else "---:|"
                                                            for i in range(len(table[0])))]
            lines += [markdown_row(row) for row in table[1:]] + [""]
            if index == 0 and power:
                lines += [f"- {line}" for line in power] + [""]
        lines += regressed_markdown(verdict) + [f"- {note}" for note in verdict.notes]
        lines.append("\n**PASSED**" if verdict.passed else f"\n**FAILED**: {'; '.join(verdict.failures())}")
        return "\n".join(lines)
    lines = verdict.warning_lines() + ([""] if verdict.warnings else [])
    for index, (table, left) in enumerate(tables):
        lines += aligned(table, left) + [""]
        if index == 0 and power:
            lines += power + [""]
    return "\n".join(lines + regressed_text(verdict) + verdict.notes + ["", verdict.verdict_line()])


def interval_text(interval: tuple[float, float] | None) -> str:
    return f"[{signed(interval[0])}, {signed(interval[1])}]" if interval else "n/a"


def bucket_line(regression: dict) -> str:
    counts = ", ".join(f"{regression[b]['count']} {b}" for b in ("regressed", "improved", "unchanged"))
    return (f"rows by per-row {regression['metric']} change (candidate - baseline, beyond "
            f"±{regression['threshold']:g}): {counts}")


def regressed_text(verdict: Verdict) -> list[str]:
    if not verdict.regression:
        return []
    changes = [f"{row_id} {signed(row['candidate_score'] - row['baseline_score'])}"
               for row_id, row in list(verdict.regressed_rows.items())[:LISTED_ROWS]]
    return [bucket_line(verdict.regression)] + ([f"worst regressed: {', '.join(changes)}"] if changes else []) + [""]


def regressed_markdown(verdict: Verdict) -> list[str]:
    """The bucket counts and a table of the worst regressed rows, their texts shortened to one line."""
    if not verdict.regression:
        return []
    listed = list(verdict.regressed_rows.items())[:LISTED_ROWS]
    lines = [f"**{bucket_line(verdict.regression)}**" + (f"; the {len(listed)} worst regressed:" if listed else ""),
             ""]
    if listed:
        lines += ["| id | change | input | reference | baseline | candidate |", "|---|---:|---|---|---|---|"]
        lines += [markdown_row([f"`{row_id}`", signed(row['candidate_score'] - row['baseline_score']),
                                shorten(row["input"], 60), shorten(row["reference"], 80),
                                shorten(row["baseline"], 80), shorten(row["candidate"], 80)])
                  for row_id, row in listed] + [""]
    return lines


def shorten(text: str, width: int) -> str:
    """One line of at most `width` characters (… where cut); "(empty)" for an empty output."""
    line = " ".join(text.split())
    return "(empty)" if not line else line if len(line) <= width else line[:width - 1] + "…"


def markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def aligned(rows: list[list[str]], left: tuple[int, ...]) -> list[str]:
    """Plain-text table lines: columns padded to their widest cell (Hangul counts two columns, as a terminal shows
    it), numbers right-aligned."""
    widths = [max(display_width(row[i]) for row in rows) for i in range(len(rows[0]))]

    def pad(text: str, width: int, on_right: bool) -> str:
        space = " " * (width - display_width(text))
        return text + space if on_right else space + text

    return ["  ".join(pad(text, w, i in left) for i, (text, w) in enumerate(zip(row, widths))).rstrip()
            for row in rows]


def display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def compare_html(verdict: Verdict) -> str:
    """compare.html of the verdict (eval/html.py's render_compare_html, from plain data)."""
    return render_compare_html({
        "passed": verdict.passed, "failures": verdict.failures(), "model": verdict.model, **verdict.reports,
        "checks": [plain(check) for check in verdict.checks], "notes": verdict.notes,
        "power_warnings": verdict.power_warnings(),
        "type_checks": [plain(check) for check in verdict.type_checks], "min_type_rows": verdict.min_type_rows,
        "regression": verdict.regression, "rows": verdict.regressed_rows}, worst=len(verdict.regressed_rows))


def plain(check: Check | TypeCheck) -> dict:
    """A check as compare.html reads it: its fields, the sensitivity as its standard error and detectable drop."""
    values = asdict(check)
    sensitivity = check.sensitivity
    values["sensitivity"] = sensitivity and {"standard_error": sensitivity.standard_error,
                                             "detectable": sensitivity.detectable, "visible": sensitivity.visible}
    return values
