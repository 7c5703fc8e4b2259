"""Metrics: one definition per metric (REGISTRY), and pure functions over lists of strings that compute them.

    scores = ExampleScores(predictions, references, tokenize="ko-mecab")
    scores.metrics()            # every number for all rows       scores.metrics(indices)   # for a subset

(What is done with the per-row values, the paired bootstrap and the gate's sensitivity, is eval/stats.py's.)

A `Metric` is all the job knows of one metric: name, better direction, per-example function and reduce, range,
and where it is shown. The report schema, report.md and .png, `run`'s summary, the model card, compare's directions
and pairing, the tracker keys and the checkpoint table read REGISTRY: a new metric is one entry (and its test).
Each example is scored once (ROUGE F1s and flags as values, BLEU and chrF as sacrebleu's per-sentence sufficient
statistics); any subset of rows (a question type, a bootstrap resample) reduces those rows' values, exactly as the
corpus functions would score that subset.

Which library computes what (README "Metrics" repeats this):
- ROUGE-1/2/L F1: `rouge_score`, fed the tokens of sacrebleu's tokenizer named by `score.tokenize`: mecab-ko
  morphemes (ko-mecab, the default), 13a or intl for space-separated languages, or characters. rouge_score's own
  tokenizer keeps only [a-z0-9] and silently scores Korean as 0.
- rougeL_char: `rouge_score` over characters (spaces dropped); a tokenizer-free cross-check.
- BLEU: sacrebleu, corpus level, with the same tokenizer, and its signature. chrF, chrF++: sacrebleu on raw text.
- type accuracy and macro-F1, known-label rate, lengths, empty, repetition-loop, repeated-output and
  hit-max-new-tokens rates: ours. semantic: eval/semantic.py's e5 cosines, computed by the score stage.
Every text is NFC-normalized first (pipeline/text.py): NFD and NFC spellings of the same text score as equal.
ROUGE values are in [0, 1]; BLEU and chrF in [0, 100], as each library reports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF

from pipeline.text import NO_LABEL, normalize, split_label

TOKENIZERS = ("ko-mecab", "13a", "intl", "char")
HIGHER, LOWER, NEITHER = 1, -1, 0


@dataclass(frozen=True)
class Rows:
    """What a per-example function is given: one model's predictions and their references (NFC-normalized), the
    tokenizer of ROUGE and BLEU, and each prediction row's other fields as the generate stage wrote them
    (predictions.jsonl: hit_max_new_tokens, ...; empty dicts when only texts are scored)."""

    predictions: list[str]
    references: list[str]
    tokenize: str
    fields: list[dict]

    def questions(self) -> Rows:
        """The same rows with the "(type)" label removed from every text."""
        return replace(self, predictions=question_only(self.predictions), references=question_only(self.references))


def mean(values: np.ndarray) -> float:
    return float(values.mean())


def median(values: np.ndarray) -> float:
    return float(np.median(values))


@dataclass(frozen=True)
class Metric:
    """One metric. Its values are `per_example(rows)`: a number per row (1-D), or a row of sufficient statistics
    per row (2-D, as corpus BLEU needs; or label codes for a score over labels); the metric of any subset of rows
    (all, a question type, a bootstrap resample) is `reduce` of those rows' values."""

    name: str  # its key in report.json, in compare's --max-drop and in the trackers
    direction: int  # HIGHER or LOWER is better; NEITHER: it describes the outputs and cannot be gated
    per_example: Callable[[Rows], np.ndarray]
    range: tuple[float | None, float | None]  # the values it can take (None: unbounded); the report schema checks
    reduce: Callable[[np.ndarray], float] = mean
    title: str = ""  # its name in prose: the schema's description, plots, the card's model-index
    format: str = ".4f"  # a value of it in the narrow tables (per question type, per checkpoint)
    tokenized: bool = False  # computed over score.tokenize's tokens (the card records the tokenizer with it)
    fields: tuple[str, ...] = ()  # the prediction-row fields it reads: scoring texts alone leaves it out
    pairable: bool = True  # its paired-bootstrap interval means something (compare's interval rules need one)
    hub_type: str | None = None  # the Hub's metric type, for the card's model-index; None: not listed there
    enabled: Callable[[Any], bool] | None = None  # given cfg.score, whether it is computed; None: always
    # Where it is shown, besides report.json and report.md's table of every metric:
    headline: bool = False  # `run`'s summary table and the model card's results
    delta: bool = False  # a paired-bootstrap delta against score.reference in the report (--require-improvement)
    per_type: bool = False  # the report's table by question type
    checkpoint: bool = False  # the table by training checkpoint (score.checkpoints)
    tracked: bool = False  # logged to train.report_to's trackers once scored

    @property
    def gateable(self) -> bool:
        return self.direction != NEITHER


