"""The one prompt template, used by both training and generation.

The tutorial trained on "### context: {input}\\n### question: {target}" but prompted with an extra blank line
("\\n\\n### question: "), so the model was asked a question in a layout it had never seen. Here the layout exists
once: training text is exactly prompt + completion, and generation tokenizes exactly the prompt.

The training example is tokenized here too (prompt ids + completion ids), not by TRL, so its prompt part is
generation_prompt_ids() itself.

plain: the tutorial's layout, for base models.
chat:  the same text as the user turn of the tokenizer's chat template, for instruction-tuned models
       (Gemma 3 -it ends its turn with <end_of_turn>).
"""

from __future__ import annotations

import logging

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

PROMPT_TEMPLATE = "### context: {input}\n### question:"


def prompt_text(input_text: str) -> str:
    return PROMPT_TEMPLATE.format(input=input_text)


def completion_text(target: str) -> str:
    # The space belongs to the completion so that the prompt ends on a token boundary (":").
    return " " + target


def generation_prompt_ids(tokenizer, input_text: str, fmt: str) -> list[int]:
    """Token ids of the prompt exactly as training saw it (TRL tokenizes the prompt the same way)."""
    if fmt == "chat":
        messages = [{"role": "user", "content": prompt_text(input_text)}]
        return _ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    return tokenizer(prompt_text(input_text))["input_ids"]


def training_ids(tokenizer, input_text: str, target: str, fmt: str) -> dict[str, list[int]]:
    """Token ids of one training example and its completion mask (1 = in the loss).

    The prompt part is generation_prompt_ids() itself, so training and generation see the same tokens by
    construction. plain: the completion ends with the tokenizer's EOS, in the loss, so the model learns to stop.
    chat: the template closes the assistant turn (<end_of_turn> for Gemma), also in the loss.
    """
    prompt_ids = generation_prompt_ids(tokenizer, input_text, fmt)
    if fmt == "chat":
        messages = [{"role": "user", "content": prompt_text(input_text)}, {"role": "assistant", "content": target}]
        full = _ids(tokenizer.apply_chat_template(messages, tokenize=True))
        if full[: len(prompt_ids)] != prompt_ids:
            raise ConfigError("prompt.format=chat: this tokenizer's chat template renders the prompt differently "
                              "alone than followed by the answer; use prompt.format=plain")
        completion_ids = full[len(prompt_ids):]
    else:
        completion_ids = tokenizer(completion_text(target), add_special_tokens=False)["input_ids"]
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    return {"input_ids": prompt_ids + completion_ids,
            "completion_mask": [0] * len(prompt_ids) + [1] * len(completion_ids)}


def fit_inputs(tokenizer, inputs: list[str], fmt: str, max_prompt_tokens: int, key: str) -> tuple[list[str], int]:
    """Every input cut (see fit_input) so that its prompt fits max_prompt_tokens; also how many were cut, which
    is logged naming the config key (train.max_prompt_tokens or generate.max_prompt_tokens)."""
    fitted = [fit_input(tokenizer, text, fmt, max_prompt_tokens) for text in inputs]
    truncated = sum(cut for _, cut in fitted)
    if truncated:
        log.info("%d of %d prompts are longer than %s=%d tokens: their context was cut from the left", truncated,
                 len(inputs), key, max_prompt_tokens)
    return [text for text, _ in fitted], truncated


def fit_input(tokenizer, input_text: str, fmt: str, max_prompt_tokens: int) -> tuple[str, bool]:
    """Cuts the input from its left end until the whole prompt fits; the "### question:" suffix stays intact.

    Returns the (possibly shortened) input and whether it was cut. The start of a long argument is the part a
    question is least likely to be about, and the end of the prompt is what the model continues from.
    """
    overflow = len(generation_prompt_ids(tokenizer, input_text, fmt)) - max_prompt_tokens
    if overflow <= 0:
        return input_text, False
    input_ids = tokenizer(input_text, add_special_tokens=False)["input_ids"]
    cut = overflow
    while cut < len(input_ids):
        shortened = tokenizer.decode(input_ids[cut:]).lstrip()
        if len(generation_prompt_ids(tokenizer, shortened, fmt)) <= max_prompt_tokens:
            return shortened, True
        cut += 1  # decoding and re-encoding can merge tokens differently; step until it fits
    raise ConfigError(f"max_prompt_tokens={max_prompt_tokens} leaves no room for the input: the template alone "
                     f"takes {len(generation_prompt_ids(tokenizer, '', fmt))} tokens")


def _ids(encoded) -> list[int]:
    # apply_chat_template(tokenize=True) returns a BatchEncoding in transformers 5, a list in 4.x.
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
