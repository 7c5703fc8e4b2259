"""Regression gate: compare a candidate report with a baseline report.

    python entrypoint.py compare --baseline A.json --candidate B.json --max-drop rougeL=0.01,bleu=0.5 [--rule point]
        [--max-drop-per-type rougeL=0.05 --min-type-rows 30] [--regression-threshold 0.05] [--html compare.html]

The two reports (read by eval/report_reader.py) must describe the same test rows with the same metric settings
(their fingerprints), or the gate refuses (exit 2) unless --allow-different-data. A metric regresses when the candidate model (--model, default
tuned) is worse than the baseline's by more than its allowed drop, in the metric's own units (ROUGE in [0, 1],
BLEU/chrF in [0, 100]) and in its direction: quality metrics may not fall, failure rates (empty_rate,
hit_max_new_tokens_rate) may not rise; lengths have no direction and cannot be gated (each metric's direction and
whether it pairs are its entry in eval/metrics.py's REGISTRY). A metric one report lacks (made by an older version)
is exit 2 when it is gated and "—" in the table of the headline metrics not gated.

When both reports' predictions are at hand, the rows are matched by id (eval/paired.py) and the
candidate-minus-baseline difference gets a 95% paired-bootstrap interval. What a limit means is the rule (--rule):
- point (default): fails when the measured drop is beyond the limit. The limit is what is enforced.
- significant: fails only when the drop is beyond the limit *and* the interval excludes zero: noise alone never
  fails a build, but on a small test set a large real drop can pass.
- non-inferior: passes only when the whole interval shows the drop within the limit (its worse end): the
  strictest; on a small test set it needs a wide limit.
The interval is shown with every rule; significant and non-inferior need it (exit 2 without predictions). With
--require-improvement the candidate model must also beat its own base model with a one-sided bootstrap
p < 0.05 (GateSpec.alpha) on each named metric.

With the rows paired, every limit is shown next to its sensitivity (eval/stats.py): the standard error of the
change and the smallest drop these rows catch at 80% power (one-sided alpha 0.05, 2.487 standard errors). A limit
below it gets a warning naming the rows it would need; the verdict does not change, except with --require-power,
where such a limit is a misconfiguration (exit 2, naming the metric).

--max-drop-per-type gates each question type (the reference's "(type)" label) with at least --min-type-rows rows
the same way, on that type's rows alone (its interval and sensitivity resample only them): an average can hide a type that got
worse. Smaller types are shown as "too few rows to judge" and not gated. The candidate report's warnings about the
model (eval/sanity.py: outputs identical to the reference model's, collapsed to one text) are shown; with
--fail-on-warnings they fail the gate (exit 1); a 3.0 report has none. With the predictions paired, the verdict
also sorts the rows by their ROUGE-L change into regressed / improved / unchanged (beyond +-
--regression-threshold) and keeps the worst regressed rows for the summary and compare.html (eval/verdict.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from eval import metrics
from eval.gate_spec import GateSpec
from eval.paired import PairedRows, pair
from eval.predictions import predictions_of
from eval.report_reader import check_gated, different_settings, load_report
from eval.stats import Sensitivity
from eval.verdict import Check, TypeCheck, Verdict
from pipeline.errors import ConfigError

WORST_ROWS = 20  # the worst regressed rows the verdict keeps (with their texts) for the summary and compare.html


def compare(baseline_path: Path, candidate_path: Path, spec: GateSpec) -> Verdict:
    """The gate's verdict on the candidate report against the baseline report under `spec` (ConfigError, exit 2,
    when they cannot be compared as asked)."""
    model, rule = spec.model, spec.rule
    baseline, candidate = load_report(baseline_path), load_report(candidate_path)
    differences = different_settings(baseline, candidate)
    if differences and not spec.allow_different_data:
        raise ConfigError(f"the reports are not comparable: {'; '.join(differences)} (pass --allow-different-data "
                          "to compare them anyway)")
    verdict = Verdict(model=model, min_type_rows=spec.min_type_rows, reports={
        "baseline": facts(baseline, baseline_path), "candidate": facts(candidate, candidate_path)},
        warnings=[w for w in candidate.get("warnings", ()) if w["model"] == model],
        fail_on_warnings=spec.fail_on_warnings, allowed_warnings=spec.allowed_warnings)
    verdict.notes += [f"allowed by --allow-different-data: {difference}" for difference in differences]
    for name in (n for n in (model, "base") if n not in baseline["metrics"] or n not in candidate["metrics"]):
        raise ConfigError(f"--model: {name!r} is not a model of both reports (baseline: "
                          f"{', '.join(baseline['models'])}; candidate: {', '.join(candidate['models'])})")
    for option, limits in (("--max-drop", spec.max_drop), ("--max-drop-per-type", spec.max_drop_per_type)):
        check_gated(option, limits, model, (baseline, baseline_path), (candidate, candidate_path))
    gated = spec.gated
    engines = [report.get("semantic", {}).get("identity") for report in (baseline, candidate)]
    if "semantic" in gated and engines[0] != engines[1] and not spec.allow_different_data:
        raise ConfigError(f"semantic was computed by different engines (baseline: {engines[0]}; candidate: "
                          f"{engines[1]}): their numbers differ slightly; pass --allow-different-data to gate it "
                          "anyway")
    unpairable = [name for name in gated if not metrics.metric(name).pairable]
    if rule != "point" and unpairable:
        raise ConfigError(f"--rule {rule}: {', '.join(unpairable)} has no meaningful paired interval (eval/metrics.py: "
                          "pairable); gate it in a separate compare with --rule point")

    paired, why_not = None, None
    if spec.unpaired:
        why_not = "--unpaired"
    elif differences:
        why_not = "the reports score different rows"
    else:
        sources = (predictions_of(baseline, baseline_path, spec.baseline_predictions),
                   predictions_of(candidate, candidate_path, spec.candidate_predictions))
        if None in sources:
            which = "baseline" if sources[0] is None else "candidate"
            why_not = (f"the predictions of {baseline_path if which == 'baseline' else candidate_path} are not at "
                       f"hand (--{which}-predictions gives the {which}'s)")
        else:
            paired = pair(*sources, model, gated, candidate["metric_settings"]["tokenize"])
            verdict.notes.append(f"paired: {len(paired.ids)} rows matched by id; intervals are 95% paired-bootstrap "
                                 "intervals of the candidate-minus-baseline change")
    if why_not:
        if rule != "point":
            raise ConfigError(f"--rule {rule} needs the paired interval, which is not available: {why_not}; use "
                              "--rule point")
        verdict.notes.append(f"no intervals: {why_not}; no per-row changes, no sensitivity either")
    verdict.notes.append(f"rule: {rule}: {RULE_MEANING[rule]}")
    samples, seed = (candidate["config"]["score"][key] for key in ("bootstrap_samples", "seed"))

    overall = [n for n in spec.max_drop if n not in unpairable]
    intervals = paired.intervals(overall, samples, seed) if paired else {}
    own = own_changes(sources, candidate, spec) if paired else None
    sensitivities = {name: with_spread(sensitivity, name, own, samples, seed) for name, sensitivity in
                     paired.sensitivities(spec.max_drop, samples, seed).items()} if paired else {}
    for name, limit in spec.max_drop.items():
        before, after = baseline["metrics"][model][name], candidate["metrics"][model][name]
        interval = (intervals[name]["ci95_low"], intervals[name]["ci95_high"]) if name in intervals else None
        verdict.checks.append(Check("drop", name, before, after, limit,
                                    passes(rule, name, worse(name, before, after), limit, interval), rule, interval,
                                    sensitivities.get(name)))
        if spec.require_improvement:
            tested = improvement(candidate, model, name, spec.alpha)
            if tested:
                verdict.checks.append(tested)
            else:
                verdict.notes.append(f"--require-improvement: {name} has no paired test against base in the report "
                                     f"(tested: {', '.join(candidate['deltas'][model])}); only its drop is gated")
    if spec.max_drop_per_type:
        per_type = spec.max_drop_per_type
        by_type = (paired.by_type(per_type, unpairable, samples, seed) if paired
                   else reported_types(baseline, candidate, model, per_type, verdict.notes))
        for label, rows, values in by_type:
            judged = rows >= spec.min_type_rows
            for name, limit in per_type.items():
                before, after, interval, sensitivity = values[name]
                sensitivity = sensitivity and with_spread(sensitivity, name, own, samples, seed, label)
                ok = not judged or passes(rule, name, worse(name, before, after), limit, interval)
                verdict.type_checks.append(TypeCheck(label, rows, name, before, after, limit, ok, judged, rule,
                                                     interval, sensitivity))
        verdict.notes.append(f"per question type: types with fewer than {spec.min_type_rows} rows (--min-type-rows) "
                             "are too few to judge and not gated")
    borrowed = next((c.sensitivity.changes for c in [*verdict.checks, *verdict.type_checks]
                     if c.sensitivity and c.sensitivity.changes), None)
    if borrowed:
        verdict.notes.append(f"*: se and detectable by the spread of {borrowed} (as `gate plan` without a "
                             "candidate: likely an upper bound)")
    if paired:
        verdict.regression = paired.regressions(spec.regression_threshold)
        verdict.regressed_rows = paired.shown(verdict.regression["regressed"]["ids"][:WORST_ROWS])
        verdict.notes.append(SENSITIVITY_NOTE)
    verdict.ungated = [(m.name, baseline["metrics"][model], candidate["metrics"][model])
                       for m in metrics.flagged("headline") if m.name not in spec.max_drop]
    underpowered = verdict.power_warnings()
    if spec.require_power and underpowered:
        raise ConfigError(f"--require-power: {underpowered[0]}" + (
            f" (and {len(underpowered) - 1} more limits)" if len(underpowered) > 1 else ""))
    return verdict


def own_changes(sources: tuple[Path, Path], candidate: dict, spec: GateSpec) -> tuple[PairedRows, str] | None:
    """The candidate report's own gated-model-minus-reference rows (None when the gated model is the reference):
    where the candidate-minus-baseline changes have no spread at all (its outputs score as the baseline's on every
    row, as an unchanged adapter's do), they say how much rows move when the model changes (`gate plan`'s likely
    upper bound), and the sensitivity is taken from them, named so."""
    if spec.model == candidate["reference"]:
        return None
    rows = pair(sources[1], sources[1], spec.model, spec.gated, candidate["metric_settings"]["tokenize"],
                baseline_model=candidate["reference"])
    return rows, f"{spec.model} - {candidate['reference']}: the candidate changed no row's score"


def with_spread(sensitivity: Sensitivity, name: str, own: tuple[PairedRows, str] | None, samples: int, seed: int,
                label: str | None = None) -> Sensitivity:
    """`sensitivity`, or where its changes have no spread, the same limit's from `own` (over the type `label`'s
    rows, or all)."""
    if sensitivity.standard_error > 0 or own is None:
        return sensitivity
    rows, changes = own
    indices = rows.types().get(label) if label else None
    found = rows.sensitivities({name: sensitivity.limit}, samples, seed, indices)[name]
    return replace(found, changes=changes) if found.standard_error > 0 else sensitivity


SENSITIVITY_NOTE = ("se: the standard error of the paired change; detectable: the smallest drop these rows catch 80% "
                    "of the time (one-sided alpha 0.05: 2.487 se); a limit below it decides on noise")


RULE_MEANING = {
    "point": "a metric fails when the candidate is worse than the baseline by more than its limit",
    "significant": "a metric fails when it is worse by more than its limit and its interval excludes zero (no change)",
    "non-inferior": "a metric passes only when the worse end of its interval is within its limit",
}


def worse(name: str, before: float, after: float) -> float:
    """How much worse `after` is than `before` in the metric's direction (> 0: worse)."""
    return (before - after) * metrics.metric(name).direction


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


