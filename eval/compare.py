"""Regression gate: compare a candidate report with a baseline report.

    python entrypoint.py compare --baseline A.json --candidate B.json --max-drop rougeL=0.01,bleu=0.5 [--rule point]

The two reports must describe the same test rows with the same metric settings (their fingerprints), or the gate
refuses (exit 2) unless --allow-different-data. A metric regresses when the candidate model (--model, default
tuned) is worse than the baseline's by more than its allowed drop, in the metric's own units (ROUGE in [0, 1],
BLEU/chrF in [0, 100]) and in its direction: quality metrics may not fall, failure rates (empty_rate,
hit_max_new_tokens_rate) may not rise; lengths have no direction and cannot be gated (each metric's direction and
whether it pairs are its entry in eval/metrics.py's REGISTRY). A metric one report lacks (made by an older version)
is exit 2 when it is gated and "—" in the table of the headline metrics not gated.

When both reports' predictions are at hand, the rows are matched by id and the candidate-minus-baseline
difference gets a 95% paired-bootstrap interval. What a limit means is the rule (--rule):
- point (default): fails when the measured drop is beyond the limit. The limit is what is enforced.
- significant: fails only when the drop is beyond the limit *and* the interval excludes zero: noise alone never
  fails a build, but on a small test set a large real drop can pass.
- non-inferior: passes only when the whole interval shows the drop within the limit (its worse end): the
  strictest; on a small test set it needs a wide limit.
The interval is shown with every rule; significant and non-inferior need it (exit 2 without predictions). With
--require-improvement the candidate model must also beat its own base model with a one-sided bootstrap
p < 0.05 on each named metric.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema

from eval import metrics
from eval.report import SCHEMA_VERSION, cell, change, validate
from eval.score import read_predictions
from pipeline.errors import ConfigError, DataError
from pipeline.identity import file_sha256

RULES = ("point", "significant", "non-inferior")
P_THRESHOLD = 0.05


@dataclass(frozen=True)
class Check:
    kind: str  # "drop": the gate on a metric; "improvement": --require-improvement
    metric: str
    baseline: float
    candidate: float
    limit: float
    ok: bool
    rule: str  # point, significant, non-inferior; or the significance test of --require-improvement
    interval: tuple[float, float] | None = None


@dataclass
class Verdict:
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # The headline metrics not gated, for context: (metric, the baseline model's metrics, the candidate's).
    ungated: list[tuple[str, dict, dict]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check.ok for check in self.checks)


def load_report(path: Path) -> dict:
    """A report.json of this schema version, checked against the schema: anything else is exit 2, naming why. A
    metric it lacks (a report made before the metric was added) is no error here: it is exit 2 where it is gated,
    and "—" in the tables."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a report.json: {exc}") from None
    if not isinstance(report, dict) or report.get("schema_version") != SCHEMA_VERSION:
        version = report.get("schema_version") if isinstance(report, dict) else None
        raise DataError(f"{path} is a report of schema version {version!r}; this version compares {SCHEMA_VERSION!r} "
                        "reports only: rescore it with this version (entrypoint.py score)")
    try:
        validate(report, complete=False)
    except jsonschema.ValidationError as exc:
        where = "/".join(map(str, exc.absolute_path)) or "the top level"
        raise DataError(f"{path} is not a valid report.json ({where}: {exc.message})") from None
    return report


def parse_max_drop(text: str) -> dict[str, float]:
    allowed = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            limit = float(value)
        except ValueError:
            raise ConfigError(f"--max-drop: {item!r} is not metric=number") from None
        if not sep or not math.isfinite(limit) or limit < 0:
            raise ConfigError(f"--max-drop: {item!r} is not metric=non-negative finite number")
        allowed[name.strip()] = limit
    if not allowed:
        raise ConfigError("--max-drop names no metric")
    return allowed


