"""Reading the reports a gate compares (`compare`, `gate plan`): a report.json of a version this code reads,
checked against the schema, whether two reports describe the same rows with the same metric settings, and whether
the metrics a gate names are in both.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from eval import metrics
from eval.report import SCHEMA_VERSION, check, schema
from pipeline.errors import ConfigError, DataError

# The report versions this gate reads. 3.1 added metrics and blocks (below) and changed none of 3.0's, so a 3.0
# report compares with a 3.1 one on the metrics both have; what a 3.0 report lacks is "—", and exit 2 if gated.
READABLE_VERSIONS = ("3.0", "3.1")
ADDED_IN_3_1 = ("semantic", "sanity", "warnings", "types", "regressions", "per_type_deltas")


def load_report(path: Path) -> dict:
    """A report.json of a READABLE_VERSIONS version, checked against the schema: anything else is exit 2, naming
    why. A metric it lacks (a report made before the metric was added) is no error here: it is exit 2 where it is
    gated, and "—" in the tables."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a report.json: {exc}") from None
    version = report.get("schema_version") if isinstance(report, dict) else None
    if version not in READABLE_VERSIONS:
        raise DataError(f"{path} is a report of schema version {version!r}; this version compares "
                        f"{' and '.join(map(repr, READABLE_VERSIONS))} reports only: rescore it with this version "
                        "(entrypoint.py score)")
    try:
        check(report, reader_schema(version))
    except jsonschema.ValidationError as exc:
        where = "/".join(map(str, exc.absolute_path)) or "the top level"
        raise DataError(f"{path} is not a valid report.json ({where}: {exc.message})") from None
    return report


def reader_schema(version: str) -> dict:
    """This version's schema as a reader of `version` reports needs it: any readable version, metrics by name
    (schema(complete=False)), and an older report without the blocks added since."""
    result = schema(complete=False)
    result["properties"]["schema_version"] = {"enum": list(READABLE_VERSIONS)}
    if version != SCHEMA_VERSION:
        result["required"] = [key for key in result["required"] if key not in ADDED_IN_3_1]
    return result


def check_gated(option: str, limits: dict[str, float], model: str, *reports: tuple[dict, Path]) -> None:
    """ConfigError naming the metric unless each one `option` gates exists, has a better direction and is in both
    reports."""
    for name in limits:
        metric = metrics.metric(name)
        if metric is None:
            raise ConfigError(f"{option}: unknown metric {name!r}; reports have "
                              f"{', '.join(sorted(reports[-1][0]['metrics'][model]))}")
        for which, (report, path) in zip(("baseline", "candidate"), reports):
            if name not in report["metrics"][model]:
                raise ConfigError(f"{option}: {name} is not in the {which} report {path} (schema "
                                  f"{report['schema_version']}, made by another version?): rescore it, or leave "
                                  f"{name} out of {option}")
        if not metric.gateable:
            rates = ", ".join(m.name for m in metrics.REGISTRY if m.direction == metrics.LOWER)
            raise ConfigError(f"{option}: {name} describes the outputs and has no better direction; gate a "
                              f"quality metric or a failure rate ({rates})")


def different_settings(baseline: dict, candidate: dict) -> list[str]:
    found = []
    for key, what in (("test_set", "test set"), ("metric_settings", "metric settings")):
        a, b = baseline[key], candidate[key]
        fingerprint = "sha256" if key == "test_set" else "fingerprint"
        if a[fingerprint] != b[fingerprint] and (key == "test_set" or not same_metric_settings(a, b)):
            detail = (f"{a['rows']} rows {a['sha256'][:12]} vs {b['rows']} rows {b['sha256'][:12]}" if key == "test_set"
                      else f"tokenize {a['tokenize']} vs {b['tokenize']}, fingerprint {a['fingerprint']} vs "
                           f"{b['fingerprint']}")
            found.append(f"different {what} (baseline vs candidate: {detail})")
    return found


def same_metric_settings(a: dict, b: dict) -> bool:
    """Whether reports of different schema versions (whose fingerprints differ by the version alone) measured with
    the same settings: every setting both record, but the version and the fingerprint, is equal."""
    if a["schema_version"] == b["schema_version"]:
        return False
    shared = (set(a) & set(b)) - {"schema_version", "fingerprint"}
    return all(a[key] == b[key] for key in shared)
