"""report.html and compare.html (eval/html.py): the regression buckets, the embedded data, and the pages in a real
headless Chromium (Debian's chromium-headless-shell or chromium, driven by Playwright with the system browser).

The browser tests are skipped, saying why, where no Chromium is installed (`make browser` installs it; CI does).
REPORT_HTML_SCREENSHOT=docs/report-html.png (what `make docs-screenshot` sets) also writes the README's picture, from
the 3.1 report of tests/demo_report.py (any path: the test writes where the variable says).
"""

import json
import os
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

import demo_report
from conftest import ROOT
from eval import metrics
from eval.compare import Check
from eval.html import render_compare_html, render_html
from eval.predictions import read_predictions
from eval.stats import regression_buckets
from pipeline.text import split_label

THRESHOLD = 0.05


def test_regression_buckets_split_rows_by_the_threshold_worst_first():
    ids = ["r0", "r1", "r2", "r3", "r4", "r5"]
    reference = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    model = [0.2, 0.45, 0.56, 0.9, 0.4, 0.55]  # differences -0.3, -0.05, +0.06, +0.4, -0.1, +0.05000000000000004
    buckets = regression_buckets(reference, model, 0.05, ids)
    assert buckets["regressed"] == {"count": 2, "ids": ["r0", "r4"]}  # beyond -0.05 only, worst first
    assert buckets["improved"] == {"count": 2, "ids": ["r3", "r2"]}
    assert buckets["unchanged"] == {"count": 2, "ids": ["r1", "r5"]}  # exactly at the threshold: unchanged
    assert regression_buckets(reference, reference, 0.0, ids)["unchanged"]["count"] == 6
    with pytest.raises(ValueError, match="threshold"):
        regression_buckets(reference, model, -0.1, ids)
    with pytest.raises(ValueError, match="5 ids"):
        regression_buckets(reference, model, 0.1, ids[:5])


@pytest.fixture(scope="module")
def demo():
    """The committed demo report, its predictions and per-example scores computed here."""
    report = json.loads((ROOT / "examples/baseline-report.json").read_text(encoding="utf-8"))
    rows = read_predictions(ROOT / "examples/baseline-predictions.jsonl")
    references = [r["reference"] for r in rows["base"]]
    scores = {m: metrics.ExampleScores([r["prediction"] for r in model_rows], references)
              for m, model_rows in rows.items()}
    per_example = {name: {m: s.values[name] for m, s in scores.items()} for name in ("rougeL", "rougeL_question")}
    return report, rows, per_example


def embedded_data(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


def test_report_page_holds_every_row_and_no_output_can_end_its_script(demo):
    report, rows, per_example = demo
    hostile = "</script><script>alert(1)</script><!-- & 질문"
    rows = {**rows, "tuned": [{**r, "prediction": hostile} if i == 3 else r for i, r in enumerate(rows["tuned"])]}
    page = render_html(report, rows, per_example, regression_threshold=THRESHOLD, min_type_rows=10)
    assert page.count("</script>") == 2 and "<script>alert" not in page  # the data element and the page script
    element = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S).group(1)
    assert not {"<", ">", "&"} & set(element)  # as \\u escapes: no text can close the element or open a comment
    data = embedded_data(page)
    assert [r["id"] for r in data["rows"]] == [r["id"] for r in rows["base"]]
    assert data["rows"][3]["outputs"]["tuned"] == hostile
    assert data["rows"][0]["scores"]["tuned"]["rougeL"] == pytest.approx(per_example["rougeL"]["tuned"][0])
    # marked in the per-type table (one row per type) and in the per-type change table (one row per model and type)
    small = [t for t in report["per_type"]["base"].values() if t["rows"] < 10]
    small_changes = [t for types in report["per_type_deltas"].values() for t in types.values() if t["rows"] < 10]
    assert small and small_changes
    assert page.count("too few rows to judge (&lt; 10)") == len(small) + len(small_changes)
    assert '<meta charset="utf-8">' in page and "http://" not in page and "https://" not in page



def test_every_text_on_both_pages_is_escaped(demo):
    """The static parts are templates with autoescaping: markup in a report, a model's name or a gate's note is
    shown as text, never parsed."""
    report, rows, per_example = demo
    hostile = '<img src=x onerror="alert(1)">'
    shown = "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;"
    report = {**report, "created_at": hostile, "warnings": [{"model": "tuned", "kind": "empty", "value": 0.5,
                                                              "limit": 0.1, "message": hostile}]}
    page = render_html(report, rows, per_example, regression_threshold=THRESHOLD)
    assert hostile not in page and page.count(shown) == 2  # the subtitle and the warning
    side = {"path": hostile, "created_at": "2026-01-01", "rows": 60, "commit": None}
    comparison = {"passed": False, "model": hostile, "baseline": side, "candidate": side, "checks": [],
                  "notes": [hostile], "failures": [hostile]}
    page = render_compare_html(comparison)
    assert hostile not in page and page.count(shown) == 5  # the model, the failure, both reports' paths, the note


