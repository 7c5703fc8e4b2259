"""Metrics: pure functions over lists of strings (predictions and references of one model on the same rows).

    scores = ExampleScores(predictions, references, tokenize="ko-mecab")
    scores.metrics()            # every number for all rows       scores.metrics(indices)   # for a subset
    paired_bootstrap(scores_a, scores_b, names, samples, seed)     # b minus a, resampling the same rows

Which library computes what (README "Metrics" repeats this):
- ROUGE-1/2/L F1: `rouge_score`, fed the tokens of sacrebleu's tokenizer named by `score.tokenize`: mecab-ko
  morphemes (ko-mecab, the default), 13a or intl for space-separated languages, or characters. rouge_score's own
  tokenizer keeps only [a-z0-9] and silently scores Korean as 0.
- rougeL_char: `rouge_score` over characters (spaces dropped); a tokenizer-free cross-check.
- BLEU: sacrebleu, corpus level, with the same tokenizer, and its signature. chrF, chrF++: sacrebleu on raw text.
- type accuracy, known-label rate, lengths, empty rate: ours.
Every text is NFC-normalized first (pipeline/text.py): NFD and NFC spellings of the same text score as equal.
ROUGE values are in [0, 1]; BLEU and chrF in [0, 100], as each library reports them.

Each example is scored once: ROUGE F1s and flags as per-example values, BLEU and chrF as sacrebleu's
per-sentence sufficient statistics. Any subset of rows (a question type, a bootstrap resample) is then scored by
averaging or summing them, exactly as the corpus functions would (BLEU and chrF sum the same statistics).
"""

from __future__ import annotations

import statistics
from functools import lru_cache

import numpy as np
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF

from pipeline.text import normalize, split_label

TOKENIZERS = ("ko-mecab", "13a", "intl", "char")
HIGHER, LOWER, NEITHER = 1, -1, 0
# Which way is better for each metric: quality metrics rise, failure rates fall, lengths only describe.
_QUALITY = ("rouge1", "rouge2", "rougeL", "rougeL_char", "bleu", "chrf", "chrfpp")
DIRECTION = {**{name: HIGHER for name in _QUALITY}, **{f"{name}_question": HIGHER for name in _QUALITY},
             "type_accuracy": HIGHER, "known_label_rate": HIGHER, "empty_rate": LOWER,
             "hit_max_new_tokens_rate": LOWER, "mean_chars": NEITHER, "median_chars": NEITHER, "mean_tokens": NEITHER}
CORPUS = ("bleu", "chrf", "chrfpp")  # scored from summed sufficient statistics; the rest are means over examples
# The metrics whose paired-bootstrap deltas the report carries for every model against the reference model.
REPORTED_DELTAS = ("rougeL", "bleu", "chrf", "rougeL_question", "type_accuracy")


@lru_cache(maxsize=None)
def sacrebleu_metric(name: str, tokenize: str):
    return {"bleu": lambda: BLEU(tokenize=tokenize), "chrf": CHRF, "chrfpp": lambda: CHRF(word_order=2)}[name]()


class Tokens:
    """A rouge_score tokenizer: the tokens of sacrebleu's `tokenize`, with no lowercasing or filtering."""

    def __init__(self, tokenize: str):
        self.split = sacrebleu_metric("bleu", tokenize).tokenizer

    def tokenize(self, text: str) -> list[str]:
        return self.split(text).split()


class Characters:
    def tokenize(self, text: str) -> list[str]:
        return [c for c in text if not c.isspace()]


class ExampleScores:
    """One model's predictions against the references, scored once per example."""

    def __init__(self, predictions: list[str], references: list[str], tokenize: str = "ko-mecab"):
        predictions, references = [normalize(t) for t in predictions], [normalize(t) for t in references]
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        self.rows, self.predictions, self.tokenize = len(references), predictions, tokenize
        self.values: dict[str, np.ndarray] = {}  # per-example values whose mean is the metric
        self.stats: dict[str, np.ndarray] = {}  # per-example sufficient statistics whose sum gives the metric
        question_predictions, question_references = question_only(predictions), question_only(references)
        for suffix, preds, refs in (("", predictions, references),
                                    ("_question", question_predictions, question_references)):
            for name, values in rouge_per_example(preds, refs, tokenize).items():
                self.values[name + suffix] = values
            for name in CORPUS:
                metric = sacrebleu_metric(name, tokenize)
                self.stats[name + suffix] = np.array(metric._extract_corpus_statistics(preds, [refs]), dtype=float)
        known = {split_label(r)[0] for r in references} - {None}
        predicted, expected = [split_label(p)[0] for p in predictions], [split_label(r)[0] for r in references]
        self.values["type_accuracy"] = np.array([p is not None and p == e for p, e in zip(predicted, expected)], float)
        self.values["known_label_rate"] = np.array([p in known for p in predicted], float)
        self.values["empty_rate"] = np.array([not p.strip() for p in predictions], float)
        self.values["mean_chars"] = np.array([len(p) for p in predictions], float)
        tokens = Tokens(tokenize)
        self.values["mean_tokens"] = np.array([len(tokens.tokenize(p)) for p in predictions], float)
        self.references = references

    def metrics(self, indices=None) -> dict[str, float]:
        """Every metric over the rows `indices` (all rows by default)."""
        rows = np.arange(self.rows) if indices is None else np.asarray(indices)
        result = {name: float(values[rows].mean()) for name, values in self.values.items()}
        for name, stats in self.stats.items():
            result[name] = corpus_score(name, stats[rows].sum(axis=0), self.tokenize)
        result["median_chars"] = float(statistics.median(len(self.predictions[i]) for i in rows))
        return result

    def resampled(self, name: str, indices: np.ndarray) -> np.ndarray:
        """Metric `name` on each row of `indices` (resamples x rows): one value per resample."""
        if name in self.stats:
            return np.array([corpus_score(name, self.stats[name][idx].sum(axis=0), self.tokenize) for idx in indices])
        return self.values[name][indices].mean(axis=1)


