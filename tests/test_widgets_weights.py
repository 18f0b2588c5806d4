"""Drive the chapter 01 explorers headless and check their numbers against hand arithmetic.

Every expected value below is computed here from the config.json numbers (copied in the
comments), never from memlib's own functions.
"""
import math

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

from memlib.widgets import quantization_explorer, weights_explorer  # noqa: E402
from memlib.widgets.weights import (  # noqa: E402
    anatomy_explorer, plot_bits_per_param, plot_params_by_component, plot_weight_bytes)

# Llama-3.1-8B config.json: vocab_size 128256, hidden_size 4096, num_hidden_layers 32,
# num_attention_heads 32, num_key_value_heads 8 (head_dim 4096/32 = 128),
# intermediate_size 14336, tie_word_embeddings false, no biases, RMSNorm.
V, H, L, NH, NKV, D, I = 128256, 4096, 32, 32, 8, 128, 14336
ATTN = H * NH * D + 2 * H * NKV * D + NH * D * H          # q, k, v, o
MLP = 3 * H * I                                            # gate, up, down
LAYER = ATTN + MLP + 2 * H                                 # + 2 RMSNorms
LLAMA8B = V * H + L * LAYER + H + V * H                    # embed + layers + final norm + lm_head
assert LLAMA8B == 8_030_261_248                            # the published exact count

# The decoder's weight matrices as (in, out, count per layer); what GPTQ/AWQ/nf4 quantise.
MATS = [(H, NH * D, 1), (H, NKV * D, 2), (NH * D, H, 1), (H, I, 2), (I, H, 1)]
QPARAMS = L * sum(i * o * c for i, o, c in MATS)


def test_weights_explorer_default_and_dtypes():
    ex = weights_explorer("Llama-3.1-8B")
    assert ex.error is None
    assert ex.result.total == 2 * LLAMA8B                  # bf16: 2 bytes per parameter
    assert ex.result["lm_head"] == 2 * V * H
    ex.set(dtype="fp32")
    assert ex.result.total == 4 * LLAMA8B
    ex.set(dtype="int4")
    assert ex.result.total == LLAMA8B // 2                 # 4 bits, every tensor
    ex.set(dtype="fp8")
    assert ex.result.total == LLAMA8B


def test_weights_explorer_tied_model():
    # Qwen3-0.6B: vocab 151936, hidden 1024, 28 layers, 16 heads x head_dim 128 (q is 2048
    # wide), 8 KV heads, intermediate 3072, q/k RMSNorm of head_dim, tied embeddings.
    v, h, n_layers, nh, nkv, d, inter = 151936, 1024, 28, 16, 8, 128, 3072
    layer = h * nh * d + 2 * h * nkv * d + nh * d * h + 2 * d + 3 * h * inter + 2 * h
    params = v * h + n_layers * layer + h                  # no lm_head: tied to the embedding
    assert params == 596_049_920
    ex = weights_explorer("Llama-3.1-8B")
    ex.set(model="Qwen3-0.6B", dtype="bf16")
    assert ex.result.total == 2 * params
    assert "lm_head" not in ex.result