# sacrebleu's corpus metrics by name, from the tokenizer setting (chrF reads raw text and ignores it).
SACREBLEU = {"bleu": lambda tokenize: BLEU(tokenize=tokenize), "chrf": lambda tokenize: CHRF(),
             "chrfpp": lambda tokenize: CHRF(word_order=2)}


@lru_cache(maxsize=None)
def sacrebleu_metric(name: str, tokenize: str):
    return SACREBLEU[name](tokenize)


def sacrebleu_corpus(name: str) -> dict:
    """`per_example` and `reduce` of a sacrebleu corpus metric: each row's sufficient statistics, and the score of
    the rows' summed statistics (what corpus_score computes on those rows; the statistics already hold the
    tokenizer's work, so scoring them needs no tokenizer)."""

    def statistics(rows: Rows) -> np.ndarray:
        metric = sacrebleu_metric(name, rows.tokenize)
        return np.array(metric._extract_corpus_statistics(rows.predictions, [rows.references]), dtype=float)

    def score(stats: np.ndarray) -> float:
        return float(sacrebleu_metric(name, "none")._compute_score_from_stats(list(stats.sum(axis=0))).score)

    return {"per_example": statistics, "reduce": score}


class Tokens:
    """A rouge_score tokenizer: the tokens of sacrebleu's `tokenize`, with no lowercasing or filtering."""

    def __init__(self, tokenize: str):
        self.split = sacrebleu_metric("bleu", tokenize).tokenizer

    def tokenize(self, text: str) -> list[str]:
        return self.split(text).split()


class Characters:
    def tokenize(self, text: str) -> list[str]:
        return [c for c in text if not c.isspace()]


def rouge(kind: str, characters: bool = False) -> Callable[[Rows], np.ndarray]:
    """F1 of ROUGE `kind` (rouge1, rouge2, rougeL) per row, over score.tokenize's tokens or over characters."""

    def f1(rows: Rows) -> np.ndarray:
        scorer = rouge_scorer.RougeScorer([kind], tokenizer=Characters() if characters else Tokens(rows.tokenize))
        return np.array([scorer.score(reference, prediction)[kind].fmeasure
                         for prediction, reference in zip(rows.predictions, rows.references, strict=True)], float)

    return f1


def labels(texts: list[str]) -> list[str | None]:
    return [split_label(t)[0] for t in texts]


def question_only(texts: list[str]) -> list[str]:
    """The question with its "(type)" label removed."""
    return [split_label(t)[1] for t in texts]


def same_type(rows: Rows) -> np.ndarray:
    """1 where the prediction's "(type)" label is the reference's."""
    return np.array([p is not None and p == e for p, e in zip(labels(rows.predictions), labels(rows.references))],
                    float)


def known_type(rows: Rows) -> np.ndarray:
    """1 where the prediction's label is one the references use (anywhere in the test rows)."""
    known = set(labels(rows.references)) - {None}
    return np.array([p in known for p in labels(rows.predictions)], float)


def empty(rows: Rows) -> np.ndarray:
    return np.array([not p.strip() for p in rows.predictions], float)


def characters(rows: Rows) -> np.ndarray:
    return np.array([len(p) for p in rows.predictions], float)


