"""Prompt styles: one named PromptStyle per `prompt.format`, asked by training, generation and the stop rules.

    style = prompt.STYLES[cfg.prompt.format]
    style.prompt_ids(tokenizer, input)  style.training_ids(tokenizer, input, target)  style.stop_ids(tokenizer)

A style owns what shapes the text a model is given and where its answer ends: the template, the framing (the text
as it is, or as the user turn of the tokenizer's chat template), the completion's leading space, the stop strings
and the stop tokens. Its identity (every field) is part of the train and generate stages' inputs
(pipeline/identity.py), so a changed template or stop regenerates.

The tutorial trained on "### context: {input}\\n### question: {target}" but prompted with an extra blank line
("\\n\\n### question: "), so the model was asked a question in a layout it had never seen. Here the layout exists
once: training text is exactly prompt + completion, and generation tokenizes exactly the prompt. The training
example is tokenized here too (prompt ids + completion ids), not by TRL, so its prompt part is prompt_ids() itself.

plain: the tutorial's layout, for base models.
chat:  the same text as the user turn of the tokenizer's chat template, for instruction-tuned models; the turn
       ends with the template's own end-of-turn token (Gemma's <end_of_turn>, Llama 3's <|eot_id|>, ChatML's
       <|im_end|>), found by rendering a turn, not by name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

TEMPLATE = "### context: {input}\n### question:"
ANSWER = "ANSWER"  # the assistant content end_of_turn_id renders, to find what the template puts after it


@dataclass(frozen=True)
class PromptStyle:
    name: str
    chat: bool  # the prompt as the user turn of the tokenizer's chat template, the answer as the assistant turn
    template: str = TEMPLATE
    # plain: the space belongs to the completion so that the prompt ends on a token boundary (":"); chat: the
    # answer is the assistant turn's whole content.
    completion_prefix: str = " "
    # A question is one line: generation stops at the first newline that follows some text (pipeline/decode.py,
    # stop_index). generate.stop_strings, when set, replaces these.
    stop_strings: tuple[str, ...] = ("\n",)

    def prompt_text(self, input_text: str) -> str:
        return self.template.format(input=input_text)

    def completion_text(self, target: str) -> str:
        return self.completion_prefix + target

    def prompt_ids(self, tokenizer, input_text: str) -> list[int]:
        """Token ids of the prompt exactly as training saw it."""
        if self.chat:
            return _ids(tokenizer.apply_chat_template(self._turns(input_text), add_generation_prompt=True,
                                                      tokenize=True))
        return tokenizer(self.prompt_text(input_text))["input_ids"]

    def training_ids(self, tokenizer, input_text: str, target: str) -> dict[str, list[int]]:
        """Token ids of one training example and its completion mask (1 = in the loss).

        The prompt part is prompt_ids() itself, so training and generation see the same tokens by construction.
        plain: the completion ends with the tokenizer's EOS, in the loss, so the model learns to stop. chat: the
        template closes the assistant turn (its end-of-turn token), also in the loss.
        """
        prompt_ids = self.prompt_ids(tokenizer, input_text)
        if self.chat:
            full = _ids(tokenizer.apply_chat_template(self._turns(input_text, target), tokenize=True))
            if full[: len(prompt_ids)] != prompt_ids:
                raise ConfigError(f"prompt.format={self.name}: this tokenizer's chat template renders the prompt "
                                  "differently alone than followed by the answer; use prompt.format=plain")
            completion_ids = full[len(prompt_ids):]
        else:
            completion_ids = tokenizer(self.completion_text(target), add_special_tokens=False)["input_ids"]
            completion_ids = completion_ids + [tokenizer.eos_token_id]
        return {"input_ids": prompt_ids + completion_ids,
                "completion_mask": [0] * len(prompt_ids) + [1] * len(completion_ids)}

    def stop_ids(self, tokenizer) -> tuple[int, ...]:
        """The tokens that end a row: EOS, and in chat the chat template's end-of-turn token."""
        end = end_of_turn_id(tokenizer) if self.chat else None
        return (tokenizer.eos_token_id,) + ((end,) if end is not None and end != tokenizer.eos_token_id else ())

    def _turns(self, input_text: str, target: str | None = None) -> list[dict]:
        turns = [{"role": "user", "content": self.prompt_text(input_text)}]
        return turns + ([{"role": "assistant", "content": self.completion_text(target)}] if target is not None else [])


STYLES = {style.name: style for style in (PromptStyle("plain", chat=False),
                                          PromptStyle("chat", chat=True, completion_prefix=""))}


def end_of_turn_id(tokenizer) -> int | None:
    """The first control token (one that decoding with skip_special_tokens drops) the chat template writes after
    an assistant turn's content; None when it writes none (the turn then ends at EOS only)."""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "?"},
                                              {"role": "assistant", "content": ANSWER}], tokenize=False)
    after = rendered[rendered.rfind(ANSWER) + len(ANSWER):]
    for token in tokenizer(after, add_special_tokens=False)["input_ids"]:
        if tokenizer.decode([token], skip_special_tokens=True) == "":
            return token
    return None


def fit_inputs(tokenizer, inputs: list[str], style: PromptStyle, max_prompt_tokens: int,
               key: str) -> tuple[list[str], int]:
    """Every input cut (see fit_input) so that its prompt fits max_prompt_tokens; also how many were cut, which
    is logged naming the config key (train.max_prompt_tokens or generate.max_prompt_tokens)."""
    fitted = [fit_input(tokenizer, text, style, max_prompt_tokens) for text in inputs]
    truncated = sum(cut for _, cut in fitted)
    if truncated:
        log.info("%d of %d prompts are longer than %s=%d tokens: their context was cut from the left", truncated,
                 len(inputs), key, max_prompt_tokens)
    return [text for text, _ in fitted], truncated


def fit_input(tokenizer, input_text: str, style: PromptStyle, max_prompt_tokens: int) -> tuple[str, bool]:
    """Cuts the input from its left end until the whole prompt fits; the template's suffix stays intact.

    Returns the (possibly shortened) input and whether it was cut. The start of a long argument is the part a
    question is least likely to be about, and the end of the prompt is what the model continues from.
    """
    overflow = len(style.prompt_ids(tokenizer, input_text)) - max_prompt_tokens
    if overflow <= 0:
        return input_text, False
    input_ids = tokenizer(input_text, add_special_tokens=False)["input_ids"]
    cut = overflow
    while cut < len(input_ids):
        shortened = tokenizer.decode(input_ids[cut:]).lstrip()
        if len(style.prompt_ids(tokenizer, shortened)) <= max_prompt_tokens:
            return shortened, True
        cut += 1  # decoding and re-encoding can merge tokens differently; step until it fits
    raise ConfigError(f"max_prompt_tokens={max_prompt_tokens} leaves no room for the input: the template alone "
                      f"takes {len(style.prompt_ids(tokenizer, ''))} tokens")


def _ids(encoded) -> list[int]:
    # apply_chat_template(tokenize=True) returns a BatchEncoding in transformers 5, a list in 4.x.
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
