"""Bad input gives a ValueError that names the field (issue: foundation §4)."""
import json

import pytest

import memlib


def llama(**over):
    c = {"model_type": "llama", "vocab_size": 1000, "hidden_size": 512, "num_attention_heads": 8,
         "num_hidden_layers": 2, "intermediate_size": 1024, "max_position_embeddings": 2048}
    c.update(over)
    return c


def test_missing_required_field_is_named():
    c = llama()
    del c["num_hidden_layers"]
    with pytest.raises(ValueError, match="num_hidden_layers"):
        memlib.total_params(c)


def test_malformed_field_is_named():
    with pytest.raises(ValueError, match="hidden_size"):
        memlib.total_params(llama(hidden_size="big"))
    with pytest.raises(ValueError, match="num_attention_heads"):
        memlib.total_params(llama(num_attention_heads=-8))


def test_unsupported_model_type_lists_supported():
    with pytest.raises(ValueError, match="supported: .*llama.*qwen3"):
        memlib.load_spec(llama(model_type="mamba"))


def test_missing_model_type():
    c = llama()
    del c["model_type"]
    with pytest.raises(ValueError, match="model_type"):
        memlib.load_spec(c)


def test_malformed_json_file(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{"model_type": "llama",')
    with pytest.raises(ValueError, match="not valid JSON"):
        memlib.load_spec(str(p))
    p.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        memlib.load_spec(str(p))


def test_config_file_and_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(llama()))
    assert memlib.total_params(str(tmp_path)) == memlib.total_params(str(tmp_path / "config.json"))


def test_unknown_catalog_name_lists_catalog():
    with pytest.raises(ValueError, match="catalog name"):
        memlib.load_spec("Llama-9-1T")


def test_unknown_dtype_lists_allowed():
    with pytest.raises(ValueError, match="dtype.*allowed.*bf16"):
        memlib.weight_memory(llama(), "fp12")
    with pytest.raises(ValueError, match="GGUF"):
        memlib.weight_memory(llama(), "gguf:Q9_K")


@pytest.mark.parametrize("value", [0, -1, 1.5, "8", True, None])
def test_bad_sizes_name_the_field(value):
    with pytest.raises(ValueError, match="batch_size"):
        memlib.kv_cache(llama(), 16, batch_size=value)


def test_seq_len_beyond_max_positions():
    with pytest.raises(ValueError, match="seq_len.*max_position_embeddings = 2048"):
        memlib.kv_cache(llama(), 2049)


def test_group_size_and_utilisation():
    with pytest.raises(ValueError, match="group_size"):
        memlib.weight_memory(llama(), "gptq", group_size=0)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        memlib.max_concurrency(llama(), 16, gpu_memory=10**10, gpu_memory_utilization=1.5)
