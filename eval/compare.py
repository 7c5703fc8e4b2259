"""Regression gate: compare a candidate report with a baseline report.

    python entrypoint.py compare --baseline A.json --candidate B.json --max-drop rougeL=0.01,bleu=0.5

A metric regresses when the candidate's tuned value is lower than the baseline's by more than its allowed
drop (in the metric's own units: ROUGE in [0, 1], BLEU/chrF in [0, 100]). With --require-improvement the
candidate must also beat its own base model on each named metric with a one-sided bootstrap p < 0.05.
"""

from __future__ import annotations

from pipeline.errors import ConfigError

P_THRESHOLD = 0.05


def parse_max_drop(text: str) -> dict[str, float]:
    allowed = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            allowed[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--max-drop: {item!r} is not metric=number") from None
        if not sep or allowed[name.strip()] < 0:
            raise ConfigError(f"--max-drop: {item!r} is not metric=non-negative number")
    if not allowed:
        raise ConfigError("--max-drop names no metric")
    return allowed


def compare(baseline: dict, candidate: dict, max_drop: dict[str, float],
            require_improvement: bool = False) -> tuple[bool, list[dict]]:
    """Returns (passed, one row per check)."""
    available = sorted(candidate["metrics"]["tuned"])
    rows = []
    for name, allowed in max_drop.items():
        if name not in available or name not in baseline["metrics"]["tuned"]:
            raise ConfigError(f"--max-drop: unknown metric {name!r}; reports have {', '.join(available)}")
        before, after = baseline["metrics"]["tuned"][name], candidate["metrics"]["tuned"][name]
        drop = before - after
        rows.append({"check": f"{name} drop", "baseline": before, "candidate": after, "limit": allowed,
                     "value": drop, "ok": drop <= allowed + 1e-12})
        if require_improvement:
            if name not in candidate["deltas"]:
                raise ConfigError(f"--require-improvement: no significance test for {name!r}; "
                                  f"tested metrics are {', '.join(candidate['deltas'])}")
            delta = candidate["deltas"][name]
            rows.append({"check": f"{name} tuned>base", "baseline": candidate["metrics"]["base"][name],
                         "candidate": after, "limit": P_THRESHOLD, "value": delta["p_value"],
                         "ok": delta["delta"] > 0 and delta["p_value"] < P_THRESHOLD})
    return all(row["ok"] for row in rows), rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'check':<24}{'baseline':>11}{'candidate':>11}{'value':>10}{'limit':>9}  result"]
    for row in rows:
        lines.append(f"{row['check']:<24}{row['baseline']:>11.4f}{row['candidate']:>11.4f}{row['value']:>10.4f}"
                     f"{row['limit']:>9.4f}  {'ok' if row['ok'] else 'REGRESSED' if 'drop' in row['check'] else 'FAILED'}")
    return "\n".join(lines)