def tokens(rows: Rows) -> np.ndarray:
    split = Tokens(rows.tokenize)
    return np.array([len(split.tokenize(p)) for p in rows.predictions], float)


def hit_max_new_tokens(rows: Rows) -> np.ndarray:
    return np.array([row["hit_max_new_tokens"] for row in rows.fields], float)


def type_codes(rows: Rows) -> np.ndarray:
    """Per row, (predicted, reference) label as the index of that label among the references' labels (sorted);
    -1 for no label, and for a predicted label no reference uses (it is no type's prediction)."""
    code = {label: i for i, label in enumerate(sorted(set(labels(rows.references)) - {None}))}
    return np.array([[code.get(p, -1), code.get(e, -1)] for p, e in zip(labels(rows.predictions),
                                                                        labels(rows.references))], int).reshape(-1, 2)


def macro_f1(codes: np.ndarray) -> float:
    """Mean over the types these rows' references have of each type's F1 = 2 TP / (predicted + actual); a type
    never predicted right scores 0. Rows whose reference has no label count as no type's (only as wrong labels)."""
    predicted, actual = codes[:, 0], codes[:, 1]
    types = np.unique(actual[actual >= 0])
    if not len(types):
        return 0.0
    size = types.max() + 1
    right = np.bincount(actual[(predicted == actual) & (actual >= 0)], minlength=size)[types]
    guessed = np.bincount(predicted[predicted >= 0], minlength=max(size, predicted.max() + 1))[types]
    return float(np.mean(2 * right / (guessed + np.bincount(actual[actual >= 0], minlength=size)[types])))


LOOP_UNIT, LOOP_REPEATS = 4, 3


def in_a_loop(tokens: list[str]) -> bool:
    """Whether some LOOP_UNIT * LOOP_REPEATS (12) consecutive tokens repeat one unit of at most LOOP_UNIT tokens:
    for some period p in 1..4, tokens[j] == tokens[j + p] for 12 - p consecutive j. That is a 4-token phrase three
    times in a row, a 2-token one six times, one token twelve times (a 3-token unit: four times)."""
    span = LOOP_UNIT * LOOP_REPEATS
    for period in range(1, LOOP_UNIT + 1):
        run = 0
        for j in range(len(tokens) - period):
            run = run + 1 if tokens[j] == tokens[j + period] else 0
            if run >= span - period:
                return True
    return False


def repetition(rows: Rows) -> np.ndarray:
    """1 where the output is caught in a loop (`in_a_loop`) over score.tokenize's tokens."""
    split = Tokens(rows.tokenize)
    return np.array([in_a_loop(split.tokenize(p)) for p in rows.predictions], float)


def repeated_output(rows: Rows) -> np.ndarray:
    """1 where the output (stripped) is not empty and another row of the same model has the same output: one text
    for many inputs, as a collapsed model writes. Counted over all the rows scored, whatever subset is reduced."""
    texts = [p.strip() for p in rows.predictions]
    counts: dict[str, int] = {}
    for text in texts:
        counts[text] = counts.get(text, 0) + 1
    return np.array([bool(text) and counts[text] > 1 for text in texts], float)


def semantic(rows: Rows) -> np.ndarray:
    """The e5 cosine the score stage computed per row (eval/semantic.py) and put in the row's "semantic" field."""
    return np.array([row["semantic"] for row in rows.fields], float)


def metric(name: str) -> Metric | None:
    return next((m for m in REGISTRY if m.name == name), None)


def flagged(flag: str) -> tuple[Metric, ...]:
    """The registry's metrics shown where `flag` (headline, delta, per_type, checkpoint, tracked) says."""
    return tuple(m for m in REGISTRY if getattr(m, flag))


def enabled(score_cfg) -> tuple[Metric, ...]:
    """The metrics the score stage computes under this config (cfg.score)."""
    return tuple(m for m in REGISTRY if m.enabled is None or m.enabled(score_cfg))


