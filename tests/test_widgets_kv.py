"""Chapter 02 explorers driven headless, checked against hand arithmetic from the configs,
and the plot functions (drawn on an Agg canvas).  The core helpers they show (crossover,
concurrency, beam search) are tested in test_kv_cache.py and test_serving_budget.py.
"""
import numpy as np

from memlib.hardware import GPUS
from memlib.widgets.kv import (concurrency_explorer, kv_explorer, plot_concurrency,
                               plot_gpu_budget, plot_kv_per_token, plot_kv_vs_context,
                               plot_kv_vs_weights)

# Llama-3.1-8B config.json: 32 layers, 8 KV heads, head_dim 128 (4096 / 32 heads), bf16
LLAMA31_8B_PER_TOKEN = 32 * 8 * 128 * 2 * 2          # layers x kv heads x head_dim x (K, V) x bytes
LLAMA31_8B_PARAMS = 8_030_261_248                    # published; chapter 01 derives it
H100 = round(79.19 * 2**30)                          # the runtime total of an H100 80GB: vLLM's log line
                                                     # 'total_gpu_memory (79.19GiB)' (gateway-api-inference-extension#550)




# -- kv_explorer ----------------------------------------------------------------------------
def test_kv_explorer_default_is_llama31_8b_at_8k():
    ex = kv_explorer()
    assert ex.error is None
    assert LLAMA31_8B_PER_TOKEN == 131_072
    assert ex.result.total == 8192 * LLAMA31_8B_PER_TOKEN == 2**30
    assert ex.result.meta["bytes_per_token"] == 131_072


def test_kv_explorer_batch_context_and_dtype():
    ex = kv_explorer()
    r = ex.set(seq_len=2048, batch_size=4, kv_dtype="fp8")
    # fp8: 1 byte per element
    assert r.total == 4 * 2048 * (32 * 8 * 128 * 2 * 1) == 536_870_912
    assert ex.result is r and ex.error is None


def test_kv_explorer_weights_and_crossover():
    r = kv_explorer().result
    weights = LLAMA31_8B_PARAMS * 2
    assert r.meta["weights"] == weights == 16_060_522_496
    # smallest s with s x 131072 >= weights: 16_060_522_496 / 131_072 = 122_532.2 -> 122_533
    assert r.meta["crossover_tokens"] == 122_533
    assert 122_532 * LLAMA31_8B_PER_TOKEN < weights <= 122_533 * LLAMA31_8B_PER_TOKEN


def test_kv_explorer_mla_latent_and_expanded():
    ex = kv_explorer(model="DeepSeek-V3", seq_len=1000)
    # 61 layers x (kv_lora_rank 512 + qk_rope_head_dim 64) x 2 bytes
    assert ex.result.total == 1000 * 61 * (512 + 64) * 2 == 70_272_000
    r = ex.set(mla_form="expanded")
    # 61 layers x 128 heads x (K: 128 nope + 64 rope, V: 128) x 2 bytes
    assert r.total == 1000 * 61 * 128 * (128 + 64 + 128) * 2 == 4_997_120_000


def test_kv_explorer_sliding_window_and_hybrid():
    ex = kv_explorer(model="Mistral-7B-v0.1", seq_len=8192)
    # all 32 layers slide over 4096 tokens: 4095 past tokens kept (the new one makes 4096)
    assert ex.result.total == 32 * 4095 * (8 * 128 * 2 * 2) == 536_739_840
    r = ex.set(model="gemma-2-9b", seq_len=8192)
    # 42 layers, every other one (21) slides over 4096; 8 kv heads x head_dim 256
    per_layer = 8 * 256 * 2 * 2
    assert r.total == (21 * 8192 + 21 * 4095) * per_layer
    assert r["full_layers"] == 21 * 8192 * per_layer


def test_kv_explorer_invalid_inputs_show_a_message():
    ex = kv_explorer()
    assert ex.set(seq_len=131_073) is None          # max_position_embeddings = 131072
    assert ex.result is None and "max_position_embeddings" in ex.error
    assert "131073" in ex.error
    ex.set(seq_len=1024)
    assert ex.error is None and ex.result.total == 1024 * 131_072
    ex.set(batch_size=0)
    assert ex.result is None and "batch_size" in ex.error
    ex.set(batch_size=-3)
    assert ex.result is None and ex.error
    ex.set(batch_size=2)                             # recovers
    assert ex.error is None and ex.result.total == 2 * 1024 * 131_072


