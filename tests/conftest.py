"""Shared fixtures: the real Gemma tokenizer (from the embedded conversion) and a tiny random Gemma 3.

Tests never touch the network: the Hub is switched off before transformers/datasets are imported.
"""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers (pytest-xdist) on what may be a 2-core machine: one thread each, for torch here
    # and for the processes a test starts, instead of two each contending for the same cores.
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# A test that uses one of these (directly or through another fixture) needs a model: it is marked `model`, and
# `make test-fast` (pytest -m "not model and not slow and not subprocess") leaves it out.
MODEL_FIXTURES = {"embedded_dir", "gemma_tokenizer", "tiny_model_dir"}


def pytest_collection_modifyitems(items):
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)
    # The files with the most model, process and slow tests first, each file's tests in their order: the two
    # workers of `make test` start on the long files, and the short ones fill in at the end, so that one long file
    # does not start last and run alone.
    weight = {}
    for item in items:
        cost = sum(w for name, w in (("model", 1), ("subprocess", 3), ("slow", 10)) if item.get_closest_marker(name))
        weight[item.path] = weight.get(item.path, 0) + cost
    items.sort(key=lambda item: -weight[item.path])


def character_embedder(texts):
    """A stand-in for e5 (eval/semantic.py's Embedder): unit vectors of character counts, hashed into 64
    dimensions. The same text gets the same vector, texts sharing characters point alike; no model loads."""
    import numpy as np

    vectors = np.zeros((len(texts), 64), dtype=np.float32)
    for row, text in enumerate(texts):
        for character in text:
            vectors[row, ord(character) % 64] += 1.0
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


@pytest.fixture(autouse=True, scope="session")
def no_e5_model_in_tests():
    """The score stage's semantic metric embeds with `character_embedder` in every test run in this process (a
    test of the real engines calls eval.semantic's embedders directly)."""
    from eval import semantic

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(semantic, "default_embedder", lambda folder=None: ("character counts (tests)",
                                                                          character_embedder))
        yield


# A Gemma-style chat template (the embedded 270M is a base model and has none), enough to test the chat format.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_splits(folder: Path, train: int, validation: int, test: int) -> Path:
    """A local dataset directory of distinct Korean rows: train.jsonl, validation.jsonl and test.jsonl."""
    for split, start, n in (("train", 0, train), ("validation", 100, validation), ("test", 200, test)):
        write_jsonl(folder / f"{split}.jsonl", korean_rows(n, start))
    return folder


def korean_rows(n: int, start: int = 0) -> list[dict]:
    """Small distinct Korean rows in the dataset's shape."""
    labels = ["의미 명확히 하기", "가정 살펴보기", "이유와 근거 묻기", "함의와 결과 따져보기", "다른 관점 생각하기"]
    return [{"input": f"주장 {i}번: 대중교통 요금을 낮추면 도시가 더 깨끗해진다. 차를 타는 사람이 줄기 때문이다.",
             "target": f"({labels[i % 5]}) {i}번 주장에서 말하는 깨끗함은 무엇을 뜻하나요?"}
            for i in range(start, start + n)]


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The embedded Gemma 3 270M, converted once into the user cache (reused across sessions)."""
    from pipeline.config import ModelConfig
    from pipeline.sources import ensure_embedded_model

    return ensure_embedded_model(ModelConfig())


@pytest.fixture(scope="session")
def gemma_tokenizer(embedded_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, gemma_tokenizer) -> Path:
    """A 2-layer, hidden-64 Gemma 3 with random weights and the real 262k tokenizer, saved as a local model dir."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(gemma_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=2048,
        sliding_window=512, pad_token_id=gemma_tokenizer.pad_token_id, eos_token_id=gemma_tokenizer.eos_token_id,
        bos_token_id=gemma_tokenizer.bos_token_id, tie_word_embeddings=True,
    )
    model = Gemma3ForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-gemma3")
    model.save_pretrained(path, safe_serialization=True)
    gemma_tokenizer.save_pretrained(path)
    return path