def compare(baseline_path: Path, candidate_path: Path, max_drop: dict[str, float], *, model: str = "tuned",
            rule: str = "point", require_improvement: bool = False, unpaired: bool = False,
            baseline_predictions: Path | None = None, allow_different_data: bool = False) -> Verdict:
    baseline, candidate = load_report(baseline_path), load_report(candidate_path)
    verdict = Verdict()
    if rule not in RULES:
        raise ConfigError(f"--rule: {rule!r} is not one of {', '.join(RULES)}")
    differences = different_settings(baseline, candidate)
    if differences and not allow_different_data:
        raise ConfigError(f"the reports are not comparable: {'; '.join(differences)} (pass --allow-different-data "
                          "to compare them anyway)")
    verdict.notes += [f"allowed by --allow-different-data: {difference}" for difference in differences]
    for name in (n for n in (model, "base") if n not in baseline["metrics"] or n not in candidate["metrics"]):
        raise ConfigError(f"--model: {name!r} is not a model of both reports (baseline: "
                          f"{', '.join(baseline['models'])}; candidate: {', '.join(candidate['models'])})")
    for name in max_drop:
        metric = metrics.metric(name)
        if metric is None:
            raise ConfigError(f"--max-drop: unknown metric {name!r}; reports have "
                              f"{', '.join(sorted(candidate['metrics'][model]))}")
        for which, report, path in (("baseline", baseline, baseline_path), ("candidate", candidate, candidate_path)):
            if name not in report["metrics"][model]:
                raise ConfigError(f"--max-drop: {name} is not in the {which} report {path} (made by another "
                                  f"version?): rescore it, or leave {name} out of --max-drop")
        if not metric.gateable:
            rates = ", ".join(m.name for m in metrics.REGISTRY if m.direction == metrics.LOWER)
            raise ConfigError(f"--max-drop: {name} describes the outputs and has no better direction; gate a "
                              f"quality metric or a failure rate ({rates})")

    intervals, why_not = {}, None
    if unpaired:
        why_not = "--unpaired"
    elif differences:
        why_not = "the reports score different rows"
    else:
        sources = (predictions_of(baseline, baseline_path, baseline_predictions),
                   predictions_of(candidate, candidate_path, None))
        if None in sources:
            missing = baseline_path if sources[0] is None else candidate_path
            why_not = f"the predictions of {missing} are not at hand (--baseline-predictions gives the baseline's)"
        else:
            intervals = paired_intervals(*sources, model, [n for n in max_drop if metrics.metric(n).pairable],
                                         candidate)
            verdict.notes.append(f"paired: {candidate['rows']} rows matched by id; intervals are 95% paired-bootstrap "
                                 "intervals of the candidate-minus-baseline change")
    if why_not:
        if rule != "point":
            raise ConfigError(f"--rule {rule} needs the paired interval, which is not available: {why_not}; use "
                              "--rule point")
        verdict.notes.append(f"no intervals: {why_not}")
    unpairable = [name for name in max_drop if not metrics.metric(name).pairable]
    if rule != "point" and unpairable:
        raise ConfigError(f"--rule {rule}: {', '.join(unpairable)} has no meaningful paired interval (eval/metrics.py: "
                          "pairable); gate it in a separate compare with --rule point")
    verdict.notes.append(f"rule: {rule}: {RULE_MEANING[rule]}")

    for name, limit in max_drop.items():
        before, after = baseline["metrics"][model][name], candidate["metrics"][model][name]
        worse = (before - after) * metrics.metric(name).direction  # > 0: the candidate is worse
        interval = (intervals[name]["ci95_low"], intervals[name]["ci95_high"]) if name in intervals else None
        verdict.checks.append(Check("drop", name, before, after, limit, passes(rule, name, worse, limit, interval),
                                    rule, interval))
        if require_improvement:
            tested = improvement(candidate, model, name)
            if tested:
                verdict.checks.append(tested)
            else:
                verdict.notes.append(f"--require-improvement: {name} has no paired test against base in the report "
                                     f"(tested: {', '.join(candidate['deltas'][model])}); only its drop is gated")
    verdict.ungated = [(m.name, baseline["metrics"][model], candidate["metrics"][model])
                       for m in metrics.flagged("headline") if m.name not in max_drop]
    return verdict


RULE_MEANING = {
    "point": "a metric fails when the candidate is worse than the baseline by more than its limit",
    "significant": "a metric fails when it is worse by more than its limit and its interval excludes zero (no change)",
    "non-inferior": "a metric passes only when the worse end of its interval is within its limit",
}


def passes(rule: str, name: str, worse: float, limit: float, interval: tuple[float, float] | None) -> bool:
    """Whether a metric `worse` by this much (the point estimate, > 0 = worse) passes its limit under `rule`;
    `interval` is the 95% interval of the candidate-minus-baseline change."""
    tolerance = 1e-12  # float noise in means of identical values
    if rule == "point":
        return worse <= limit + tolerance
    low, high = interval
    higher = metrics.metric(name).direction == metrics.HIGHER
    if rule == "significant":
        significantly_worse = high < 0 if higher else low > 0
        return not (worse > limit + tolerance and significantly_worse)
    worst = -low if higher else high  # non-inferior: the largest drop (or rise) the interval admits
    return worst <= limit + tolerance


def different_settings(baseline: dict, candidate: dict) -> list[str]:
    found = []
    for key, what in (("test_set", "test set"), ("metric_settings", "metric settings")):
        a, b = baseline[key], candidate[key]
        fingerprint = "sha256" if key == "test_set" else "fingerprint"
        if a[fingerprint] != b[fingerprint]:
            detail = (f"{a['rows']} rows {a['sha256'][:12]} vs {b['rows']} rows {b['sha256'][:12]}" if key == "test_set"
                      else f"tokenize {a['tokenize']} vs {b['tokenize']}, fingerprint {a['fingerprint']} vs "
                           f"{b['fingerprint']}")
            found.append(f"different {what} (baseline vs candidate: {detail})")
    return found


