"""Metrics against numbers computed by hand from tokens written out here, not produced by our tokenizer."""

import json
import math
import unicodedata
import warnings

import numpy as np
import pytest
from rouge_score import rouge_scorer
from sacrebleu.metrics import CHRF

from conftest import ROOT
from eval import metrics, stats
from pipeline.text import split_label

PAIRS = [  # (prediction, reference): related but not identical Korean questions
    ("(이유와 근거 묻기) 재택근무가 생산성을 높인다는 근거는 무엇인가요?",
     "(이유와 근거 묻기) 재택근무로 생산성이 높아졌다는 증거가 있나요?"),
    ("(다른 관점 생각하기) 학생들의 입장에서는 이 정책이 어떻게 보일까요?",
     "(다른 관점 생각하기) 교사들의 입장에서는 이 정책을 어떻게 생각할까요?"),
    ("(의미 명확히 하기) 여기서 말하는 공정함은 무엇을 뜻하나요?",
     "(의미 명확히 하기) 공정하다는 말은 정확히 어떤 의미인가요?"),
    ("(함의와 결과 따져보기) 요금을 낮추면 대중교통 예산은 어떻게 되나요?",
     "(함의와 결과 따져보기) 요금을 없애면 대중교통 운영비는 누가 부담하게 되나요?"),
]
PREDICTIONS, REFERENCES = [p for p, _ in PAIRS], [r for _, r in PAIRS]


def scores(predictions, references, tokenize="ko-mecab"):
    return metrics.ExampleScores(predictions, references, tokenize).metrics()


def test_korean_rouge_and_bleu_by_hand():
    """Morphemes (mecab-ko, as written out below):
    나는 집에 간다.        -> 나 는 집 에 간다 .          vs  나는 학교에 간다. -> 나 는 학교 에 간다 .
    오늘 나는 학교에 간다.  -> 오늘 나 는 학교 에 간다 .    vs  나는 학교에 간다.
    Pair 1: 5 of 6 unigrams match, LCS 5, bigrams 3 of 5 (나 는, 에 간다, 간다 .).
    Pair 2: 6 of 7 unigrams (the reference's 6), LCS 6, bigrams 5 of 6 (recall 5 of 5).
    Corpus BLEU: matched/total n-grams 11/13, 8/11, 5/9, 3/7; 13 hypothesis vs 12 reference tokens, no penalty."""
    got = scores(["나는 집에 간다.", "오늘 나는 학교에 간다."], ["나는 학교에 간다.", "나는 학교에 간다."])
    f1 = lambda p, r: 2 * p * r / (p + r)  # noqa: E731
    assert got["rouge1"] == pytest.approx((5 / 6 + f1(6 / 7, 1)) / 2)
    assert got["rougeL"] == pytest.approx((5 / 6 + f1(6 / 7, 1)) / 2)
    assert got["rouge2"] == pytest.approx((3 / 5 + f1(5 / 6, 1)) / 2)
    assert got["bleu"] == pytest.approx(100 * (11 / 13 * 8 / 11 * 5 / 9 * 3 / 7) ** 0.25)