# -- concurrency_explorer ---------------------------------------------------------------------
def test_concurrency_explorer_llama_on_h100():
    ex = concurrency_explorer()
    r = ex.result
    usable = int(H100 * 0.9)                         # 0.9 x 79.19 GiB = 71.27 GiB
    budget = usable - LLAMA31_8B_PARAMS * 2          # - 14.96 GiB of weights = 56.31 GiB
    per_request = 4096 * 131_072                     # 4096 is a whole number of 16-token blocks: 0.5 GiB
    assert budget // per_request == 112
    assert r.meta["requests"] == 112
    assert r.meta["kv_per_request"] == per_request
    assert r["kv_cache"] == 112 * per_request


def test_concurrency_explorer_gpu_length_and_utilisation():
    ex = concurrency_explorer()
    r = ex.set(gpu="L4 24GB", seq_len=8192)
    usable = int(round(22.04 * 2**30) * 0.9)        # L4: PyTorch's 'total capacity of 22.04 GiB'
    # 0.9 x 22.04 GiB = 19.84 GiB - 14.96 GiB of weights = 4.88 GiB; 8192 tokens x 128 KiB = 1 GiB each
    assert r.meta["requests"] == (usable - 16_060_522_496) // (8192 * 131_072) == 4
    r = ex.set(gpu="A100 80GB", seq_len=1000, gpu_memory_utilization=0.5)
    # 1000 tokens occupy 63 blocks of 16 = 1008 token slots
    per_request = 1008 * 131_072
    assert r.meta["kv_per_request"] == per_request
    assert r.meta["requests"] == (int(round(79.15 * 2**30) * 0.5) - 16_060_522_496) // per_request   # A100 80GB: 79.15 GiB


def test_concurrency_explorer_weight_and_kv_dtype():
    ex = concurrency_explorer()
    r = ex.set(weight_dtype="fp8", kv_dtype="fp8")
    assert r.meta["requests"] == (int(H100 * 0.9) - LLAMA31_8B_PARAMS) // (4096 * 65_536) == 255   # (71.27 - 7.48) / 0.25 GiB


def test_concurrency_explorer_model_too_big_and_invalid():
    ex = concurrency_explorer()
    r = ex.set(model="Llama-3.1-70B", gpu="RTX 4090 24GB")
    assert ex.error is None and r.meta["requests"] == 0 and "exceed" in r.meta["reason"]
    ex.set(model="Llama-3.1-8B", gpu="H100 80GB", seq_len=200_000)
    assert ex.result is None and "max_position_embeddings" in ex.error
    ex.set(seq_len=0)
    assert ex.result is None and "seq_len" in ex.error


# -- plot functions draw without error ---------------------------------------------------------
def test_plot_functions(ax):
    models = ["Llama-2-7b", "Llama-3.1-8B", "DeepSeek-V3", "Mistral-7B-v0.1"]
    plot_kv_per_token(models, ax)
    assert len(ax.patches) == len(models)
    ax.clear()
    plot_kv_vs_context(models, 2 ** np.arange(8, 18), ax)
    assert len(ax.get_lines()) >= len(models)
    ax.clear()
    plot_kv_vs_weights(models, 2 ** np.arange(0, 9), ax)
    ax.clear()
    plot_concurrency("Llama-3.1-8B", 2 ** np.arange(8, 18), ax, gpus=GPUS)
    ax.clear()
    plot_gpu_budget(concurrency_explorer().result, ax)


def test_concurrency_text_states_the_margin_and_plot_keeps_a_short_title(ax):
    from memlib.widgets.kv import describe_concurrency
    ex = concurrency_explorer()
    held = H100 - int(H100 * 0.9)                    # the 10 % above vLLM's default cap: 7.92 GiB
    assert f"Margin: {held / 2**30:,.2f} GiB above the 90% cap" in describe_concurrency(ex.result)
    r = concurrency_explorer(model="Llama-3.1-70B", gpu="A100 80GB").result     # 131 GiB of bf16 weights
    plot_gpu_budget(r, ax)
    assert ax.get_title() == "0 requests: the weights do not fit"
    assert "exceed" in describe_concurrency(r)       # the reason is in the text, not in a clipped title
