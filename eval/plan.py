"""`entrypoint.py gate plan`: the rows a regression gate needs for its limits to be visible, before it runs.

    plan(baseline_path, candidate_path or None, GateSpec(max_drop={"rougeL": 0.01}, ...)) -> Plan
    format_plan(plan)                                                                      -> the table it prints

The spread of the per-row changes is what decides it (eval/stats.py): a gate catches, at 80% power and one-sided
alpha 0.05, a drop of 2.487 standard errors of the change, and the standard error falls as 1/sqrt(rows). So from
the changes at hand (n rows, standard error se) a limit needs n x (2.487 se / limit)^2 rows. The changes are the
candidate's rows minus the baseline's (the gated model of each, matched by id), or, without a candidate, the
baseline report's gated model minus its reference model (base): an adapter differs from its base more than a
candidate from its baseline, so those rows are likely an upper bound. Per question type the same, on that type's rows: the
type's rows needed, and the split's rows that gives at the type's share of the split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from eval.gate_spec import GateSpec
from eval.paired import pair
from eval.predictions import predictions_of
from eval.report_reader import check_gated, different_settings, load_report
from eval.stats import DETECTABLE_Z, Sensitivity, standard_error
from eval.verdict import aligned
from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Need:
    """One limit's plan: the metric, the question type (None: all rows), its share of the split's rows, and what
    the rows at hand show (eval/stats.py's Sensitivity: rows, standard error, limit, detectable, rows needed)."""

    metric: str
    label: str | None
    share: float
    sensitivity: Sensitivity


@dataclass
class Plan:
    changes: str  # whose per-row changes the spread is of
    upper_bound: bool  # no candidate: the gated model against its reference model
    rows: int
    min_type_rows: int
    needs: list[Need]


def plan(baseline_path: Path, candidate_path: Path | None, spec: GateSpec) -> Plan:
    """The rows each limit of `spec` needs, from the spread of the per-row changes (the module's docstring)."""
    baseline = load_report(baseline_path)
    reports = [(baseline, baseline_path)] + ([(load_report(candidate_path), candidate_path)] if candidate_path
                                             else [])
    for report, path in reports:
        if spec.model not in report["models"]:
            raise ConfigError(f"--model: {spec.model!r} is not a model of {path} ({', '.join(report['models'])})")
    for option, limits in (("--max-drop", spec.max_drop), ("--max-drop-per-type", spec.max_drop_per_type)):
        check_gated(option, limits, spec.model, *reports)
    baseline_rows = predictions_of(baseline, baseline_path, spec.baseline_predictions)
    if baseline_rows is None:
        raise ConfigError(f"the predictions of {baseline_path} are not at hand (--baseline-predictions gives them): "
                          "the plan needs its per-row scores")
    tokenize = baseline["metric_settings"]["tokenize"]
    if candidate_path:
        candidate = reports[1][0]
        differences = different_settings(baseline, candidate)
        if differences:
            raise ConfigError(f"the reports are not comparable: {'; '.join(differences)}")
        candidate_rows = predictions_of(candidate, candidate_path, None)
        if candidate_rows is None:
            raise ConfigError(f"the predictions of {candidate_path} are not at hand (they are read from where the "
                              "report says)")
        paired = pair(baseline_rows, candidate_rows, spec.model, spec.gated, tokenize)
        changes = f"{spec.model} of {candidate_path} minus {spec.model} of {baseline_path}"
    else:
        reference = baseline["reference"]
        paired = pair(baseline_rows, baseline_rows, spec.model, spec.gated, tokenize, baseline_model=reference)
        changes = f"{spec.model} minus {reference} in {baseline_path}"
    samples, seed = (baseline["config"]["score"][key] for key in ("bootstrap_samples", "seed"))
    rows = len(paired.ids)

    def need(name: str, limit: float, label: str | None, indices: list[int] | None) -> Need:
        count = rows if indices is None else len(indices)
        error = standard_error(*paired.scores, name, samples, seed, indices)
        return Need(name, label, count / rows, Sensitivity(count, error, limit))

    needs = [need(name, limit, None, None) for name, limit in spec.max_drop.items()]
    needs += [need(name, limit, label, indices) for label, indices in paired.types().items()
              for name, limit in spec.max_drop_per_type.items()]
    return Plan(changes, candidate_path is None, rows, spec.min_type_rows, needs)


def split_rows(need: Need, min_type_rows: int) -> int | None:
    """The split's rows that give this limit its rows (a type: at its share of the split, and at least
    min_type_rows of it, else it is not judged at all); None for a zero limit."""
    needed = need.sensitivity.rows_needed
    if needed is None:
        return None
    if need.label is None:
        return needed
    return math.ceil(max(needed, min_type_rows) / need.share - 1e-9)


def format_plan(plan: Plan) -> str:
    """A table: per limit, the standard error and the smallest drop caught at the rows at hand, the rows that
    limit needs and the split's rows that gives; then what the numbers are from."""
    table = [["metric", "question type", "limit", "rows", "se", "detectable", "rows needed", "split rows needed"]]
    for need in plan.needs:
        s = need.sensitivity
        needed = ("unknown (no spread)" if s.standard_error == 0 else "never (a zero limit)"
                  if s.rows_needed is None else f"{s.rows_needed:,}")
        total = None if s.standard_error == 0 else split_rows(need, plan.min_type_rows)
        table.append([need.metric, need.label or "(all rows)", f"{s.limit:g}", f"{s.rows:,}",
                      f"{s.standard_error:.4f}", f"{s.detectable:.4f}", needed,
                      "—" if total is None else f"{total:,}"])
    lines = aligned(table, (0, 1)) + [
        "",
        f"from the per-row changes of {plan.changes} ({plan.rows} rows)" + (
            ": likely an upper bound (an adapter differs from its base more than a candidate from its baseline; "
            "--candidate gives the spread of a real candidate)" if plan.upper_bound else ""),
        f"detectable: the smallest drop caught 80% of the time (one-sided alpha 0.05: {DETECTABLE_Z:.3f} standard "
        "errors); rows needed: rows x (detectable / limit)^2, rounded up",
    ]
    if plan.needs and any(n.label for n in plan.needs):
        lines.append(f"a question type: its own rows needed, and the split's rows that gives at its share of the "
                     f"split (and at least --min-type-rows {plan.min_type_rows}, below which it is not judged)")
    flat = list(dict.fromkeys(n.metric for n in plan.needs if n.sensitivity.standard_error == 0))
    if flat:
        lines.append(f"no spread ({', '.join(flat)}): every row changes by the same amount (often none: no empty "
                     "output on either side), so these rows cannot tell the rows a limit needs; plan from another pair")
    return "\n".join(lines)
