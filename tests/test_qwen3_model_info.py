"""model_info.json has one format and one reader, shared by the trainer and the converter."""

import json

import pytest

from megatron_rlvr.errors import ConversionError
from megatron_rlvr.qwen3.model_info import MODEL_INFO, read_model_info, write_model_info
from megatron_rlvr.qwen3.shapes import get_preset


def test_a_written_record_reads_back_with_its_preset_shape_and_extra_fields(tmp_path):
    shape = get_preset("tiny")
    write_model_info(tmp_path, "tiny", shape, has_optimizer=True, steps_done=3)
    info = read_model_info(tmp_path)
    assert (info.preset, info.shape) == ("tiny", shape)
    assert info.raw["has_optimizer"] is True and info.raw["steps_done"] == 3


def test_a_folder_without_the_record_is_refused_with_what_it_is_not(tmp_path):
    with pytest.raises(ConversionError, match=r"model_info.json is missing: .* not a model folder written by the trainer"):
        read_model_info(tmp_path)


def test_a_record_of_another_family_is_refused_naming_the_family(tmp_path):
    (tmp_path / MODEL_INFO).write_text(json.dumps({"preset": None, "family": "llama", "shape": {}}))
    with pytest.raises(ConversionError, match=r"unsupported architecture \(family 'llama'"):
        read_model_info(tmp_path)