def test_quantization_explorer_gptq_by_hand():
    ex = quantization_explorer("Llama-3.1-8B", dtype="gptq", group_size=128)
    assert ex.error is None
    s = ex.result
    # qweight: 4 bits per weight; scales fp16 + zeros 4-bit per (group, out column);
    # g_idx: one int32 per input row.
    overhead = L * sum(c * (math.ceil(i / 128) * o * 2 + math.ceil(i / 128) * o // 2 + 4 * i)
                       for i, o, c in MATS)
    assert s["quantized"] == QPARAMS // 2
    assert s["quant_overhead"] == overhead == 141_295_616
    assert s["unquantized"] == 2 * (LLAMA8B - QPARAMS)     # embeddings, lm_head, norms in bf16
    assert s.total == QPARAMS // 2 + overhead + 2 * (LLAMA8B - QPARAMS)
    assert s.meta["bits_per_param"] == pytest.approx(8 * s.total / LLAMA8B)
    # a smaller group size means more scales: g=32 has 4x the scale and zero bytes
    ex.set(group_size=32)
    overhead32 = L * sum(c * (i // 32 * o * 2 + i // 32 * o // 2 + 4 * i) for i, o, c in MATS)
    assert ex.result["quant_overhead"] == overhead32
    assert ex.result.total - s.total == overhead32 - overhead


def test_quantization_explorer_nf4_double_quant_by_hand():
    ex = quantization_explorer("Llama-3.1-8B", dtype="nf4")
    # one fp32 absmax per block of 64 weights + the 16-entry fp32 code book per matrix
    plain = L * sum(c * (4 * (i * o // 64) + 16 * 4) for i, o, c in MATS)
    assert ex.result["quant_overhead"] == plain
    assert ex.result.meta["bits_per_quantized_weight"] == pytest.approx(4 + 0.5, abs=1e-4)
    ex.set(double_quant=True)
    # absmax in 8 bits + one fp32 scale per 256 blocks + fp32 offset + the two code books
    dq = L * sum(c * (i * o // 64 + 4 * math.ceil(i * o // 64 / 256) + 4 + 16 * 4 + 256 * 4)
                 for i, o, c in MATS)
    assert ex.result["quant_overhead"] == dq
    assert ex.result.meta["bits_per_quantized_weight"] == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=1e-3)


def test_quantization_explorer_llm_int8_and_gguf():
    ex = quantization_explorer("Llama-3.1-8B", dtype="llm_int8")
    assert ex.result["quantized"] == QPARAMS                       # 1 byte per weight
    assert ex.result["quant_overhead"] == L * sum(c * 4 * o for i, o, c in MATS)  # fp32 per row
    ex.set(dtype="gguf:Q8_0")
    # Q8_0: 34 bytes per 32 weights, for every matrix including embedding and output;
    # the 1-D norm weights stay F32 (4 bytes).
    mats = QPARAMS + 2 * V * H
    assert ex.result.total == mats // 32 * 34 + 4 * (LLAMA8B - mats)
    # the fp16 scale of each 34-byte block is the metadata; the 32 int8 codes are the weights
    assert ex.result["quant_overhead"] == mats // 32 * 2
    assert ex.result["quantized"] == mats


def test_invalid_inputs_show_a_message():
    ex = quantization_explorer("Llama-3.1-8B")
    ex.set(group_size=0)
    assert ex.result is None and "group_size" in ex.error
    ex.set(group_size=64)                                          # recovers
    assert ex.error is None and ex.result is not None
    bad = weights_explorer({"model_type": "llama", "vocab_size": 10})   # missing fields
    assert bad.result is None and "hidden_size" in bad.error
    unknown = quantization_explorer({"model_type": "not-a-model"})
    assert unknown.result is None and "not supported" in unknown.error


def test_anatomy_explorer_weights_plus_kv():
    ex = anatomy_explorer("Llama-3.1-8B", batch_size=8, seq_len=8192)
    kv_per_token = 2 * L * NKV * D * 2                     # K and V, all layers, bf16
    assert ex.result["weights"] == 2 * LLAMA8B
    assert ex.result["kv_cache"] == 8 * 8192 * kv_per_token == 8 * 2**30
    ex.set(kv_dtype="fp8")
    assert ex.result["kv_cache"] == 4 * 2**30
    ex.set(seq_len=10**7)                                  # beyond max_position_embeddings
    assert ex.result is None and "seq_len" in ex.error


def test_anatomy_explorer_states_the_margin_on_a_gpu():
    ex = anatomy_explorer("Llama-3.1-8B", batch_size=8, seq_len=8192)
    h100 = round(79.19 * 2**30)          # H100 80GB as the runtime reports it (vLLM 'total_gpu_memory (79.19GiB)')
    budget = 2 * LLAMA8B + 8 * 2**30                       # bf16 weights + 8 users x 8192 tokens x 128 KiB
    assert ex.result.meta["gpu"] == "H100 80GB" and ex.result.meta["gpu_memory"] == h100
    assert ex.result.meta["margin"] == h100 - budget > 0
    assert "to spare" in ex.describe(ex.result)
    ex.set(batch_size=64, gpu="L4 24GB")                   # 64 GiB of KV on a 22.04 GiB card
    l4 = round(22.04 * 2**30)
    assert ex.result.meta["margin"] == l4 - (2 * LLAMA8B + 64 * 2**30) < 0
    assert "short" in ex.describe(ex.result)


def test_budget_bar_keeps_a_fixed_scale(ax):
    from memlib.serving import serving_breakdown
    from memlib.widgets.weights import plot_budget_on_gpu
    gpu = 80 * 2**30
    for users in (1, 8, 64):                               # all within 1.3 x the GPU: the axis does not move
        ax.clear()
        plot_budget_on_gpu(serving_breakdown("Llama-3.1-8B", batch_size=users, seq_len=8192), ax, gpu, "GPU")
        assert ax.get_xlim() == pytest.approx((0, 1.3 * 80))
        assert any(line.get_xdata()[0] == pytest.approx(80) for line in ax.get_lines())   # the GPU line


def test_plot_functions_draw_hand_values():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import memlib
    from memlib.weights import quantization_split
    fig, axes = plt.subplots(3, 1)
    plot_weight_bytes([memlib.weight_memory("Llama-3.1-8B", "bf16")], axes[0])
    tops = sum(p.get_height() for p in axes[0].patches)
    assert tops == pytest.approx(2 * LLAMA8B / 2**30)
    plot_params_by_component([memlib.count_params("Llama-3.1-8B")], axes[1])
    assert sum(p.get_width() for p in axes[1].patches) == pytest.approx(100)
    plot_bits_per_param([quantization_split("Llama-3.1-8B", "int8")], axes[2])
    assert sum(p.get_width() for p in axes[2].patches) == pytest.approx(8)
    plt.close(fig)
