from pipeline import prompt

# A Gemma-style chat template (the embedded 270M is a base model and has none), enough to test the chat format.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

INPUT = "재택근무는 생산성을 높인다. 출퇴근 시간이 사라지기 때문이다."
TARGET = "(이유와 근거 묻기) 생산성이 높아졌다는 근거는 무엇인가요?"


def test_training_text_is_exactly_prompt_plus_completion():
    example = prompt.sft_example(INPUT, TARGET, "plain")
    assert example["prompt"] + example["completion"] == f"### context: {INPUT}\n### question: {TARGET}"
    assert example["prompt"] == prompt.prompt_text(INPUT)


def test_plain_generation_prompt_is_the_prefix_of_the_training_tokens(gemma_tokenizer):
    example = prompt.sft_example(INPUT, TARGET, "plain")
    full = gemma_tokenizer(example["prompt"] + example["completion"])["input_ids"]
    ids = prompt.generation_prompt_ids(gemma_tokenizer, INPUT, "plain")
    assert ids[0] == gemma_tokenizer.bos_token_id
    assert full[: len(ids)] == ids and len(full) > len(ids)


def test_chat_generation_prompt_is_the_prefix_of_the_training_tokens(gemma_tokenizer):
    tokenizer = gemma_tokenizer.__class__.from_pretrained(gemma_tokenizer.name_or_path)
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    example = prompt.sft_example(INPUT, TARGET, "chat")
    full = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=True)
    full = list(full["input_ids"] if hasattr(full, "keys") else full)
    ids = prompt.generation_prompt_ids(tokenizer, INPUT, "chat")
    assert full[: len(ids)] == ids
    assert tokenizer.decode(ids).endswith("<start_of_turn>model\n")
    assert prompt.prompt_text(INPUT) in tokenizer.decode(ids)


def test_long_inputs_are_cut_from_the_left_keeping_the_question_suffix(gemma_tokenizer):
    long_input = " ".join(f"{i}번째 문장은 아무 의미가 없다." for i in range(200)) + " 마지막 주장이 핵심이다."
    fitted, cut = prompt.fit_input(gemma_tokenizer, long_input, "plain", 64)
    ids = prompt.generation_prompt_ids(gemma_tokenizer, fitted, "plain")
    assert cut and len(ids) <= 64
    assert fitted.endswith("마지막 주장이 핵심이다.") and long_input.endswith(fitted)
    assert gemma_tokenizer.decode(ids).endswith("\n### question:")
    assert prompt.fit_input(gemma_tokenizer, INPUT, "plain", 64) == (INPUT, False)