def reported_types(baseline: dict, candidate: dict, model: str, limits: dict[str, float],
                   notes: list[str]) -> list[tuple[str, int, dict]]:
    """Without paired rows (point rule): the per-type tables of both reports, for the types both have (a type's
    rows: the fewer of the two, as reports of different test rows may differ), as PairedRows.by_type gives them,
    with no interval and no sensitivity."""
    tables = [report["per_type"].get(model) for report in (baseline, candidate)]
    for which, table in zip(("baseline", "candidate"), tables):
        missing = [n for n in limits if table is None or any(n not in row for row in table.values())]
        if missing:
            raise ConfigError(f"--max-drop-per-type: the {which} report has no per-type {', '.join(missing)} of "
                              f"{model} and the predictions are not paired: gate metrics of its per-type table, or "
                              "give both predictions")
    only_one = [label for label in {**tables[0], **tables[1]} if label not in tables[0] or label not in tables[1]]
    notes += [f"question type {label!r} is in one report only: not gated" for label in only_one]
    return [(label, min(row["rows"], tables[0][label]["rows"]),
             {n: (tables[0][label][n], row[n], None, None) for n in limits})
            for label, row in tables[1].items() if label in tables[0]]


def facts(report: dict, path: Path) -> dict:
    return {"path": str(path), "created_at": report["created_at"], "rows": report["rows"],
            "commit": report["provenance"]["score"]["git"]["commit"], "schema_version": report["schema_version"],
            "warnings": report.get("warnings", [])}  # 3.1: the report's sanity warnings, a banner in compare.html


def improvement(candidate: dict, model: str, name: str, alpha: float) -> Check | None:
    """Whether `model` beats base on `name` in the candidate report's paired test; None when the report has no
    such test of the metric (not flagged delta, or a report made before it was)."""
    if candidate["reference"] != "base" or model == "base":
        raise ConfigError(f"--require-improvement: the candidate report has no test of {model} against base "
                          f"(its models are tested against {candidate['reference']!r}: score.reference)")
    if name not in candidate["deltas"][model]:
        return None
    delta = candidate["deltas"][model][name]
    better = delta["delta"] * metrics.metric(name).direction > 0 and delta["p_value"] < alpha
    return Check("improvement", name, candidate["metrics"]["base"][name], candidate["metrics"][model][name], None,
                 better, f"better than base: p {delta['p_value']:.3f} (< {alpha:g} needed)",
                 (delta["ci95_low"], delta["ci95_high"]))
