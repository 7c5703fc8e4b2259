from conftest import GEMMA_CHAT_TEMPLATE
from pipeline import prompt

PLAIN, CHAT = prompt.STYLES["plain"], prompt.STYLES["chat"]

INPUT = "재택근무는 생산성을 높인다. 출퇴근 시간이 사라지기 때문이다."
TARGET = "(이유와 근거 묻기) 생산성이 높아졌다는 근거는 무엇인가요?"


def test_training_text_is_exactly_prompt_plus_completion_plus_eos(gemma_tokenizer):
    example = PLAIN.training_ids(gemma_tokenizer, INPUT, TARGET)
    text = gemma_tokenizer.decode(example["input_ids"])
    assert text == f"<bos>### context: {INPUT}\n### question: {TARGET}<eos>"
    assert PLAIN.prompt_text(INPUT) + PLAIN.completion_text(TARGET) == f"### context: {INPUT}\n### question: {TARGET}"


def test_plain_training_prompt_ids_are_the_generation_prompt_ids(gemma_tokenizer):
    example = PLAIN.training_ids(gemma_tokenizer, INPUT, TARGET)
    prompt_part = [t for t, m in zip(example["input_ids"], example["completion_mask"]) if m == 0]
    completion = [t for t, m in zip(example["input_ids"], example["completion_mask"]) if m == 1]
    assert prompt_part == PLAIN.prompt_ids(gemma_tokenizer, INPUT)
    assert prompt_part[0] == gemma_tokenizer.bos_token_id
    assert completion[-1] == gemma_tokenizer.eos_token_id and gemma_tokenizer.eos_token_id not in completion[:-1]
    assert example["completion_mask"] == sorted(example["completion_mask"])  # prompt first, then completion
    # Tokenizing prompt and completion apart gives the tokens the model continues from at inference; they equal
    # tokenizing the whole training text, so nothing is split differently at the boundary.
    assert gemma_tokenizer(PLAIN.prompt_text(INPUT) + PLAIN.completion_text(TARGET))["input_ids"] == (
        example["input_ids"][:-1])


def test_chat_training_prompt_ids_are_the_generation_prompt_ids(gemma_tokenizer):
    tokenizer = gemma_tokenizer.__class__.from_pretrained(gemma_tokenizer.name_or_path)
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    example = CHAT.training_ids(tokenizer, INPUT, TARGET)
    ids = CHAT.prompt_ids(tokenizer, INPUT)
    n_prompt = example["completion_mask"].count(0)
    assert example["input_ids"][:n_prompt] == ids
    assert tokenizer.decode(ids).endswith("<start_of_turn>model\n")
    assert CHAT.prompt_text(INPUT) in tokenizer.decode(ids)
    completion = tokenizer.decode(example["input_ids"][n_prompt:])
    assert completion == f"{TARGET}<end_of_turn>\n"


def test_long_inputs_are_cut_from_the_left_keeping_the_question_suffix(gemma_tokenizer):
    long_input = " ".join(f"{i}번째 문장은 아무 의미가 없다." for i in range(200)) + " 마지막 주장이 핵심이다."
    fitted, cut = prompt.fit_input(gemma_tokenizer, long_input, PLAIN, 64)
    ids = PLAIN.prompt_ids(gemma_tokenizer, fitted)
    assert cut is True and 60 <= len(ids) <= 64  # cut, and by no more than the prompt needed
    assert fitted.endswith("마지막 주장이 핵심이다.") and long_input.endswith(fitted)
    assert gemma_tokenizer.decode(ids).endswith("\n### question:")
    assert prompt.fit_input(gemma_tokenizer, INPUT, PLAIN, 64) == (INPUT, False)


def test_chat_stops_at_the_token_its_template_ends_a_turn_with(gemma_tokenizer):
    """Derived from the rendered template, not by name: the same vocabulary with a template that closes turns with
    another control token stops there; one that closes them with text stops at EOS only; plain stops at EOS."""
    tokenizer = gemma_tokenizer.__class__.from_pretrained(gemma_tokenizer.name_or_path)
    eos = tokenizer.eos_token_id
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    assert CHAT.stop_ids(tokenizer) == (eos, tokenizer.convert_tokens_to_ids("<end_of_turn>"))
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE.replace("<end_of_turn>", "<unused7>")
    assert CHAT.stop_ids(tokenizer) == (eos, tokenizer.convert_tokens_to_ids("<unused7>"))
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE.replace("<end_of_turn>", "\n\n")
    assert CHAT.stop_ids(tokenizer) == (eos,)
    assert PLAIN.stop_ids(tokenizer) == (eos,)


def test_the_style_is_part_of_the_stage_inputs(monkeypatch):
    """Every field of a style: a changed stop string or template is a new input of train and generate."""
    import dataclasses

    from pipeline import identity

    before = identity.prompt_identity("plain")
    assert before["name"] == "plain" and before["stop_strings"] == ["\n"] and before["template"] == PLAIN.template
    assert identity.prompt_identity("chat") != before
    for change in ({"stop_strings": ("?",)}, {"template": "### argument: {input}\n### question:"},
                   {"completion_prefix": ""}):
        monkeypatch.setitem(prompt.STYLES, "plain", dataclasses.replace(PLAIN, **change))
        assert identity.prompt_identity("plain") != before


def test_generate_stop_strings_default_to_the_styles_and_can_be_replaced():
    from pipeline.config import load_config

    assert load_config(None).generate.stop_strings == PLAIN.stop_strings
    assert load_config(None, ["prompt.format=chat"]).generate.stop_strings == CHAT.stop_strings
    assert load_config(None, ["generate.stop_strings=[]"]).generate.stop_strings == ()
    assert load_config(None, ["generate.stop_strings=[\"?\", \"\\n\"]"]).generate.stop_strings == ("?", "\n")