# --- in a real browser ------------------------------------------------------------------------------------------


def find_chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "chromium-headless-shell", "chromium", "chromium-browser"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


@pytest.fixture(scope="module")
def browser():
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium found (chromium-headless-shell or chromium on PATH, or $CHROMIUM): `make browser` "
                    "installs Debian's chromium-headless-shell")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make install)")
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=chromium)
        yield launched
        launched.close()


def open_page(browser, path: Path, fragment: str = ""):
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.as_uri() + fragment)
    return page, errors


def shown_ids(page) -> list[str]:
    return page.eval_on_selector_all("#rows article.row", "nodes => nodes.map(n => n.id.slice(4))")


@pytest.mark.subprocess  # starts Chromium
@pytest.mark.timeout(60)
def test_report_html_in_chromium(browser, tmp_path):
    """A 3.1 report (tests/demo_report.py: base, tuned and an untrained adapter that repeats base): the warning
    banner, every row, the filters against the report's own regressions block, links to rows; the README's
    picture when REPORT_HTML_SCREENSHOT names a path."""
    report, rows, per_example = demo_report.demo()
    path = tmp_path / "report.html"
    path.write_text(render_html(report, rows, per_example, min_type_rows=demo_report.MIN_TYPE_ROWS),
                    encoding="utf-8")
    page, errors = open_page(browser, path)

    assert len(shown_ids(page)) == report["rows"] == 60
    assert page.get_attribute("#shown-count", "data-count") == "60"
    assert page.is_visible("#warnings") and report["warnings"][0]["message"] in page.inner_text("#warnings")
    text = page.inner_text("body")
    assert rows["base"][0]["reference"] in text and "이유와 근거 묻기" in text  # Korean, as written
    assert page.locator("#type-table tr.few").count() == 2  # 9 and 7 rows, under the demo's 10
    assert page.locator("#type-deltas tr.few").count() == 2 * 2  # the same two types, for tuned and untrained

    ids = [r["id"] for r in rows["base"]]
    for model in ("tuned", "untrained"):
        page.select_option("#model-filter", model)
        page.select_option("#bucket-filter", "regressed")
        page.select_option("#sort", "diff-asc")  # worst first, as the report lists them
        regressed = report["regressions"][model]["regressed"]
        assert shown_ids(page) == regressed["ids"] and regressed["count"] >= 1
        page.select_option("#sort", "row")
        assert shown_ids(page) == [i for i in ids if i in regressed["ids"]]
    page.select_option("#model-filter", "tuned")
    differences = np.asarray(per_example["rougeL"]["tuned"]) - np.asarray(per_example["rougeL"]["base"])
    page.select_option("#bucket-filter", "improved")
    assert shown_ids(page) == [i for i, d in zip(ids, differences) if d > THRESHOLD + 1e-12]
    page.select_option("#bucket-filter", "")
    page.select_option("#sort", "diff-asc")
    assert shown_ids(page)[0] == ids[int(np.argmin(differences))] == demo_report.EMPTIED
    label = split_label(rows["base"][5]["reference"])[0]
    page.select_option("#type-filter", label)
    assert len(shown_ids(page)) == sum(split_label(r["reference"])[0] == label for r in rows["base"])
    page.select_option("#type-filter", "")
    page.check("#differ-filter")
    assert len(shown_ids(page)) == sum(b["prediction"] != t["prediction"] for b, t in zip(rows["base"], rows["tuned"]))
    page.select_option("#model-filter", "untrained")
    assert sorted(shown_ids(page)) == sorted(demo_report.UNTRAINED_CHANGED)
    if os.environ.get("REPORT_HTML_SCREENSHOT"):  # the README's picture: the page as it opens
        fresh, _ = open_page(browser, path)
        fresh.screenshot(path=os.environ["REPORT_HTML_SCREENSHOT"])
        assert Path(os.environ["REPORT_HTML_SCREENSHOT"]).stat().st_size > 10_000

    # a link to a row: opened fresh, it scrolls there and highlights it; followed in the page, the same
    linked, _ = open_page(browser, path, "#row-test:40")
    assert linked.eval_on_selector("article.highlight", "n => n.id") == "row-test:40"
    assert linked.evaluate("document.getElementById('row-test:40').getBoundingClientRect().top") < 200
    linked.click("#row-test\\:7 h3 a")
    linked.wait_for_selector("#row-test\\:7.highlight", timeout=5000)  # the page reacts to hashchange, an event
    assert linked.eval_on_selector_all("article.highlight", "nodes => nodes.map(n => n.id)") == ["row-test:7"]
    linked.click(f"#bucket-table a[href='#row-test%3A{demo_report.LOOPED[5:]}']")  # the regressions table links rows
    linked.wait_for_selector(f"#row-test\\:{demo_report.LOOPED[5:]}.highlight", timeout=5000)
    linked.screenshot(path=tmp_path / "report-row-test-7.png")
    assert (tmp_path / "report-row-test-7.png").stat().st_size > 10_000
    assert errors == []