def predictions_of(report: dict, report_path: Path, given: Path | None) -> Path | None:
    """The report's predictions.jsonl: `given`, or where the report says (relative to the report), if its hash
    still matches; None when it is not there."""
    path = Path(given) if given else Path(report_path).parent / report["predictions"]["path"]
    if not path.is_file():
        return None
    if file_sha256(path) != report["predictions"]["sha256"]:
        raise DataError(f"{path} is not the predictions file {report_path} was scored from (its sha256 differs)")
    return path


def paired_intervals(baseline_predictions: Path, candidate_predictions: Path, model: str, names: list[str],
                     candidate: dict) -> dict:
    rows = [read_predictions(path)[model] for path in (baseline_predictions, candidate_predictions)]
    by_id = {row["id"]: row for row in rows[0]}
    if sorted(by_id) != sorted(row["id"] for row in rows[1]):
        raise DataError(f"{baseline_predictions} and {candidate_predictions} do not hold the same rows of {model}")
    matched = [(by_id[row["id"]], row) for row in rows[1]]
    references = [b["reference"] for b, _ in matched]
    tokenize, settings = candidate["metric_settings"]["tokenize"], candidate["config"]["score"]
    registry = tuple(metrics.metric(name) for name in names)
    scores = [metrics.ExampleScores([pair[i]["prediction"] for pair in matched], references, tokenize,
                                    fields=[pair[i] for pair in matched], registry=registry) for i in (0, 1)]
    return metrics.paired_bootstrap(*scores, names, settings["bootstrap_samples"], settings["seed"]) if names else {}


def improvement(candidate: dict, model: str, name: str) -> Check | None:
    """Whether `model` beats base on `name` in the candidate report's paired test; None when the report has no
    such test of the metric (not flagged delta, or a report made before it was)."""
    if candidate["reference"] != "base" or model == "base":
        raise ConfigError(f"--require-improvement: the candidate report has no test of {model} against base "
                          f"(its models are tested against {candidate['reference']!r}: score.reference)")
    if name not in candidate["deltas"][model]:
        return None
    delta = candidate["deltas"][model][name]
    return Check("improvement", name, candidate["metrics"]["base"][name], candidate["metrics"][model][name],
                 P_THRESHOLD, delta["delta"] * metrics.metric(name).direction > 0 and delta["p_value"] < P_THRESHOLD,
                 f"better than base, p={delta['p_value']:.3f}", (delta["ci95_low"], delta["ci95_high"]))


def format_verdict(verdict: Verdict, markdown: bool = False) -> str:
    """The checks, then the headline metrics not gated (for context; "—" where a report lacks one), then the
    notes."""
    header = ["check", "baseline", "candidate", "change", "95% interval", "limit", "rule", "result"]
    rows = []
    for check in verdict.checks:
        result = "ok" if check.ok else ("REGRESSED" if check.kind == "drop" else "FAILED")
        interval = f"[{check.interval[0]:+.4f}, {check.interval[1]:+.4f}]" if check.interval else "n/a"
        worse = "drop" if metrics.metric(check.metric).direction == metrics.HIGHER else "rise"
        what = f"{check.metric} {worse if check.kind == 'drop' else 'vs base'}"
        rows.append([what, f"{check.baseline:.4f}", f"{check.candidate:.4f}",
                     f"{check.candidate - check.baseline:+.4f}", interval, f"{check.limit:.4f}", check.rule, result])
    context = [["not gated", "baseline", "candidate", "change"]] + [
        [name, cell(before, name), cell(after, name), change(before, after, name)]
        for name, before, after in verdict.ungated]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * 5 + "---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        if verdict.ungated:
            lines += ["", "| " + " | ".join(context[0]) + " |", "|---|---:|---:|---:|"]
            lines += ["| " + " | ".join(row) + " |" for row in context[1:]]
        lines += [""] + [f"- {note}" for note in verdict.notes]
        lines.append(f"\n**{'PASSED' if verdict.passed else 'FAILED'}**")
        return "\n".join(lines)
    lines = aligned([header] + rows, left=(0, 6, 7))
    if verdict.ungated:
        lines += [""] + aligned(context, left=(0,)) + [""]
    return "\n".join(lines + verdict.notes)


def aligned(rows: list[list[str]], left: tuple[int, ...]) -> list[str]:
    """Plain-text table lines: columns padded to their widest cell, numbers right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(text.ljust(w) if i in left else text.rjust(w) for i, (text, w) in enumerate(zip(row, widths)))
            .rstrip() for row in rows]