def on_questions(name: str, **shown) -> Metric:
    """Metric `name` of the question alone (the "(type)" label removed from prediction and reference), named
    `<name>_question`; shown where `shown` says (nowhere by default)."""
    whole = metric(name)
    where = {"hub_type": None, "headline": False, "delta": False, "per_type": False, "checkpoint": False,
             "tracked": False}
    return replace(whole, name=f"{name}_question", per_example=lambda rows: whole.per_example(rows.questions()),
                   title=f"{whole.title} of the question without its label", **{**where, **shown})


ZERO_ONE, ZERO_HUNDRED, NON_NEGATIVE = (0, 1), (0, 100), (0, None)
# Order: how the report, its tables and the card list them.
REGISTRY: tuple[Metric, ...] = (
    Metric("rougeL", HIGHER, rouge("rougeL"), ZERO_ONE, title="ROUGE-L F1", tokenized=True, hub_type="rouge",
           headline=True, delta=True, per_type=True, checkpoint=True, tracked=True),
    Metric("rouge1", HIGHER, rouge("rouge1"), ZERO_ONE, title="ROUGE-1 F1", tokenized=True, hub_type="rouge",
           headline=True),
    Metric("rouge2", HIGHER, rouge("rouge2"), ZERO_ONE, title="ROUGE-2 F1", tokenized=True, hub_type="rouge",
           headline=True),
    Metric("rougeL_char", HIGHER, rouge("rougeL", characters=True), ZERO_ONE, title="ROUGE-L F1 over characters",
           hub_type="rouge", headline=True),
    Metric("bleu", HIGHER, range=ZERO_HUNDRED, **sacrebleu_corpus("bleu"), title="BLEU", format=".2f",
           tokenized=True, hub_type="bleu", headline=True, delta=True, per_type=True, checkpoint=True, tracked=True),
    Metric("chrf", HIGHER, range=ZERO_HUNDRED, **sacrebleu_corpus("chrf"), title="chrF", format=".2f",
           hub_type="chrf", headline=True, delta=True, per_type=True, checkpoint=True, tracked=True),
    Metric("chrfpp", HIGHER, range=ZERO_HUNDRED, **sacrebleu_corpus("chrfpp"), title="chrF++", format=".2f",
           hub_type="chrf", headline=True),
)
REGISTRY += (
    on_questions("rougeL", hub_type="rouge", headline=True, delta=True),
    on_questions("rouge1"),
    on_questions("rouge2"),
    on_questions("rougeL_char"),
    on_questions("bleu", headline=True),
    on_questions("chrf"),
    on_questions("chrfpp"),
    Metric("type_accuracy", HIGHER, same_type, ZERO_ONE, title="question-type accuracy", format=".3f",
           hub_type="accuracy", headline=True, delta=True, per_type=True, checkpoint=True, tracked=True),
    Metric("known_label_rate", HIGHER, known_type, ZERO_ONE, title="share of outputs with a known question type",
           format=".3f", headline=True, per_type=True),
    Metric("type_macro_f1", HIGHER, type_codes, ZERO_ONE, reduce=macro_f1, format=".3f", headline=True, delta=True,
           title="question-type macro-F1 over the references' types"),
    Metric("no_type_prefix_rate", LOWER, lambda rows: np.array([p is None for p in labels(rows.predictions)], float),
           ZERO_ONE, title="share of outputs that do not start with a (type) label", format=".3f", headline=True),
    Metric("hit_max_new_tokens_rate", LOWER, hit_max_new_tokens, ZERO_ONE, fields=("hit_max_new_tokens",),
           title="share of outputs cut at generate.max_new_tokens", format=".3f", headline=True),
    Metric("empty_rate", LOWER, empty, ZERO_ONE, title="share of empty outputs", format=".3f", headline=True,
           tracked=True),
    Metric("repetition_rate", LOWER, repetition, ZERO_ONE, title="share of outputs caught in a repetition loop",
           format=".3f", tokenized=True, headline=True),
    Metric("constant_output_rate", LOWER, repeated_output, ZERO_ONE, format=".3f", headline=True,
           title="share of outputs another row also has (the same text for different inputs)"),
    # On when the score stage computes it (score.semantic true, or null and cheap: eval/semantic.py's plan).
    Metric("semantic", HIGHER, semantic, (-1, 1), fields=("semantic",),
           enabled=lambda score: score.semantic is not False, headline=True, delta=True, per_type=True,
           title="e5 cosine of the prediction's and the reference's question"),
    Metric("mean_chars", NEITHER, characters, NON_NEGATIVE, title="mean characters per output", format=".1f",
           headline=True),
    # A median of integer lengths jumps between a few values when resampled: its interval would say little.
    Metric("median_chars", NEITHER, characters, NON_NEGATIVE, reduce=median, title="median characters per output",
           format=".1f", pairable=False),
    Metric("mean_tokens", NEITHER, tokens, NON_NEGATIVE, title="mean tokens per output", format=".1f",
           tokenized=True),
)
# The metrics the narrow tables by question type show (report.md, the card); report.png plots the first.
FEATURED = ("rougeL", "type_accuracy")