def corpus_score(name: str, summed_stats: np.ndarray, tokenize: str) -> float:
    metric = sacrebleu_metric(name.removesuffix("_question"), tokenize)
    return float(metric._compute_score_from_stats(list(summed_stats)).score)


def rouge_per_example(predictions: list[str], references: list[str], tokenize: str) -> dict[str, np.ndarray]:
    """F1 of ROUGE-1/2/L over `tokenize`'s tokens and ROUGE-L over characters, one value per example."""
    words = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=Tokens(tokenize))
    characters = rouge_scorer.RougeScorer(["rougeL"], tokenizer=Characters())
    scores = {"rouge1": [], "rouge2": [], "rougeL": [], "rougeL_char": []}
    for prediction, reference in zip(predictions, references, strict=True):
        for name, score in words.score(reference, prediction).items():
            scores[name].append(score.fmeasure)
        scores["rougeL_char"].append(characters.score(reference, prediction)["rougeL"].fmeasure)
    return {name: np.array(values, dtype=float) for name, values in scores.items()}


def question_only(texts: list[str]) -> list[str]:
    """The question with its "(type)" label removed."""
    return [split_label(t)[1] for t in texts]


def signatures(tokenize: str) -> dict[str, str]:
    """sacrebleu's reproducibility signatures of BLEU, chrF and chrF++ as configured (one reference per row)."""
    result = {}
    for name in CORPUS:
        metric = sacrebleu_metric(name, tokenize)
        metric.corpus_score(["a"], [["a"]])  # the signature records the reference count, known after scoring
        result[name] = str(metric.get_signature())
    return result


def per_type(scores: ExampleScores, names=("rougeL", "bleu", "chrf", "type_accuracy", "known_label_rate")) -> dict:
    """The main metrics grouped by the reference's question type, largest group first."""
    groups: dict[str, list[int]] = {}
    for index, reference in enumerate(scores.references):
        groups.setdefault(split_label(reference)[0] or "(no label)", []).append(index)
    table = {}
    for label, indices in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])):
        subset = scores.metrics(indices)
        table[label] = {"rows": len(indices), **{name: subset[name] for name in names}}
    return table


def paired_bootstrap(a: ExampleScores, b: ExampleScores, names=REPORTED_DELTAS, samples: int = 1000,
                     seed: int = 12345) -> dict[str, dict[str, float]]:
    """b minus a for each metric, resampling the same row indices for both (they must score the same rows).

    Per metric: delta (on all rows), the 95% percentile interval of the resampled deltas, and a one-sided p-value
    for "b is not better" (the share of resamples in which b is not better in the metric's direction, add-one
    smoothed). Corpus metrics are recomputed from summed per-sentence sufficient statistics (as sacrebleu's own
    paired bootstrap does), so 1,000 resamples of 10k rows take seconds.
    """
    if a.references != b.references:
        raise ValueError("paired bootstrap needs both models scored on the same references")
    indices = np.random.default_rng(seed).integers(0, a.rows, size=(samples, a.rows))
    full_a, full_b = a.metrics(), b.metrics()
    result = {}
    for name in names:
        deltas = b.resampled(name, indices) - a.resampled(name, indices)
        low, high = np.percentile(deltas, [2.5, 97.5])
        not_better = np.sum(deltas * (DIRECTION[name] or 1) <= 0)
        result[name] = {"delta": full_b[name] - full_a[name], "ci95_low": float(low), "ci95_high": float(high),
                        "p_value": float((not_better + 1) / (samples + 1))}
    return result
