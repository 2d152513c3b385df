"""Data stage: tokenizers behind every task.

`CharTokenizer` is the character-level tokenizer the project ships (no hub download): printable ASCII plus tab and
newline map to their code points, so every id is < 128 and fits the tiny presets' vocabulary. Ids 0-3 are the
special tokens; the other code points below 32 (and DEL) are reserved placeholders so the vocabulary is exactly 128
ids. `save()` writes a `PreTrainedTokenizerFast` folder (tokenizer.json + tokenizer_config.json), so a Hugging Face
export of a tiny model loads with `AutoTokenizer.from_pretrained(folder)`.

`HFTokenizer` adapts a local Hugging Face tokenizer folder (for `math` tasks) to the same small interface.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional, Protocol, Sequence

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"


class Tokenizer(Protocol):
    """What tasks, the trainer and the engines need from a tokenizer."""

    vocab_size: int
    pad_id: int
    eos_id: int
    bos_id: Optional[int]

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def save(self, path: str | os.PathLike) -> None: ...


class CharTokenizer:
    """Character-level tokenizer: id = code point for tab, newline and printable ASCII; 0-3 are pad/bos/eos/unk."""

    vocab_size = 128
    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3
    _SPECIAL = {0: PAD_TOKEN, 1: BOS_TOKEN, 2: EOS_TOKEN, 3: UNK_TOKEN}

    def __init__(self, errors: str = "strict"):
        """`errors`: what `encode` does with a character outside tab/newline/printable ASCII: strict (raise) or
        replace (map it to the unk id)."""
        if errors not in ("strict", "replace"):
            raise ValueError(f"CharTokenizer(errors={errors!r}): use 'strict' or 'replace'")
        self.errors = errors

    @staticmethod
    def is_text_id(i: int) -> bool:
        return i in (9, 10) or 32 <= i <= 126

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = [self.bos_id] if add_bos else []
        for pos, ch in enumerate(text):
            i = ord(ch)
            if not self.is_text_id(i):
                if self.errors == "strict":
                    raise ValueError(
                        f"CharTokenizer cannot encode {ch!r} (code point {i}) at position {pos} of {text[:40]!r}: "
                        "only tab, newline and printable ASCII are in its vocabulary; fix: use ASCII text or "
                        "CharTokenizer(errors='replace') to map it to <|unk|>"
                    )
                i = self.unk_id
            ids.append(i)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the CharTokenizer vocabulary [0, {self.vocab_size})")
            if self.is_text_id(i):
                out.append(chr(i))
            elif not skip_special_tokens:
                out.append(self.id_to_token(i))
        return "".join(out)

    def id_to_token(self, i: int) -> str:
        if i in self._SPECIAL:
            return self._SPECIAL[i]
        return chr(i) if self.is_text_id(i) else f"<|reserved_{i}|>"

    def vocab(self) -> dict[str, int]:
        return {self.id_to_token(i): i for i in range(self.vocab_size)}

    def to_hf(self):
        """The same tokenizer as a transformers `PreTrainedTokenizerFast` (a `tokenizers` BPE with no merges, so
        every character is its own token; `Fuse` decodes without separators)."""
        from tokenizers import Tokenizer as HFCoreTokenizer
        from tokenizers import decoders, models
        from transformers import PreTrainedTokenizerFast

        core = HFCoreTokenizer(models.BPE(vocab=self.vocab(), merges=[], unk_token=UNK_TOKEN))
        core.decoder = decoders.Fuse()
        specials = [self.id_to_token(i) for i in range(self.vocab_size) if not self.is_text_id(i)]
        core.add_special_tokens(specials)
        return PreTrainedTokenizerFast(
            tokenizer_object=core, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
            unk_token=UNK_TOKEN, padding_side="left", model_max_length=4096,
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write a Hugging Face tokenizer folder loadable by `transformers.AutoTokenizer.from_pretrained(path)`."""
        os.makedirs(path, exist_ok=True)
        self.to_hf().save_pretrained(str(path))


class HFTokenizer:
    """A local Hugging Face tokenizer folder behind the `Tokenizer` interface (never downloads)."""

    def __init__(self, path: str | os.PathLike):
        from transformers import AutoTokenizer

        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"tokenizer folder {str(path)!r} does not exist; fix: set task.math.tokenizer to a local folder "
                "holding tokenizer.json / tokenizer_config.json (e.g. the policy's Hugging Face checkpoint)"
            )
        try:
            self.hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as e:  # transformers raises several types here; the cause is always the folder
            raise ValueError(
                f"could not load a Hugging Face tokenizer from {str(path)!r}: {e}; fix: point task.math.tokenizer at a "
                "folder written by `save_pretrained` (tokenizer.json + tokenizer_config.json)"
            ) from e
        if self.hf.eos_token_id is None:
            raise ValueError(f"tokenizer in {str(path)!r} defines no eos token; fix: set eos_token in its "
                             "tokenizer_config.json (responses stop on it)")
        self.vocab_size = len(self.hf)
        self.eos_id = int(self.hf.eos_token_id)
        self.pad_id = int(self.hf.pad_token_id) if self.hf.pad_token_id is not None else self.eos_id
        self.bos_id = None if self.hf.bos_token_id is None else int(self.hf.bos_token_id)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = list(self.hf.encode(text, add_special_tokens=False))
        if add_bos and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids + [self.eos_id] if add_eos else ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=True)

    def save(self, path: str | os.PathLike) -> None:
        os.makedirs(path, exist_ok=True)
        self.hf.save_pretrained(str(path))
