"""The rows as token ids, from the prompt style (pipeline/prompt.py), so that a generation prompt is exactly the
prompt the model was trained on: training examples (prompt + completion, the loss on the completion only),
generation prompts, and the token ids where a generated row stops. Inputs over the stage's max_prompt_tokens are
cut from the left of the context.

    sft_dataset(rows, tokenizer, cfg) -> (datasets.Dataset of input_ids + completion_mask, rows cut)
    prompt_ids(tokenizer, rows, cfg)  -> ([prompt ids per row], rows cut)
    decoding(tokenizer, cfg)          -> Decoding: the generate settings, the style's stop tokens and strings
"""

from __future__ import annotations

from datasets import Dataset

from pipeline.config import Config
from pipeline.decode import Decoding
from pipeline.prompt import STYLES, fit_inputs


def sft_dataset(rows: list[dict], tokenizer, cfg: Config) -> tuple[Dataset, int]:
    """Tokenized prompt/completion examples (input_ids + completion_mask) from the prompt style.

    Tokenized here rather than by TRL: the prompt ids are then exactly the generation prompt's, and TRL's own
    preparation would spend a minute dill-hashing the 262k-token tokenizer for the datasets cache fingerprint.
    Prompts over train.max_prompt_tokens are cut from the left of the context.
    """
    style = STYLES[cfg.prompt.format]
    fitted, truncated = fit_inputs(tokenizer, [row["input"] for row in rows], style, cfg.train.max_prompt_tokens,
                                   "train.max_prompt_tokens")
    examples = [style.training_ids(tokenizer, text, row["target"]) for text, row in zip(fitted, rows)]
    return Dataset.from_list(examples), truncated


def prompt_ids(tokenizer, test: list[dict], cfg: Config) -> tuple[list[list[int]], int]:
    """Each row's prompt ids, exactly as training tokenized its prompts; and how many inputs had to be cut."""
    style = STYLES[cfg.prompt.format]
    fitted, truncated = fit_inputs(tokenizer, [row["input"] for row in test], style, cfg.generate.max_prompt_tokens,
                                   "generate.max_prompt_tokens")
    return [style.prompt_ids(tokenizer, text) for text in fitted], truncated


def decoding(tokenizer, cfg: Config) -> Decoding:
    """How rows are decoded and where they stop: the prompt style's stop tokens, generate.stop_strings (the
    style's unless set) and the generate settings."""
    gen = cfg.generate
    return Decoding(max_new_tokens=gen.max_new_tokens, stop_ids=STYLES[cfg.prompt.format].stop_ids(tokenizer),
                    stop_strings=gen.stop_strings, pad_id=tokenizer.pad_token_id, do_sample=gen.do_sample,
                    temperature=gen.temperature, top_p=gen.top_p, decoder=gen.decoder)
