"""Data stage: the shipped character tokenizer, its Hugging Face folder, and the HF tokenizer adapter."""

import pytest

from megatron_rlvr.tasks import CharTokenizer, HFTokenizer

TEXT = "bed:2dgf The answer is \\boxed{\\frac{2}{3}}.\n\tok ~!"


def test_char_tokenizer_round_trips_ascii_with_ids_below_128():
    tok = CharTokenizer()
    ids = tok.encode(TEXT, add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id == 1 and ids[-1] == tok.eos_id == 2
    assert all(0 <= i < 128 for i in ids) and tok.vocab_size == 128
    assert tok.decode(ids) == TEXT
    assert tok.decode(ids, skip_special_tokens=False) == "<|bos|>" + TEXT + "<|eos|>"
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)


def test_non_ascii_text_raises_with_fix_or_maps_to_unk_when_asked():
    with pytest.raises(ValueError, match=r"cannot encode 'é'.*position 2.*errors='replace'"):
        CharTokenizer().encode("caé")
    assert CharTokenizer(errors="replace").encode("caé") == [99, 97, 3]
    with pytest.raises(ValueError, match=r"token id 300 is outside"):
        CharTokenizer().decode([65, 300])


def test_saved_folder_loads_with_autotokenizer_and_encodes_identically(tmp_path):
    from transformers import AutoTokenizer

    tok = CharTokenizer()
    tok.save(tmp_path / "tok")
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "tok"), local_files_only=True)
    assert len(hf) == 128
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id, hf.unk_token_id) == (0, 1, 2, 3)
    assert hf.encode(TEXT, add_special_tokens=False) == tok.encode(TEXT)
    ids = tok.encode(TEXT, add_bos=True, add_eos=True)
    assert hf.decode(ids, skip_special_tokens=True) == TEXT


def test_hf_adapter_wraps_a_local_folder(tmp_path):
    CharTokenizer().save(tmp_path / "tok")
    hf = HFTokenizer(tmp_path / "tok")
    assert (hf.vocab_size, hf.eos_id, hf.pad_id, hf.bos_id) == (128, 2, 0, 1)
    assert hf.encode("ab", add_bos=True, add_eos=True) == [1, 97, 98, 2]
    assert hf.decode([1, 97, 98, 2]) == "ab"
    hf.save(tmp_path / "copy")
    assert HFTokenizer(tmp_path / "copy").encode(TEXT) == CharTokenizer().encode(TEXT)


def test_hf_adapter_names_a_missing_or_unusable_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer folder .*nope.* does not exist; fix: set "
                                                r"task.math.tokenizer"):
        HFTokenizer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises((ValueError, OSError), match=r"empty"):
        HFTokenizer(tmp_path / "empty")
