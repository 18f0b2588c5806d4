"""Property tests (hypothesis): monotonicity, GQA = MHA at n_kv = n_heads, paging bounds."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import memlib
from memlib.kv_cache import kv_cache, layer_bytes_per_token

heads = st.sampled_from([1, 2, 4, 8, 16])


@st.composite
def configs(draw):
    nh = draw(heads)
    nkv = draw(st.sampled_from([d for d in (1, 2, 4, 8, 16) if nh % d == 0]))
    c = {"model_type": draw(st.sampled_from(["llama", "qwen3", "mistral"])),
         "vocab_size": draw(st.integers(10, 5000)), "hidden_size": 64 * nh,
         "num_attention_heads": nh, "num_key_value_heads": nkv,
         "num_hidden_layers": draw(st.integers(1, 8)), "intermediate_size": draw(st.integers(1, 4096)),
         "max_position_embeddings": 8192}
    if c["model_type"] == "mistral" and draw(st.booleans()):
        c["sliding_window"] = draw(st.integers(2, 4096))
    return c


@settings(max_examples=60, deadline=None)
@given(configs(), st.integers(1, 64), st.integers(1, 8191), st.sampled_from(["bf16", "fp8", "fp32"]))
def test_kv_never_decreases_with_batch_or_seq(c, b, s, dt):
    base = memlib.kv_bytes(c, s, b, dt)
    assert memlib.kv_bytes(c, s + 1, b, dt) >= base
    assert memlib.kv_bytes(c, s, b + 1, dt) >= base


@settings(max_examples=60, deadline=None)
@given(configs(), st.integers(1, 8192), st.integers(1, 16))
def test_weights_do_not_depend_on_batch_or_seq_and_grow_with_layers(c, s, b):
    w = memlib.weight_memory(c).total
    s = min(s, memlib.load_spec(c).max_position_embeddings)
    assert memlib.inference_memory(c, b, s)["weights"] == w                 # the same at any length or batch
    assert memlib.train_memory(c, b, s)["weights"] == w
    bigger = dict(c, num_hidden_layers=c["num_hidden_layers"] + 1)
    assert memlib.weight_memory(bigger).total > w


@settings(max_examples=60, deadline=None)
@given(configs(), st.integers(1, 8192), st.integers(1, 16))
def test_gqa_with_all_heads_equals_mha(c, s, b):
    mha = dict(c)
    mha.pop("num_key_value_heads")       # MHA: no num_key_value_heads -> one KV head per query head
    gqa = dict(c, num_key_value_heads=c["num_attention_heads"])
    assert memlib.kv_bytes(gqa, s, b) == memlib.kv_bytes(mha, s, b)
    assert memlib.total_params(gqa) == memlib.total_params(mha)


@settings(max_examples=60, deadline=None)
@given(configs(), st.integers(1, 8192), st.integers(1, 16), st.sampled_from([1, 8, 16, 32, 256]))
def test_paged_at_least_contiguous_waste_below_one_block(c, s, b, block):
    contiguous = kv_cache(c, s, b).total
    paged = kv_cache(c, s, b, block_size=block)
    per_layer = layer_bytes_per_token(c)
    assert paged.total >= contiguous
    # less than one block per sequence per layer
    assert paged["paging_waste"] < b * c["num_hidden_layers"] * block * per_layer


@settings(max_examples=30, deadline=None)
@given(configs())
def test_vectorised_agrees_with_scalar(c):
    s = np.array([1, 7, 100, 8192])
    b = np.array([[1], [5]])
    grid = memlib.kv_bytes(c, s, b)
    assert int(grid[1, 2]) == memlib.kv_bytes(c, 100, 5)
