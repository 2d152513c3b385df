"""Data stage: prompts go through the tokenizer's chat template (system prompt, Qwen3's enable_thinking switch), or
stay raw text on request. The tokenizer is a small BPE the test trains and saves itself (no hub download)."""

import json

import pytest

from megatron_rlvr.config import MathTaskConfig, TaskConfig
from megatron_rlvr.tasks import CharTokenizer, ChatSettings, HFTokenizer, PromptRenderer, build_task

# Qwen3's chat format in miniature: <|im_start|>role\ncontent<|im_end|>\n, and with enable_thinking=false an empty
# think block after the generation prompt (what Qwen3's template does).
TEMPLATE = (
    "{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def make_bpe_tokenizer(folder, chat_template=TEMPLATE):
    """Train a byte-level BPE on a few sentences and save it as a transformers tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    corpus = ["What is 8 * 9? The answer is \\boxed{72}.", "Simplify 4/6 to \\frac{2}{3}.", "user assistant system",
              "Solve step by step and put the final answer in a box."] * 20
    core.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    if chat_template is not None:
        tok.chat_template = chat_template
    tok.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    return make_bpe_tokenizer(tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "d.jsonl"
    rows = [{"problem": "What is 8 * 9?", "answer": "72"},
            {"problem": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "4/6?"}],
             "answer": "\\frac{2}{3}"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def task_of(data_path, bpe_dir, **kw):
    return build_task(TaskConfig(name="math", math=MathTaskConfig(path=data_path, format="deepscaler",
                                                                  tokenizer=bpe_dir, verify_workers=0, **kw)))


def test_prompts_go_through_the_tokenizers_chat_template_by_default(data_path, bpe_dir):
    task = task_of(data_path, bpe_dir)
    assert task.renderer.mode == "tokenizer chat template"
    assert task.prompts[0].prompt == "<|im_start|>user\nWhat is 8 * 9?<|im_end|>\n<|im_start|>assistant\n"
    ids = task.prompts[0].prompt_ids
    im_start = task.tokenizer.hf.convert_tokens_to_ids("<|im_start|>")
    assert ids[0] == im_start and ids.count(im_start) == 2  # special tokens are single ids, not spelled out
    assert task.tokenizer.hf.decode(ids) == task.prompts[0].prompt


def test_chat_message_prompts_keep_their_own_system_message(data_path, bpe_dir):
    task = task_of(data_path, bpe_dir, system_prompt="Think carefully.")
    assert task.prompts[0].prompt.startswith("<|im_start|>system\nThink carefully.<|im_end|>\n<|im_start|>user\n")
    assert task.prompts[1].prompt == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n4/6?<|im_end|>\n"
                                      "<|im_start|>assistant\n")


@pytest.mark.parametrize("thinking, suffix", [(None, "assistant\n"), (True, "assistant\n"),
                                              (False, "assistant\n<think>\n\n</think>\n\n")])
def test_enable_thinking_is_passed_to_the_template(data_path, bpe_dir, thinking, suffix):
    assert task_of(data_path, bpe_dir, enable_thinking=thinking).prompts[0].prompt.endswith(suffix)


def test_raw_mode_gives_the_prompt_text_as_it_is(data_path, bpe_dir):
    task = task_of(data_path, bpe_dir, chat_template="raw", system_prompt="Think.")
    assert task.prompts[0].prompt == "Think.\n\nWhat is 8 * 9?"
    assert task.prompts[1].prompt == "Be brief.\n\n4/6?"
    assert task.tokenizer.decode(task.prompts[0].prompt_ids) == "Think.\n\nWhat is 8 * 9?"


def test_a_template_file_replaces_the_tokenizers(data_path, bpe_dir, tmp_path):
    (tmp_path / "t.jinja").write_text("{% for m in messages %}Q: {{ m['content'] }}\n{% endfor %}A:")
    task = task_of(data_path, bpe_dir, chat_template=str(tmp_path / "t.jinja"))
    assert task.prompts[0].prompt == "Q: What is 8 * 9?\nA:"


def test_a_tokenizer_without_template_falls_back_to_raw_or_refuses_when_required(data_path, tmp_path):
    plain = make_bpe_tokenizer(tmp_path / "plain", chat_template=None)
    assert task_of(data_path, plain).renderer.mode == "raw (the tokenizer has no chat template)"
    with pytest.raises(ValueError, match=r"task.math.chat_template='tokenizer': the tokenizer in task.math.tokenizer "
                                         r"has no "
                                         r"chat_template; fix:"):
        task_of(data_path, plain, chat_template="tokenizer")


def test_the_synthetic_tasks_character_tokenizer_never_uses_a_template():
    r = PromptRenderer(CharTokenizer(), ChatSettings())
    assert r.mode.startswith("raw") and r.render("bed:") == ("bed:", [1] + [ord(c) for c in "bed:"])


def test_responses_decode_without_special_tokens(bpe_dir):
    tok = HFTokenizer(bpe_dir)
    ids = tok.encode("The answer is \\boxed{72}.", add_eos=True)
    assert ids[-1] == tok.eos_id and tok.decode(ids) == "The answer is \\boxed{72}."