class ExampleScores:
    """One model's predictions against the references, each metric scored once per example.

    `fields`: the prediction rows (predictions.jsonl), for the metrics that read more than the text; without them
    those metrics are left out. `registry`: the metrics to compute (default: every one that is always on)."""

    def __init__(self, predictions: list[str], references: list[str], tokenize: str = "ko-mecab",
                 fields: list[dict] | None = None, registry: tuple[Metric, ...] | None = None):
        if len(predictions) != len(references) or (fields is not None and len(fields) != len(references)):
            raise ValueError(f"{len(predictions)} predictions ({len(fields or ())} rows) for {len(references)} "
                             "references")
        rows = Rows([normalize(t) for t in predictions], [normalize(t) for t in references], tokenize,
                    list(fields) if fields is not None else [{}] * len(references))
        registry = tuple(m for m in REGISTRY if m.enabled is None) if registry is None else registry
        self.rows, self.references, self.tokenize = len(references), rows.references, tokenize
        self.computed = {m.name: m for m in registry if all(f in row for row in rows.fields for f in m.fields)}
        self.values = {name: m.per_example(rows) for name, m in self.computed.items()}

    def metrics(self, indices=None) -> dict[str, float]:
        """Every metric over the rows `indices` (all rows by default)."""
        rows = np.arange(self.rows) if indices is None else np.asarray(indices)
        return {name: m.reduce(self.values[name][rows]) for name, m in self.computed.items()}

    def resampled(self, name: str, indices: np.ndarray) -> np.ndarray:
        """Metric `name` on each row of `indices` (resamples x rows): one value per resample."""
        metric, values = self.computed[name], self.values[name]
        if metric.reduce is mean:  # all resamples in one vectorized mean
            return values[indices].mean(axis=1)
        return np.array([metric.reduce(values[resample]) for resample in indices])


def signatures(tokenize: str) -> dict[str, str]:
    """sacrebleu's reproducibility signatures of BLEU, chrF and chrF++ as configured (one reference per row)."""
    result = {}
    for name in SACREBLEU:
        scorer = sacrebleu_metric(name, tokenize)
        scorer.corpus_score(["a"], [["a"]])  # the signature records the reference count, known after scoring
        result[name] = str(scorer.get_signature())
    return result


def per_type(scores: ExampleScores, names: list[str] | None = None) -> dict:
    """The per-type metrics (default: those flagged per_type) grouped by the reference's question type, largest
    group first."""
    names = [name for name, m in scores.computed.items() if m.per_type] if names is None else names
    table = {}
    for label, indices in type_groups(scores.references).items():
        subset = scores.metrics(indices)
        table[label] = {"rows": len(indices), **{name: subset[name] for name in names}}
    return table


def type_groups(references: list[str]) -> dict[str, list[int]]:
    """Row indices by the reference's question type ("(no label)" for none), largest group first."""
    groups: dict[str, list[int]] = {}
    for index, label in enumerate(labels(references)):
        groups.setdefault(label or NO_LABEL, []).append(index)
    return dict(sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])))
