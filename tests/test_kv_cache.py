"""KV-cache bytes against hand arithmetic for each attention kind (chapter 02)."""
import math

import numpy as np
import pytest

import memlib
from memlib.kv_cache import beam_search_kv, bytes_per_token, kv_crossover_tokens, kv_cache, kv_summary, layer_bytes_per_token
from small_configs import cfg


def test_mha_per_token_by_hand():
    # 2 (K and V) x 4 layers x 8 heads x 64 head_dim x 2 bytes = 8192
    assert bytes_per_token(cfg()) == 2 * 4 * 8 * 64 * 2 == 8192


def test_gqa_and_mqa_by_hand():
    assert bytes_per_token(cfg(num_key_value_heads=2)) == 2 * 4 * 2 * 64 * 2
    assert bytes_per_token(cfg(num_key_value_heads=1)) == 2 * 4 * 1 * 64 * 2
    assert memlib.load_spec(cfg(num_key_value_heads=1)).attention_kind == "MQA"
    assert memlib.load_spec(cfg(num_key_value_heads=2)).attention_kind == "GQA"


def test_explicit_head_dim_wins():
    # Qwen3/gemma style: head_dim is not hidden/heads
    assert bytes_per_token(cfg(head_dim=128)) == 2 * 4 * 8 * 128 * 2


def test_total_scales_with_batch_and_seq_by_hand():
    kv = kv_cache(cfg(), seq_len=1000, batch_size=3, kv_dtype="fp8")
    assert kv.total == 3 * 1000 * (2 * 4 * 8 * 64 * 1)


def test_mla_latent_and_expanded_by_hand():
    mla = {"model_type": "deepseek_v3", "vocab_size": 1000, "hidden_size": 256, "num_attention_heads": 4,
           "num_hidden_layers": 3, "intermediate_size": 512, "moe_intermediate_size": 64,
           "max_position_embeddings": 4096, "kv_lora_rank": 32, "q_lora_rank": 48,
           "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16, "n_routed_experts": 4,
           "num_experts_per_tok": 2, "n_shared_experts": 1, "first_k_dense_replace": 1}
    # latent: (kv_lora_rank + rope) per layer per token
    assert layer_bytes_per_token(mla) == (32 + 8) * 2
    # expanded: heads x (nope + rope for K, v_head_dim for V)
    assert layer_bytes_per_token(mla, mla_form="expanded") == 4 * (16 + 8 + 16) * 2
    assert kv_cache(mla, 10).total == 3 * 10 * 80


def test_deepseek_v3_published_per_token():
    # Seed 001 and the DeepSeek-V2 paper: MLA caches (512 + 64) values per layer; 61 layers
    # x 576 x 2 bytes = 70,272 bytes per token.
    assert bytes_per_token("DeepSeek-V3") == 61 * 576 * 2 == 70_272


def test_sliding_window_caps_sliding_layers():
    c = cfg(sliding_window=100, layer_types=["sliding_attention", "full_attention"] * 2)
    per_layer = 2 * 8 * 64 * 2
    kv = kv_cache(c, seq_len=500)
    # 2 full layers hold 500 tokens; 2 sliding layers hold window - 1 = 99 tokens
    assert kv["full_layers"] == 2 * 500 * per_layer
    assert kv["sliding_layers"] == 2 * 99 * per_layer
    # transformers right after a prefill: its sliding layers keep a view of all 500 tokens,
    # plus an 8-byte int64 window-size tensor each
    tf = kv_cache(c, seq_len=500, runtime="transformers")
    assert tf["sliding_layers"] == 2 * 500 * per_layer and tf["window_scalars"] == 2 * 8
    # below the window nothing is capped
    assert kv_cache(c, seq_len=50).total == 4 * 50 * per_layer


def test_paged_rounding_by_hand():
    kv = kv_cache(cfg(), seq_len=17, block_size=16)
    per_layer = 2 * 8 * 64 * 2
    # 17 tokens need 2 blocks of 16 = 32 slots: 15 wasted slots per layer, 4 layers
    assert kv["paging_waste"] == 4 * 15 * per_layer
    assert kv.total == 4 * 32 * per_layer