def test_english_under_13a_by_hand():
    """13a: "Why do you think so?" -> Why do you think so ?  (6 tokens)
            "Why do you think that, exactly?" -> Why do you think that , exactly ?  (8 tokens)
    Unigrams 5 match, LCS 5 (Why do you think ?); n-gram precisions 5/6, 3/5, 2/4, 1/3; brevity exp(1 - 8/6)."""
    got = scores(["Why do you think so?"], ["Why do you think that, exactly?"], tokenize="13a")
    assert got["rouge1"] == pytest.approx(2 * (5 / 6) * (5 / 8) / (5 / 6 + 5 / 8))
    assert got["rougeL"] == pytest.approx(got["rouge1"])
    assert got["bleu"] == pytest.approx(100 * math.exp(1 - 8 / 6) * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    assert "tok:13a" in metrics.signatures("13a")["bleu"]


def test_identical_text_scores_perfectly():
    for tokenize in metrics.TOKENIZERS:
        got = scores(REFERENCES, REFERENCES, tokenize)
        for name in ("rouge1", "rouge2", "rougeL", "rougeL_char", "type_accuracy"):
            assert got[name] == pytest.approx(1.0), (tokenize, name)
        for name in ("bleu", "chrf", "chrfpp", "bleu_question"):
            assert got[name] == pytest.approx(100.0), (tokenize, name)


def test_nfc_predictions_against_nfd_references_score_as_identical():
    nfd = [unicodedata.normalize("NFD", r) for r in REFERENCES]
    assert nfd != REFERENCES and len(nfd[0]) > len(REFERENCES[0])  # jamo, not syllables
    got = scores(REFERENCES, nfd)
    assert got["rougeL"] == pytest.approx(1.0) and got["bleu"] == pytest.approx(100.0)
    assert got["chrf"] == pytest.approx(100.0) and got["type_accuracy"] == 1.0
    assert scores(nfd, REFERENCES) == scores(REFERENCES, REFERENCES)


def test_label_only_difference_changes_type_accuracy_not_the_question_scores():
    relabeled = ["(가정 살펴보기) " + split_label(r)[1] for r in REFERENCES]
    swapped = scores(relabeled, REFERENCES)
    assert swapped["type_accuracy"] == 0.0 and swapped["known_label_rate"] == 0.0
    assert swapped["rougeL_question"] == pytest.approx(1.0) and swapped["bleu_question"] == pytest.approx(100.0)
    assert swapped["rougeL"] < 1.0


def test_rouge_scores_default_tokenizer_would_score_korean_zero():
    """The pitfall the tokenizer setting exists for."""
    default = rouge_scorer.RougeScorer(["rougeL"])
    assert default.score(REFERENCES[0], REFERENCES[0])["rougeL"].fmeasure == 0.0
    assert scores(REFERENCES[:1], REFERENCES[:1])["rougeL"] == pytest.approx(1.0)


def test_subsets_score_like_separate_corpora():
    """Per-type tables and bootstrap resamples score subsets from the per-example values computed once: they must
    equal scoring that subset from scratch."""
    example_scores = metrics.ExampleScores(PREDICTIONS, REFERENCES)
    for subset in ([0, 2], [1, 3, 3], [3]):
        fresh = scores([PREDICTIONS[i] for i in subset], [REFERENCES[i] for i in subset])
        part = example_scores.metrics(subset)
        for name in ("rougeL", "rouge2", "bleu", "chrf", "chrfpp", "bleu_question", "mean_chars", "median_chars"):
            assert part[name] == pytest.approx(fresh[name]), (subset, name)
    assert scores(PREDICTIONS, REFERENCES)["chrf"] == pytest.approx(
        CHRF().corpus_score(PREDICTIONS, [REFERENCES]).score)


def test_lengths_and_empty_rate():
    got = scores(["", "질문?", "긴 질문입니다?"], ["가", "나", "다"])
    assert got["empty_rate"] == pytest.approx(1 / 3) and got["median_chars"] == 3
    assert got["mean_chars"] == pytest.approx((0 + 3 + 8) / 3)


def test_per_type_groups_by_reference_label():
    table = metrics.per_type(metrics.ExampleScores(PREDICTIONS + REFERENCES[:1], REFERENCES + REFERENCES[:1]))
    assert table["이유와 근거 묻기"]["rows"] == 2 and list(table)[0] == "이유와 근거 묻기"
    assert sum(row["rows"] for row in table.values()) == 5
    assert table["이유와 근거 묻기"]["rougeL"] == pytest.approx(
        scores([PREDICTIONS[0], REFERENCES[0]], [REFERENCES[0], REFERENCES[0]])["rougeL"])


def test_the_registry_names_each_metric_once_with_its_direction():
    names = [m.name for m in metrics.REGISTRY]
    assert len(names) == len(set(names))
    text_only = metrics.ExampleScores(PREDICTIONS, REFERENCES).metrics()
    assert list(text_only) == [m.name for m in metrics.REGISTRY if not m.fields]  # the registry's order
    rows = [{"hit_max_new_tokens": False, "semantic": 0.5}] * len(PREDICTIONS)
    assert list(metrics.ExampleScores(PREDICTIONS, REFERENCES, fields=rows, registry=metrics.REGISTRY).metrics()
                ) == names
    assert metrics.metric("empty_rate").direction == metrics.LOWER
    assert metrics.metric("bleu").direction == metrics.HIGHER
    assert metrics.metric("mean_chars").direction == metrics.NEITHER and not metrics.metric("mean_chars").gateable
    assert metrics.metric("no_such_metric") is None
    assert set(metrics.FEATURED) <= {m.name for m in metrics.flagged("per_type")}


def test_label_metrics_by_hand():
    """References A, A, B, B; predictions A (right), B (a known label, wrong), C (unknown), none."""
    got = scores(["(A) 가?", "(B) 가?", "(C) 가?", "가?"], ["(A) 가?", "(A) 가?", "(B) 가?", "(B) 가?"])
    assert got["type_accuracy"] == pytest.approx(1 / 4) and got["known_label_rate"] == pytest.approx(2 / 4)
    assert got["rougeL_question"] == 1.0 and got["rougeL"] < 1.0


def test_no_type_prefix_rate_by_hand():
    """Of four outputs, one starts with a "(type)" label; a bare question, an empty output and a label that is not
    at the start do not."""
    got = scores(["(가정 살펴보기) 왜?", "왜?", "", "왜 (가정 살펴보기)?"], REFERENCES)
    assert got["no_type_prefix_rate"] == pytest.approx(3 / 4)
    assert scores(REFERENCES, REFERENCES)["no_type_prefix_rate"] == 0.0


def test_character_and_token_metrics_by_hand():
    """나는 집에 간다. (9 characters) and 오늘 나는 학교에 간다. (13) against 나는 학교에 간다.
    rougeL_char, spaces dropped: 나는집에간다. (7) vs 나는학교에간다. (8): LCS 나는에간다. = 6;
    오늘나는학교에간다. (10) vs 나는학교에간다. (8): LCS 8.
    ko-mecab tokens: 나 는 집 에 간다 . (6) and 오늘 나 는 학교 에 간다 . (7)."""
    got = scores(["나는 집에 간다.", "오늘 나는 학교에 간다."], ["나는 학교에 간다.", "나는 학교에 간다."])
    f1 = lambda p, r: 2 * p * r / (p + r)  # noqa: E731
    assert got["rougeL_char"] == pytest.approx((f1(6 / 7, 6 / 8) + f1(8 / 10, 1)) / 2)
    assert got["mean_tokens"] == pytest.approx((6 + 7) / 2)
    assert got["mean_chars"] == pytest.approx((9 + 13) / 2) and got["median_chars"] == pytest.approx(11)


def test_hit_max_new_tokens_rate_comes_from_the_prediction_rows():
    rows = [{"hit_max_new_tokens": flag} for flag in (True, False, False, True)]
    got = metrics.ExampleScores(PREDICTIONS, REFERENCES, fields=rows)
    assert got.metrics()["hit_max_new_tokens_rate"] == 0.5 and got.metrics([0, 1, 2])["hit_max_new_tokens_rate"] == \
        pytest.approx(1 / 3)
    assert "hit_max_new_tokens_rate" not in metrics.ExampleScores(PREDICTIONS, REFERENCES).metrics()


def test_resampled_values_are_each_resamples_metric():
    """The vectorized mean, a corpus score and the median: each resample scores like that subset."""
    example_scores = metrics.ExampleScores(PREDICTIONS, REFERENCES)
    indices = np.array([[0, 0, 1, 3], [2, 3, 3, 1]])
    for name in ("rougeL", "bleu", "median_chars"):
        assert list(example_scores.resampled(name, indices)) == [example_scores.metrics(i)[name] for i in indices]


def test_the_committed_baseline_report_is_recomputed_to_the_last_digit():
    """examples/baseline-report.json's metrics, deltas and per-type tables from its own predictions."""
    report = json.loads((ROOT / "examples" / "baseline-report.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in (ROOT / "examples" / "baseline-predictions.jsonl").read_text().splitlines()]
    by_model = {name: [r for r in rows if r["model"] == name] for name in report["models"]}
    references = [r["reference"] for r in by_model["base"]]
    scored = {name: metrics.ExampleScores([r["prediction"] for r in model_rows], references, fields=model_rows)
              for name, model_rows in by_model.items()}
    # semantic's per-row values come from e5 in the score stage: tests/test_semantic.py recomputes them
    recomputed = lambda values: {k: v for k, v in values.items() if k != "semantic"}  # noqa: E731
    for name, model_scores in scored.items():
        got = model_scores.metrics()
        assert {k: got[k] for k in recomputed(report["metrics"][name])} == recomputed(report["metrics"][name])
        assert metrics.per_type(model_scores) == {label: recomputed(row)
                                                  for label, row in report["per_type"][name].items()}
    samples, seed = report["config"]["score"]["bootstrap_samples"], report["config"]["score"]["seed"]
    # the deltas the report has (metrics added since are not in it)
    deltas = recomputed(report["deltas"]["tuned"])
    assert stats.paired_bootstrap(scored["base"], scored["tuned"], list(deltas), samples, seed) == deltas


def test_paired_bootstrap_is_seeded_and_finds_a_real_improvement():
    references = REFERENCES * 10
    base = metrics.ExampleScores(PREDICTIONS * 10, references)
    better = metrics.ExampleScores([r if i % 2 else p for i, (p, r) in enumerate(zip(PREDICTIONS * 10, references))],
                                   references)
    result = stats.paired_bootstrap(base, better, samples=200, seed=7)
    assert result == stats.paired_bootstrap(base, better, samples=200, seed=7)
    for name in ("bleu", "chrf", "rougeL"):
        d = result[name]
        assert d["delta"] == pytest.approx(better.metrics()[name] - base.metrics()[name])  # on all rows
        assert d["delta"] > 0 and d["ci95_low"] > 0 and d["p_value"] < 0.05
        assert d["ci95_low"] <= d["delta"] <= d["ci95_high"]
    tie = stats.paired_bootstrap(base, base, samples=200)
    assert tie["rougeL"]["delta"] == 0 and tie["rougeL"]["p_value"] == 1.0
    # a lower-is-better metric: fewer empty predictions is the improvement
    empty = metrics.ExampleScores([""] * 20 + PREDICTIONS * 5, references)
    d = stats.paired_bootstrap(empty, base, names=("empty_rate",), samples=200)["empty_rate"]
    assert d["delta"] == pytest.approx(-0.5) and d["ci95_high"] < 0 and d["p_value"] < 0.05
    assert np.isclose(stats.paired_bootstrap(base, empty, names=("empty_rate",), samples=200)["empty_rate"]
                      ["p_value"], 1.0)


def test_the_evaluate_module_gives_the_same_numbers_offline_without_warnings(tmp_path):
    """eval/socratic_metrics as a local `evaluate` module (HF_HUB_OFFLINE is set for the suite): the numbers of
    ExampleScores on Korean rows, under the default tokenizer and another."""
    import evaluate

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = evaluate.load(str(ROOT / "eval" / "socratic_metrics"), keep_in_memory=True, cache_dir=str(tmp_path))
        got = module.compute(predictions=PREDICTIONS, references=REFERENCES)
        by_characters = module.compute(predictions=PREDICTIONS, references=REFERENCES, tokenize="char")
    assert got == metrics.ExampleScores(PREDICTIONS, REFERENCES).metrics() and got["rougeL"] > 0.3
    assert by_characters == metrics.ExampleScores(PREDICTIONS, REFERENCES, "char").metrics() != got


def test_type_macro_f1_by_hand():
    """References A, A, B, B, C; predictions A, B, A, none, C.
    A: TP 1, predicted 2, actual 2 -> F1 2/4; B: TP 0 -> 0; C: TP 1, predicted 1, actual 1 -> 1. Mean 0.5.
    A subset of rows scores over its own references' types: rows 0 and 1 (both A): A predicted once, right once,
    actual twice -> 2/3."""
    predictions = ["(A) 가?", "(B) 가?", "(A) 가?", "가?", "(C) 가?"]
    references = ["(A) 가?", "(A) 가?", "(B) 가?", "(B) 가?", "(C) 가?"]
    example_scores = metrics.ExampleScores(predictions, references)
    assert example_scores.metrics()["type_macro_f1"] == pytest.approx(0.5)
    assert example_scores.metrics()["type_accuracy"] == pytest.approx(2 / 5)
    assert example_scores.metrics([0, 1])["type_macro_f1"] == pytest.approx(2 / 3)
    # every prediction the majority type: accuracy 2/5, macro-F1 = F1 of A alone (2*2 / (5 + 2)) / 3 types
    majority = metrics.ExampleScores(["(A) 가?"] * 5, references).metrics()
    assert majority["type_accuracy"] == pytest.approx(2 / 5)
    assert majority["type_macro_f1"] == pytest.approx((4 / 7) / 3)
    assert scores(REFERENCES, REFERENCES)["type_macro_f1"] == 1.0


def test_type_macro_f1_paired_bootstrap_recomputes_it_per_resample():
    references = ["(A) 가?", "(A) 가?", "(B) 가?", "(B) 가?"] * 5
    right = metrics.ExampleScores(references, references)
    wrong = metrics.ExampleScores(["(A) 가?"] * 20, references)
    delta = stats.paired_bootstrap(wrong, right, ["type_macro_f1"], samples=200)["type_macro_f1"]
    assert delta["delta"] == pytest.approx(1 - (2 * 10 / 30) / 2)  # wrong: A's F1 20/30, B's 0
    assert delta["ci95_low"] > 0 and delta["p_value"] < 0.05


@pytest.mark.parametrize("text, looped", [
    ("a b c d a b c d a b c d", True),          # a 4-token unit three times
    ("x a b c d a b c d a b c d y", True),
    ("a b c d a b c d a b c e", False),         # the third time differs in its last token
    ("a b c d a b c d", False),                 # twice only
    ("a b a b a b a b a b a b", True),          # a 2-token unit six times
    ("a b a b a b a b a b", False),             # five times: 10 tokens
    (" ".join(["w"] * 12), True), (" ".join(["w"] * 11), False),
    ("a b c a b c a b c a b c", True),          # a 3-token unit four times (12 tokens)
    ("a b c d e a b c d e a b c d e", False),   # a 5-token unit is no loop of at most 4
])
def test_repetition_loop_definition(text, looped):
    assert metrics.in_a_loop(text.split()) is looped
    assert scores([text], ["a"], tokenize="13a")["repetition_rate"] == float(looped)


def test_repetition_rate_over_korean_morphemes():
    """무슨 뜻인가요? -> 무슨 뜻 인가요 ? (four morphemes): three times in a row is a loop, twice is not."""
    got = scores(["무슨 뜻인가요? 무슨 뜻인가요? 무슨 뜻인가요?", "무슨 뜻인가요? 무슨 뜻인가요?"], ["가", "나"])
    assert got["repetition_rate"] == pytest.approx(1 / 2)


def test_constant_output_rate_by_hand():
    """Outputs ",", ",", "a?", "", "": the two commas share a text (2 rows); empty outputs never count."""
    got = scores([",", ", ", "a?", "", ""], ["가", "나", "다", "라", "마"])
    assert got["constant_output_rate"] == pytest.approx(2 / 5)
    assert scores([","] * 4, ["가", "나", "다", "라"])["constant_output_rate"] == 1.0
    assert scores(PREDICTIONS, REFERENCES)["constant_output_rate"] == 0.0


def test_semantic_reads_the_rows_field_and_is_on_unless_switched_off():
    rows = [{"semantic": v} for v in (0.5, -0.25, 1.0, 0.75)]
    got = metrics.ExampleScores(PREDICTIONS, REFERENCES, fields=rows, registry=metrics.REGISTRY).metrics()
    assert got["semantic"] == pytest.approx(0.5)
    assert "semantic" not in metrics.ExampleScores(PREDICTIONS, REFERENCES, registry=metrics.REGISTRY).metrics()

    class Score:
        semantic = False
    assert metrics.metric("semantic") not in metrics.enabled(Score)
    Score.semantic = None
    assert metrics.metric("semantic") in metrics.enabled(Score)
    assert metrics.metric("semantic").delta and metrics.metric("semantic").per_type