@pytest.mark.subprocess  # starts Chromium
@pytest.mark.timeout(60)
def test_report_html_regressed_filter_against_a_better_reference(browser, demo, tmp_path):
    """With tuned as the reference, base regresses on most rows: the filter shows exactly those."""
    report, rows, per_example = demo
    path = tmp_path / "report.html"
    path.write_text(render_html({**report, "reference": "tuned"}, rows, per_example,
                                regression_threshold=THRESHOLD), encoding="utf-8")
    page, errors = open_page(browser, path)
    differences = np.asarray(per_example["rougeL"]["base"]) - np.asarray(per_example["rougeL"]["tuned"])
    expected = [r["id"] for r, d in zip(rows["base"], differences) if d < -THRESHOLD - 1e-12]
    page.select_option("#bucket-filter", "regressed")
    assert len(expected) > 30 and shown_ids(page) == expected
    assert page.get_attribute("#shown-count", "data-count") == str(len(expected))
    assert errors == []


@pytest.mark.subprocess  # starts Chromium
@pytest.mark.timeout(60)
def test_compare_html_in_chromium(browser, demo, tmp_path):
    """A candidate that lost the adapter (base outputs) against the tuned baseline: the gate fails; the worst
    regressed rows are listed worst first and each is linkable."""
    report, rows, per_example = demo
    ids = [r["id"] for r in rows["base"]]
    baseline_values, candidate_values = per_example["rougeL"]["tuned"], per_example["rougeL"]["base"]
    buckets = regression_buckets(baseline_values, candidate_values, THRESHOLD, ids)
    before, after = report["metrics"]["tuned"], report["metrics"]["base"]
    checks = [Check("drop", "rougeL", before["rougeL"], after["rougeL"], 0.01, False, "point", (-0.27, -0.21)),
              Check("drop", "empty_rate", before["empty_rate"], after["empty_rate"], 0.02, True, "point", None)]
    side = {"path": "examples/baseline-report.json", "created_at": report["created_at"], "rows": 60,
            "commit": report["provenance"]["score"]["git"]["commit"]}
    comparison = {
        "passed": False, "model": "tuned", "baseline": side, "candidate": {**side, "path": "outputs/ci/report.json"},
        "checks": [asdict(c) for c in checks], "notes": ["rule: point"],
        "regression": {"metric": "rougeL", **buckets},
        "rows": {r["id"]: {"input": r["input"], "reference": r["reference"], "baseline": t["prediction"],
                           "candidate": r["prediction"], "baseline_score": b, "candidate_score": c}
                 for r, t, b, c in zip(rows["base"], rows["tuned"], baseline_values, candidate_values)},
    }
    path = tmp_path / "compare.html"
    path.write_text(render_compare_html(comparison, worst=10), encoding="utf-8")
    page, errors = open_page(browser, path)
    assert "FAILED" in page.inner_text("h1")
    assert page.locator("tr.bad").count() == 1 and page.locator("tr.ok").count() == 1
    worst = sorted(range(60), key=lambda i: candidate_values[i] - baseline_values[i])[:10]
    assert buckets["regressed"]["count"] > 10
    assert page.eval_on_selector_all("article.row", "nodes => nodes.map(n => n.id.slice(4))") == [ids[i] for i in worst]
    assert rows["base"][worst[0]]["reference"] in page.inner_text("body")
    link = "#row-" + ids[worst[3]].replace(":", "\\:") + " h3 a"  # a CSS selector: the colon escaped
    page.click(link)
    page.wait_for_selector("article.highlight", timeout=5000)  # the page reacts to hashchange, an event
    assert page.eval_on_selector_all("article.highlight", "nodes => nodes.map(n => n.id)") == [f"row-{ids[worst[3]]}"]
    page.screenshot(path=tmp_path / "compare.png", full_page=True)
    assert errors == []