def test_vectorised_grid_matches_scalars():
    b = np.array([[1], [2], [7]])
    s = np.array([1, 10, 333, 4096])
    grid = memlib.kv_bytes(cfg(num_key_value_heads=2), s, b)
    assert grid.shape == (3, 4)
    for i, bb in enumerate(b[:, 0]):
        for j, ss in enumerate(s):
            assert grid[i, j] == memlib.kv_bytes(cfg(num_key_value_heads=2), int(ss), int(bb))


@pytest.mark.parametrize("bad", [dict(seq_len=0), dict(seq_len=-3), dict(seq_len=2.5),
                                 dict(batch_size=0), dict(kv_dtype="fp7"), dict(seq_len=10**6)])
def test_bad_input_names_the_field(bad):
    args = {"seq_len": 16, "batch_size": 1, "kv_dtype": "bf16", **bad}
    field = next(iter(bad))
    with pytest.raises(ValueError, match=field):
        kv_cache(cfg(), **args)


# Llama-3.1-8B config.json: 32 layers, 8 KV heads, head_dim 128 (4096 / 32 heads), bf16
LLAMA31_8B_PER_TOKEN = 32 * 8 * 128 * 2 * 2          # layers x kv heads x head_dim x (K, V) x bytes


def test_kv_summary_weights_and_crossover():
    r = kv_summary("Llama-3.1-8B", 8192)
    weights = 8_030_261_248 * 2                      # published parameter count x bf16
    assert r.total == 8192 * LLAMA31_8B_PER_TOKEN == 2**30
    assert r.meta["weights"] == weights == 16_060_522_496
    # smallest s with s x 131072 >= weights: 16_060_522_496 / 131_072 = 122_532.2 -> 122_533
    assert r.meta["crossover_tokens"] == 122_533


def test_crossover_arrays_and_windows():
    b = np.array([1, 2, 4])
    s = kv_crossover_tokens("Llama-3.1-8B", b)
    assert s.tolist() == [122_533, -(-16_060_522_496 // (2 * 131_072)), -(-16_060_522_496 // (4 * 131_072))]
    # Mistral: every layer windowed; one sequence never holds more than 32 x 4095 x 4096 B
    assert kv_crossover_tokens("Mistral-7B-v0.1") == math.inf
    w = memlib.weight_memory("Mistral-7B-v0.1").total
    big = -(-w // (32 * 4095 * 4096))                # batch at which full windows exceed the weights
    assert kv_crossover_tokens("Mistral-7B-v0.1", big) <= 4095
    # gemma-2-9b: beyond the window only the 21 full layers keep growing
    # at batch 10 the crossover lies past the 4096 window but within the 8192 context
    g = kv_crossover_tokens("gemma-2-9b", 10)
    assert 4095 < g <= 8192
    w = memlib.weight_memory("gemma-2-9b").total
    assert memlib.kv_bytes("gemma-2-9b", g, 10) >= w > memlib.kv_bytes("gemma-2-9b", g - 1, 10)
    assert kv_crossover_tokens("gemma-2-9b") > 8192          # one sequence never gets there


def test_beam_search_is_linear_in_beams():
    pt = LLAMA31_8B_PER_TOKEN
    beams = np.array([1, 2, 4, 8])
    copied = beam_search_kv("Llama-3.1-8B", 1000, 200, beams, share_prefix=False).total
    assert copied.tolist() == (beams * 1200 * pt).tolist()
    shared = beam_search_kv("Llama-3.1-8B", 1000, 200, beams).total
    assert shared.tolist() == ((1000 + beams * 200) * pt).tolist()
    # paged, blocks of 16: 62 full prompt blocks shared; each beam copies the 8-token partial
    # block and adds 200 tokens -> ceil(208 / 16) = 13 blocks per beam
    paged = beam_search_kv("Llama-3.1-8B", 1000, 200, 4, block_size=16)
    assert paged.total == (62 + 4 * 13) * 16 * pt


