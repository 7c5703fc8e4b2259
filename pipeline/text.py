"""Text conventions shared by the data loader and the metrics: Unicode normalization and the "(type)" label.

Text saved on macOS is often NFD: Hangul as jamo, not syllables. A prediction identical to its reference but in
the other form would score ROUGE-L 0.18 and type accuracy 0, and NFD reaches the tokenizer as different tokens.
So all text is NFC-normalized at the two doors it comes in by: where data is loaded (pipeline/data.py) and where
predictions are scored (eval/metrics.py).
"""

from __future__ import annotations

import re
import unicodedata

LABEL_PATTERN = re.compile(r"^\s*\(([^()]+)\)\s*")
NO_LABEL = "(no label)"  # the question type of a text without a "(type)" label


def normalize(text: str) -> str:
    """Unicode NFC: composed Hangul syllables and accented letters, whatever form the file had."""
    return unicodedata.normalize("NFC", text)


def split_label(text: str) -> tuple[str | None, str]:
    """'(다른 관점 생각하기) 질문?' -> ('다른 관점 생각하기', '질문?'); no leading label -> (None, text)."""
    match = LABEL_PATTERN.match(text)
    if not match:
        return None, text.strip()
    return match.group(1).strip(), text[match.end():].strip()


def question_type(text: str) -> str:
    """The "(type)" label of a text, or NO_LABEL: the group a row counts in (data check, stratified samples)."""
    return split_label(text)[0] or NO_LABEL


def with_label(label: str, question: str) -> str:
    """The target layout of the Korean dataset, built from a separate label column: '(label) question'."""
    return f"({label.strip()}) {question.strip()}"
