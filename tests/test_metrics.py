import pytest
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF

from eval import metrics

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


def test_identical_korean_scores_perfectly():
    scores = metrics.corpus_metrics(REFERENCES, REFERENCES)
    assert scores["rougeL"] == pytest.approx(1.0) and scores["rouge1"] == pytest.approx(1.0)
    assert scores["rougeL_char"] == pytest.approx(1.0)
    assert scores["bleu"] == pytest.approx(100.0) and scores["chrf"] == pytest.approx(100.0)


def test_rouge_scores_default_tokenizer_would_score_korean_zero():
    """The pitfall our morpheme tokenizer exists for."""
    default = rouge_scorer.RougeScorer(["rougeL"])
    assert default.score(REFERENCES[0], REFERENCES[0])["rougeL"].fmeasure == 0.0
    assert metrics.corpus_metrics(REFERENCES[:1], REFERENCES[:1])["rougeL"] == pytest.approx(1.0)


def test_korean_pairs_are_nonzero_and_equal_direct_library_computations():
    scores = metrics.corpus_metrics(PREDICTIONS, REFERENCES)
    assert all(value > 0 for value in scores.values()), scores
    tokenizer = metrics.morpheme_tokenizer()

    class Direct:
        def tokenize(self, text):
            return tokenizer(text).split()

    direct = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=Direct())
    for name in ("rouge1", "rouge2", "rougeL"):
        expected = sum(direct.score(r, p)[name].fmeasure for p, r in PAIRS) / len(PAIRS)
        assert scores[name] == pytest.approx(expected)
    assert scores["bleu"] == pytest.approx(BLEU(tokenize="ko-mecab").corpus_score(PREDICTIONS, [REFERENCES]).score)
    assert scores["chrf"] == pytest.approx(CHRF().corpus_score(PREDICTIONS, [REFERENCES]).score)
    assert scores["chrfpp"] == pytest.approx(CHRF(word_order=2).corpus_score(PREDICTIONS, [REFERENCES]).score)
    assert "tok:ko-mecab" in metrics.signatures(PREDICTIONS, REFERENCES)["bleu"]


def test_label_only_mismatch_changes_type_accuracy_not_label_free_rouge():
    relabeled = ["(가정 살펴보기) " + metrics.split_label(r)[1] for r in REFERENCES]
    same = metrics.all_metrics(REFERENCES, REFERENCES)
    swapped = metrics.all_metrics(relabeled, REFERENCES)
    assert same["type_accuracy"] == 1.0 and swapped["type_accuracy"] == 0.0
    assert swapped["rougeL_question"] == pytest.approx(1.0) and swapped["bleu_question"] == pytest.approx(100.0)
    assert swapped["rougeL"] < 1.0
    assert swapped["known_label_rate"] == 0.0  # 가정 살펴보기 is not among these references' labels


def test_lengths_and_empty_rate():
    stats = metrics.length_stats(["", "질문?", "긴 질문입니다?"])
    assert stats["empty_rate"] == pytest.approx(1 / 3) and stats["median_chars"] == 3


def test_per_type_groups_by_reference_label():
    table = metrics.per_type(PREDICTIONS + REFERENCES[:1], REFERENCES + REFERENCES[:1])
    assert table["이유와 근거 묻기"]["rows"] == 2 and list(table)[0] == "이유와 근거 묻기"
    assert sum(row["rows"] for row in table.values()) == 5


def test_paired_bootstrap_is_seeded_and_finds_a_real_improvement():
    references = REFERENCES * 10
    base = PREDICTIONS * 10
    better = [r if i % 2 else p for i, (p, r) in enumerate(zip(base, references))]
    result = metrics.paired_bootstrap(base, better, references, samples=200, seed=7)
    assert result == metrics.paired_bootstrap(base, better, references, samples=200, seed=7)
    for name in ("bleu", "chrf", "rougeL"):
        d = result[name]
        assert d["delta"] > 0 and d["ci95_low"] > 0 and d["p_value"] < 0.05
        assert d["ci95_low"] <= d["delta"] <= d["ci95_high"]
    tie = metrics.paired_bootstrap(base, base, references, samples=200)
    assert tie["rougeL"]["delta"] == 0 and tie["rougeL"]["p_value"] == 1.0
