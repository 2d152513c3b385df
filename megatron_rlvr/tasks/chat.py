"""Data stage: turning a dataset prompt into the text and token ids the policy sees.

Instruct and thinking models (Qwen3) were trained on their chat format, so with a Hugging Face tokenizer a prompt
goes through the tokenizer's `apply_chat_template` by default, with a generation prompt appended (the model writes
the assistant turn). `task.math.chat_template`:

- ``auto`` (default): the tokenizer's chat template when it has one, raw text otherwise;
- ``tokenizer``: the tokenizer's chat template, an error when it has none;
- ``raw``: the prompt text as it is (chat messages: their contents joined by blank lines);
- a path to a Jinja template file: that template instead of the tokenizer's.

`task.math.system_prompt` is put in front as a system message (unless the row's messages have their own), and
`task.math.enable_thinking` is passed to the template as Qwen3's ``enable_thinking`` switch (unset: the template's
default). The synthetic task keeps its character tokenizer and never goes through here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from megatron_rlvr.tasks.layouts import Prompt

CHAT_MODES = ("auto", "tokenizer", "raw")


@dataclass(frozen=True)
class ChatSettings:
    """How prompts are rendered (the task.math.chat_template / system_prompt / enable_thinking fields)."""

    chat_template: str = "auto"
    system_prompt: Optional[str] = None
    enable_thinking: Optional[bool] = None


def _template_file(mode: str) -> Optional[str]:
    if mode in CHAT_MODES:
        return None
    path = os.path.expanduser(mode)
    if not os.path.isfile(path):
        raise ValueError(f"config error: task.math.chat_template={mode!r}: neither auto, tokenizer, raw nor an "
                         "existing Jinja template file; fix: use one of those or the path of a .jinja file")
    with open(path, encoding="utf-8") as f:
        return f.read()


class PromptRenderer:
    """Renders prompts (text or chat messages) for one tokenizer; `mode` says what it actually does."""

    def __init__(self, tokenizer, settings: ChatSettings = ChatSettings()):
        self.tokenizer, self.settings = tokenizer, settings
        self.template = _template_file(settings.chat_template)
        hf = getattr(tokenizer, "hf", None)
        has_own = hf is not None and getattr(hf, "chat_template", None)
        if settings.chat_template == "raw":
            self.mode = "raw"
        elif self.template is not None:
            if hf is None:
                raise ValueError("config error: task.math.chat_template: a chat template needs a Hugging Face "
                                 "tokenizer (task.math.tokenizer); fix: set task.math.chat_template=raw")
            self.mode = f"template file {settings.chat_template}"
        elif has_own:
            self.mode = "tokenizer chat template"
        elif settings.chat_template == "tokenizer":
            raise ValueError("config error: task.math.chat_template='tokenizer': the tokenizer in "
                             "task.math.tokenizer has no chat_template; fix: use a tokenizer folder whose "
                             "tokenizer_config.json (or chat_template.jinja) holds one, pass a template file, or "
                             "set task.math.chat_template=raw")
        else:
            self.mode = "raw (the tokenizer has no chat template)"

    def messages(self, prompt: Prompt) -> list[dict]:
        msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        sp = self.settings.system_prompt
        if sp and not any(m["role"] == "system" for m in msgs):
            msgs = [{"role": "system", "content": sp}] + msgs
        return msgs

    def text(self, prompt: Prompt) -> str:
        """The exact text the policy is conditioned on (before tokenization)."""
        if self.mode.startswith("raw"):
            if isinstance(prompt, str):
                return f"{self.settings.system_prompt}\n\n{prompt}" if self.settings.system_prompt else prompt
            return "\n\n".join(m["content"] for m in self.messages(prompt))
        kwargs = {} if self.settings.enable_thinking is None else {"enable_thinking": self.settings.enable_thinking}
        return self.tokenizer.hf.apply_chat_template(self.messages(prompt), tokenize=False,
                                                     add_generation_prompt=True, chat_template=self.template,
                                                     **kwargs)

    def render(self, prompt: Prompt) -> tuple[str, list[int]]:
        """(text, token ids). Raw text gets the tokenizer's BOS; a chat template writes its own special tokens."""
        text = self.text(prompt)
        if self.mode.startswith("raw"):
            return text, self.tokenizer.encode(text, add_bos=self.tokenizer.bos_id is not None)
        return text, list(self.tokenizer.hf.encode(text, add_special_tokens=False))
