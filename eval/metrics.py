"""Metrics for Korean questions: pure functions over lists of strings.

Which library computes what (README "Metrics" repeats this):
- ROUGE-1/2/L F1: `rouge_score`, fed Korean morphemes from mecab-ko, the same tokenizer as sacrebleu's
  `ko-mecab`. rouge_score's default tokenizer keeps only [a-z0-9] and silently scores Korean as 0.
- character ROUGE-L: `rouge_score` over characters (spaces dropped); a tokenizer-free cross-check.
- BLEU: sacrebleu, tokenize="ko-mecab", corpus level, with its signature. chrF, chrF++: sacrebleu on raw text.
- `evaluate` is not used: `evaluate.load(...)` fetches its metric scripts from the Hub and fails offline.
ROUGE values are in [0, 1]; BLEU and chrF in [0, 100], as each library reports them.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from functools import lru_cache

import numpy as np
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.tokenizers.tokenizer_ko_mecab import TokenizerKoMecab

from pipeline.data import split_label


@lru_cache(maxsize=1)
def morpheme_tokenizer() -> TokenizerKoMecab:
    return TokenizerKoMecab()


class MorphemeTokens:
    """rouge_score tokenizer: mecab-ko morphemes (sacrebleu's ko-mecab), no lowercasing or filtering."""

    def tokenize(self, text: str) -> list[str]:
        return morpheme_tokenizer()(text).split()


class CharacterTokens:
    def tokenize(self, text: str) -> list[str]:
        return [c for c in text if not c.isspace()]


def rouge_per_example(predictions: list[str], references: list[str]) -> dict[str, list[float]]:
    """F1 of ROUGE-1/2/L over morphemes and ROUGE-L over characters, one value per example."""
    morphemes = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=MorphemeTokens())
    characters = rouge_scorer.RougeScorer(["rougeL"], tokenizer=CharacterTokens())
    scores = defaultdict(list)
    for prediction, reference in zip(predictions, references, strict=True):
        for name, score in morphemes.score(reference, prediction).items():
            scores[name].append(score.fmeasure)
        scores["rougeL_char"].append(characters.score(reference, prediction)["rougeL"].fmeasure)
    return dict(scores)


def corpus_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE F1s, corpus BLEU (ko-mecab), chrF and chrF++."""
    result = {name: float(np.mean(values)) for name, values in rouge_per_example(predictions, references).items()}
    for name, metric in sacrebleu_metrics().items():
        result[name] = metric.corpus_score(predictions, [references]).score
    return result


def sacrebleu_metrics() -> dict[str, BLEU | CHRF]:
    return {"bleu": BLEU(tokenize="ko-mecab"), "chrf": CHRF(), "chrfpp": CHRF(word_order=2)}


def signatures(predictions: list[str], references: list[str]) -> dict[str, str]:
    """sacrebleu's reproducibility signatures (they need a scored corpus: they record the reference count)."""
    result = {}
    for name, metric in sacrebleu_metrics().items():
        metric.corpus_score(predictions, [references])
        result[name] = str(metric.get_signature())
    return result


def label_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Question-type accuracy (the predicted "(label)" equals the reference's) and the share of predictions
    that start with a label seen among the references."""
    known = {split_label(r)[0] for r in references} - {None}
    predicted = [split_label(p)[0] for p in predictions]
    expected = [split_label(r)[0] for r in references]
    return {
        "type_accuracy": float(np.mean([p is not None and p == e for p, e in zip(predicted, expected, strict=True)])),
        "known_label_rate": float(np.mean([p in known for p in predicted])),
    }


def length_stats(texts: list[str]) -> dict[str, float]:
    chars = [len(t) for t in texts]
    morphemes = [len(MorphemeTokens().tokenize(t)) for t in texts]
    return {"mean_chars": float(np.mean(chars)), "median_chars": float(statistics.median(chars)),
            "mean_morphemes": float(np.mean(morphemes)), "empty_rate": float(np.mean([not t.strip() for t in texts]))}


def question_only(texts: list[str]) -> list[str]:
    """The question with its "(type)" label removed."""
    return [split_label(t)[1] for t in texts]


def all_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Every number for one model: on the full target, on the label-free question (suffix _question), label
    accuracy and prediction lengths."""
    metrics = corpus_metrics(predictions, references)
    metrics.update({f"{k}_question": v for k, v in
                    corpus_metrics(question_only(predictions), question_only(references)).items()})
    metrics.update(label_metrics(predictions, references))
    metrics.update(length_stats(predictions))
    return metrics


def per_type(predictions: list[str], references: list[str]) -> dict[str, dict[str, float]]:
    """The main metrics grouped by the reference's question type."""
    groups = defaultdict(list)
    for index, reference in enumerate(references):
        groups[split_label(reference)[0] or "(no label)"].append(index)
    table = {}
    for label, indices in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])):
        preds, refs = [predictions[i] for i in indices], [references[i] for i in indices]
        scores = corpus_metrics(preds, refs)
        table[label] = {"rows": len(indices), "rougeL": scores["rougeL"], "bleu": scores["bleu"],
                        "chrf": scores["chrf"], **label_metrics(preds, refs)}
    return table


def paired_bootstrap(base: list[str], tuned: list[str], references: list[str], samples: int = 1000,
                     seed: int = 12345) -> dict[str, dict[str, float]]:
    """Tuned minus base for BLEU, chrF and ROUGE-L, resampling the same example indices for both models.

    Returns per metric: delta (on the full set), the 95% percentile interval of the resampled deltas, and a
    one-sided p-value for "tuned is not better" (the share of resamples with delta <= 0, add-one smoothed).
    Corpus metrics are recomputed from summed per-sentence sufficient statistics (as sacrebleu's own paired
    bootstrap does), so 1,000 resamples of 10k rows take seconds.
    """
    rng = np.random.default_rng(seed)
    n = len(references)
    indices = rng.integers(0, n, size=(samples, n))
    result = {}
    for name in ("bleu", "chrf"):
        metric = sacrebleu_metrics()[name]
        stats = {model: np.array(metric._extract_corpus_statistics(hyps, [references]))
                 for model, hyps in (("base", base), ("tuned", tuned))}
        full = {m: metric._compute_score_from_stats(list(s.sum(axis=0))).score for m, s in stats.items()}
        deltas = np.array([metric._compute_score_from_stats(list(stats["tuned"][idx].sum(axis=0))).score
                           - metric._compute_score_from_stats(list(stats["base"][idx].sum(axis=0))).score
                           for idx in indices])
        result[name] = _summarize(full["tuned"] - full["base"], deltas)
    rouge_base = np.array(rouge_per_example(base, references)["rougeL"])
    rouge_tuned = np.array(rouge_per_example(tuned, references)["rougeL"])
    deltas = rouge_tuned[indices].mean(axis=1) - rouge_base[indices].mean(axis=1)
    result["rougeL"] = _summarize(float(rouge_tuned.mean() - rouge_base.mean()), deltas)
    return result


def _summarize(delta: float, resampled: np.ndarray) -> dict[str, float]:
    low, high = np.percentile(resampled, [2.5, 97.5])
    p_value = (np.sum(resampled <= 0) + 1) / (len(resampled) + 1)
    return {"delta": float(delta), "ci95_low": float(low), "ci95_high": float(high), "p_value": float(p_value)}
