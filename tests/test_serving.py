"""memlib.serving: vLLM's accounting, checked by hand arithmetic (chapter 07)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import memlib
from memlib import serving as S

GIB, MIB = 2**30, 2**20
ROOT = Path(__file__).resolve().parent.parent


# -- versions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("version, engine, family", [
    ("0.2.5", None, "v0-total-used"), ("0.5.5", None, "v0-init-free"), ("0.6.3.post1", None, "v0-init-free"),
    ("0.6.4.post1", None, "torch-peak"), ("0.6.5", None, "profiling"), ("0.7.3", "v0", "profiling"),
    ("0.7.3", "v1", "torch-peak"), ("0.8.5.post1", None, "torch-peak"), ("0.9.0", None, "torch-peak"),
    ("0.9.1", None, "profiling"), ("0.19", None, "profiling"), ("0.21.0", None, "profiling+graphs"),
    ("0.33.0", None, "profiling+graphs")])
def test_accounting_family_by_release(version, engine, family):
    # Each boundary is a source change cited in data/serving/VLLM_ACCOUNTING.md.
    assert S.accounting_family(version, engine) == family


def test_engine_defaults_and_errors():
    assert S.default_engine("0.7.3") == "v0" and S.default_engine("0.8.0") == "v1"
    assert S.parse_version("0.6.4.post1") == (0, 6, 4) and S.parse_version("v0.19") == (0, 19, 0)
    with pytest.raises(ValueError, match="engine"):
        S.accounting_family("0.11.0", "v0")
    with pytest.raises(ValueError, match="engine"):
        S.accounting_family("0.6.0", "v1")
    with pytest.raises(ValueError, match="vllm_version"):
        S.parse_version("latest")


def test_scheduler_defaults():
    H100, L40S = 79 * GIB, 44 * GIB
    assert S.scheduler_defaults("0.6.4", "v0", H100, "H100", 20000) == (20000, 256)   # max(L, 2048)
    assert S.scheduler_defaults("0.6.4", "v0", H100, "H100", 4096) == (4096, 256)
    assert S.scheduler_defaults("0.6.4", "v0", H100, "H100", 1024) == (2048, 256)
    assert S.scheduler_defaults("0.6.4", "v0", H100, "H100", 131072) == (512, 256)   # chunked, old default
    assert S.scheduler_defaults("0.8.5", "v0", H100, "H100", 131072) == (2048, 256)
    assert S.scheduler_defaults("0.9.2", "v1", H100, "H100", 8192) == (8192, 1024)
    assert S.scheduler_defaults("0.9.2", "v1", H100, "H100", 8192, usage="llm") == (16384, 1024)
    assert S.scheduler_defaults("0.9.2", "v1", L40S, "L40S", 8192) == (2048, 256)
    assert S.scheduler_defaults("0.8.3", "v1", L40S, "L40S", 8192) == (2048, 1024)   # 1024 everywhere < 0.8.4
    assert S.scheduler_defaults("0.9.0", "v1", 79 * GIB, "A100-80GB", 8192) == (2048, 256)  # A100 excluded
    assert S.scheduler_defaults("0.8.5", "v1", 79 * GIB, "A100-80GB", 8192) == (8192, 1024)


# -- weights ----------------------------------------------------------------------------------

def test_weights_tp1_equal_memlib_weights_plus_the_rope_table():
    for model in ("Llama-3.1-8B", "Qwen3-30B-A3B", "DeepSeek-V2-Lite", "gemma-2-9b", "Mixtral-8x7B-v0.1"):
        spec = memlib.load_spec(model)
        rotary = spec.qk_rope_head_dim if spec.is_mla else spec.head_dim
        w = S.weights_per_gpu(model)
        assert w["rope_cache"] == spec.max_position_embeddings * rotary * 2
        assert w.total - w["rope_cache"] == memlib.weight_memory(model).total, model


def test_llama_3_1_8b_weights_by_hand():
    # 8,030,261,248 params x 2 B + the 131072 x 128 x 2 B rope table
    assert S.weights_per_gpu("Llama-3.1-8B").total == 8_030_261_248 * 2 + 131072 * 128 * 2
    # tp=2: q 4096x4096/2, k,v 4096x(4 heads x128), o 2048x4096, MLP 3 x 4096x14336/2, x 32 layers, 2 B
    per_layer = 4096 * 2048 + 2 * 4096 * 512 + 2048 * 4096 + 3 * 4096 * 7168
    vocab = 2 * (128256 // 2) * 4096          # embedding + lm_head, each split over 2 ranks
    norms = 32 * 2 * 4096 + 4096
    w = S.weights_per_gpu("Llama-3.1-8B", tp=2)
    assert w["matrices"] == 32 * per_layer * 2
    assert w["vocab"] == vocab * 2 and w["other"] == norms * 2


def test_kv_heads_are_copied_when_tp_exceeds_them():
    # Llama-3.1-8B has 8 KV heads: at tp=16 each rank keeps 1 (not 0.5) -> k,v width 128.
    w8 = S.weights_per_gpu("Llama-3.1-8B", tp=8)["matrices"]
    w16 = S.weights_per_gpu("Llama-3.1-8B", tp=16)["matrices"]
    kv8 = 2 * 4096 * 128 * 32 * 2          # one head each at tp=8 too
    assert w8 - w16 > 0
    assert (w8 - kv8) / 2 == pytest.approx(w16 - kv8, rel=1e-9)   # everything else halves


def test_quantized_matrices_by_hand():
    # fp8: 1 B per weight + one 4 B scale per output channel; gptq: n/2 + groups*out*(2 + 1/2) + 4*in
    assert S._matrix_bytes("fp8", 4096, 1024) == 4096 * 1024 + 4 * 1024
    assert S._matrix_bytes("gptq", 4096, 1024) == 4096 * 1024 // 2 + 32 * 1024 * 2 + 32 * 1024 // 2 + 4 * 4096
    assert S._matrix_bytes("awq", 4096, 1024) == 4096 * 1024 // 2 + 32 * 1024 * 2 + 32 * 1024 // 2


# -- the KV cache -----------------------------------------------------------------------------

def test_page_bytes_per_token_per_layer():
    assert S.kv_bytes_per_token_per_layer("Llama-3.1-8B") == 2 * 8 * 128 * 2
    assert S.kv_bytes_per_token_per_layer("Llama-3.1-8B", tp=4) == 2 * 2 * 128 * 2
    assert S.kv_bytes_per_token_per_layer("Llama-3.1-8B", tp=16) == 2 * 1 * 128 * 2   # copied head
    assert S.kv_bytes_per_token_per_layer("Llama-3.1-8B", kv_dtype="fp8") == 2 * 8 * 128
    # MLA keeps the latent: (kv_lora_rank 512 + rope 64) x 2 B, the same on every rank
    assert S.kv_bytes_per_token_per_layer("DeepSeek-V2-Lite") == 576 * 2
    assert S.kv_bytes_per_token_per_layer("DeepSeek-V2-Lite", tp=8) == 576 * 2


def test_v1_blocks_tokens_and_concurrency_by_hand():
    # Qwen3-8B: 36 layers x 8 heads x 128 x 2 (K,V) x 2 B = 147,456 B/token; 8505 blocks of 16.
    avail = 8505 * 16 * 147_456
    lay = S.kv_cache_layout("Qwen3-8B", avail, 40960, vllm_version="0.9.2")
    assert lay["num_blocks"] == 8505 and lay["kv_cache_tokens"] == 136_080
    assert lay["max_concurrency"] == pytest.approx(8505 / 2560)          # 40960 / 16 = 2560 blocks
    assert round(lay["max_concurrency"], 2) == 3.32                      # the log's "3.32x"
    # one byte short of a block is not a block
    assert S.kv_cache_layout("Qwen3-8B", avail - 1, 40960, vllm_version="0.9.2")["num_blocks"] == 8504
    # 0.8.x printed tokens / max_model_len instead
    old = S.kv_cache_layout("Qwen3-8B", avail, 40000, vllm_version="0.8.5")
    assert old["max_concurrency"] == pytest.approx(136_080 / 40000)


def test_v0_block_is_all_layers():
    # Llama-3.1-8B V0 block: 16 tokens x 32 layers x 4096 B = 2 MiB; 3.81 GiB -> 1950 blocks
    lay = S.kv_cache_layout("Llama-3.1-8B", int(3.81 * GIB), 20000, vllm_version="0.6.4", engine="v0")
    assert lay["num_blocks"] == int(3.81 * 1024 / 2) == 1950
    assert lay["kv_cache_tokens"] == 1950 * 16 and lay["max_concurrency"] == pytest.approx(31200 / 20000)


def test_hybrid_allocator_by_hand():
    # gemma-2-9b: 21 sliding (window 4096) + 21 full layers, 8 KV heads x 256, 2 B: 8192 B/token/layer.
    page = 16 * 8192
    avail = 21 * page * 2000                     # group size 21 -> 2000 blocks in each shared pool
    lay = S.kv_cache_layout("gemma-2-9b", avail, 8192, vllm_version="0.10.2", max_num_batched_tokens=2048)
    assert lay["hybrid"] and lay["num_blocks"] == 2000
    assert lay["kv_cache_tokens"] == 2000 // 2 * 16                      # two groups share the blocks
    full = 8192 // 16                                                    # 512 blocks per full layer
    slide = -(-min(4096 - 1 + 2048, 8192) // 16) + 1                     # 384 + 1
    assert lay["max_concurrency"] == pytest.approx(2000 * 21 / (21 * (full + slide)))
    # before 0.9.1 every layer holds the whole context
    old = S.kv_cache_layout("gemma-2-9b", avail, 8192, vllm_version="0.8.5")
    assert not old["hybrid"] and old["num_blocks"] == avail // (page * 42)


def test_all_sliding_layers_cap_a_request_at_the_window():
    # Mistral-7B-v0.1: 32 layers, all sliding (window 4096), 8 KV heads x 128 x 2 B = 4096 B/token/layer
    avail = 32 * 16 * 4096 * 1000
    lay = S.kv_cache_layout("Mistral-7B-v0.1", avail, 32768, vllm_version="0.10.2", max_num_batched_tokens=2048)
    assert lay["num_blocks"] == 1000 and not lay["hybrid"]
    assert lay["max_concurrency"] == pytest.approx(1000 / (-(-(4095 + 2048) // 16) + 1))   # 385 blocks
    assert S.kv_cache_layout("Mistral-7B-v0.1", avail, 32768, vllm_version="0.8.5")["max_concurrency"] == \
        pytest.approx(16000 / 32768)


def test_kv_needed_for_one_request():
    # DeepSeek-V2-Lite at 32768 tokens: 27 layers x 576 x 2 B x 32768 = 0.949 GiB (vLLM printed 0.95)
    assert S.kv_bytes_per_request("DeepSeek-V2-Lite", 32768) == 27 * 1152 * 32768
    assert S.max_model_len_that_fits("Llama-3.1-8B", 2 * MIB * 10 + 5) == 160


# -- the profile run --------------------------------------------------------------------------

def test_activation_peak_by_hand():
    # Llama-3.1-8B, 20000 tokens: forward = T x 2 B x (3H + 3I) = 20000 x 2 x (12288 + 43008)
    a = S.activation_peak("Llama-3.1-8B", 20000, 256, sampler="sort", engine="v0")
    assert a.phases["forward"] == 20000 * 2 * (3 * 4096 + 3 * 14336) == 2_211_840_000
    # sampler = final hidden states + 256 x 128256 logits x 38 B
    assert a.phases["sampler"] == 20000 * 4096 * 2 + 256 * 128256 * 38
    assert a.total == a.phases["forward"] and a.peak_phase == "forward"
    small = S.activation_peak("Llama-3.1-8B", 2048, 256, sampler="sort")
    assert small.peak_phase == "sampler"
    fi = S.activation_peak("Llama-3.1-8B", 2048, 256, sampler="flashinfer")
    assert fi.phases["sampler"] == 2048 * 4096 * 2 + 256 * 128256 * 10
    # S never exceeds T
    assert S.activation_peak("Llama-3.1-8B", 100, 256).meta["seqs"] == 100


def test_v0_non_driver_ranks_hold_only_their_logit_slice():
    a0 = S.activation_peak("Qwen3-8B", 8192, 256, tp=4, engine="v0", rank=0)
    a1 = S.activation_peak("Qwen3-8B", 8192, 256, tp=4, engine="v0", rank=1)
    assert a1.phases["sampler"] == 8192 * 4096 * 2 + 256 * (151936 // 4) * 2 < a0.phases["sampler"]


# -- the budget -------------------------------------------------------------------------------

def test_budget_components_sum_to_total_times_utilization():
    b = S.vllm_budget("Llama-3.1-8B", "H100-80GB", max_model_len=8192, vllm_version="0.9.2")
    assert b.total == b.meta["budget"] == int(memlib.hardware.get_gpu("H100-80GB").usable_bytes * 0.9)
    assert b["kv_cache"] == b.meta["num_blocks"] * 16 * 131_072
    assert 0 <= b["unallocated"] < 16 * 131_072                      # less than one block
    assert "cuda_context" not in b and b.meta["outside_budget"]["cuda_context"] > 0


def test_the_release_decides_what_is_charged():
    kw = dict(max_model_len=8192, max_num_batched_tokens=8192, max_num_seqs=256, sampler="sort")
    peak = S.vllm_budget("Llama-3.1-8B", "H100-80GB", vllm_version="0.8.5", **kw)
    prof = S.vllm_budget("Llama-3.1-8B", "H100-80GB", vllm_version="0.9.2", **kw)
    graphs = S.vllm_budget("Llama-3.1-8B", "H100-80GB", vllm_version="0.21", **kw)
    eager = S.vllm_budget("Llama-3.1-8B", "H100-80GB", vllm_version="0.21", enforce_eager=True, **kw)
    assert peak["cuda_context"] == S.CUDA_CONTEXT and "cuda_context" not in prof
    assert prof.meta["available_kv_bytes"] - peak.meta["available_kv_bytes"] == S.CUDA_CONTEXT
    assert graphs["cuda_graphs"] == S.CUDA_GRAPHS["v1"] and "cuda_graphs" not in eager
    assert eager.meta["available_kv_bytes"] - graphs.meta["available_kv_bytes"] == S.CUDA_GRAPHS["v1"]


def test_more_utilization_more_tokens_and_fp8_doubles_them():
    kw = dict(gpu="L40S", max_model_len=8192, vllm_version="0.10.2")
    lo = S.vllm_budget("Llama-3.1-8B", gpu_memory_utilization=0.8, **kw).meta["kv_cache_tokens"]
    hi = S.vllm_budget("Llama-3.1-8B", gpu_memory_utilization=0.95, **kw).meta["kv_cache_tokens"]
    assert hi > lo
    bf = S.vllm_budget("Llama-3.1-8B", **kw).meta
    f8 = S.vllm_budget("Llama-3.1-8B", kv_dtype="fp8", **kw).meta
    assert f8["num_blocks"] == 2 * bf["num_blocks"] or f8["num_blocks"] == 2 * bf["num_blocks"] + 1


def test_tensor_parallelism_is_per_gpu():
    one = S.vllm_budget("Llama-3.1-70B", "H100-80GB", tp=4, max_model_len=8192, vllm_version="0.10.2")
    assert one["weights"] < 0.27 * S.weights_per_gpu("Llama-3.1-70B").total
    assert one.meta["page_bytes_per_token"] == 80 * 2 * 2 * 128 * 2           # 8 KV heads / 4


def test_a_model_that_does_not_fit():
    b = S.vllm_budget("Llama-3.1-70B", "RTX-4090", max_model_len=4096, vllm_version="0.10.2")
    assert b.meta["available_kv_bytes"] < 0 and b["kv_cache"] == 0 and b.meta["kv_cache_tokens"] == 0


def test_bad_inputs_name_the_field():
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        S.vllm_budget("Llama-3.1-8B", gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="kv_dtype"):
        S.vllm_budget("Llama-3.1-8B", kv_dtype="int3")
    with pytest.raises(ValueError, match="gpu"):
        S.vllm_budget("Llama-3.1-8B", gpu="TPU")
    with pytest.raises(ValueError, match="tp"):
        S.vllm_budget("Llama-3.1-8B", tp=0)
    with pytest.raises(ValueError, match="quantization"):
        S.weights_per_gpu("Llama-3.1-8B", quantization="int2")


# -- features ---------------------------------------------------------------------------------

def test_swap_blocks_match_the_cpu_blocks_vllm_printed():
    # V0's "# CPU blocks" = 4 GiB swap space / block bytes.  Printed: 2048 (Llama-3.1-8B, vllm#10517),
    # 512 (Llama-2-7b, 8 MiB blocks), 4096 (Llama-2-7b at tp=8, 1 MiB blocks), 9362 (Qwen2.5-1.5B).
    assert S.swap_blocks("Llama-3.1-8B") == 4 * GIB // (2 * MIB) == 2048
    assert S.swap_blocks("Llama-2-7b") == 512
    assert S.swap_blocks("Llama-2-7b", tp=8) == 4096


def test_prefix_caching_shares_whole_blocks_only():
    per_token = 32 * 4096                      # Llama-3.1-8B, all layers
    assert S.prefix_cache_savings("Llama-3.1-8B", 1000, 10) == 9 * 992 * per_token   # 62 full blocks
    assert S.prefix_cache_savings("Llama-3.1-8B", 15, 10) == 0


def test_parallel_sampling_shares_the_prompt_blocks():
    b = S.parallel_sampling_kv("Llama-3.1-8B", 1000, 100, 4)
    from memlib.kv_cache import beam_search_kv
    assert b.total == beam_search_kv("Llama-3.1-8B", 1000, 100, 4, share_prefix=True, block_size=16).total
    assert b.total < 4 * S.kv_bytes_per_request("Llama-3.1-8B", 1100)


def test_preemption():
    sw = S.preemption_cost("Llama-3.1-8B", 1000, "swap")
    rc = S.preemption_cost("Llama-3.1-8B", 1000, "recompute")
    assert sw["freed_bytes"] == rc["freed_bytes"] == 63 * 2 * MIB      # ceil(1000/16) blocks of 2 MiB
    assert sw["cpu_bytes"] == sw["freed_bytes"] and sw["pcie_bytes"] == 2 * sw["freed_bytes"]
    assert rc["cpu_bytes"] == 0 and rc["recompute_tokens"] == 1000
    with pytest.raises(ValueError, match="mode"):
        S.preemption_cost("Llama-3.1-8B", 10, "drop")


def test_draft_model_shares_the_pool():
    d = S.draft_model_cost("Llama-3.1-70B", "Llama-3.1-8B", 8192)
    assert d["target_kv_bytes_per_token"] == 80 * 4096 and d["kv_bytes_per_token"] == 80 * 4096 + 32 * 4096
    assert d["token_fraction"] == pytest.approx(327_680 / 458_752)
    assert d["draft_weights"] == S.weights_per_gpu("Llama-3.1-8B").total


def test_lora_slots_by_hand():
    # r=16, one slot, every projection of Llama-3.1-8B: 16 x (in + out) x 2 B per layer
    per_layer = 16 * ((4096 + 4096) + 2 * (4096 + 1024) + (4096 + 4096) + 2 * (4096 + 14336) + (14336 + 4096))
    assert S.lora_slot_bytes("Llama-3.1-8B", 1, 16) == 32 * per_layer * 2 == 83_886_080
    assert S.lora_slot_bytes("Llama-3.1-8B", 4, 16) == 4 * 83_886_080
    assert S.lora_slot_bytes("Llama-3.1-8B", 1, 16, targets=("qkv",)) == 32 * 16 * (8192 + 2 * 5120) * 2


# -- the command line -------------------------------------------------------------------------

def run(*args):
    return subprocess.run([sys.executable, "-m", "memlib", *args], capture_output=True, text=True, cwd=ROOT)


def test_serve_json_contract():
    out = run("serve", "Qwen3-8B", "--gpu", "A100-40GB", "--max-model-len", "40960", "--vllm-version", "0.9.2",
              "--sampler", "sort", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    for key in ("kv_cache_tokens", "kv_cache_bytes", "max_concurrency", "components"):
        assert key in d
    b = S.vllm_budget("Qwen3-8B", "A100-40GB", max_model_len=40960, vllm_version="0.9.2", sampler="sort")
    assert d["kv_cache_tokens"] == b.meta["kv_cache_tokens"] and d["components"] == dict(b.components)
    assert d["kv_cache_bytes"] == d["components"]["kv_cache"]


def test_serve_flags_and_errors():
    d = json.loads(run("serve", "Llama-3.1-8B", "--gpu", "H100-80GB", "--tp", "2", "--kv-dtype", "fp8",
                       "--max-num-batched-tokens", "4096", "--json").stdout)
    assert d["tp"] == 2 and d["kv_dtype"] == "fp8" and d["max_num_batched_tokens"] == 4096
    table = run("serve", "Llama-3.1-8B", "--max-model-len", "8192")
    assert table.returncode == 0 and "KV cache:" in table.stdout
    bad = run("serve", "Llama-3.1-8B", "--gpu", "V100")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "gpu" in bad.stderr


def test_gpus_command():
    d = json.loads(run("gpus", "--json").stdout)
    assert [r["name"] for r in d] == memlib.hardware.gpu_names()
    assert "H100-80GB" in run("gpus").stdout


def test_the_serving_core_imports_only_numpy():
    code = ("import sys, memlib.serving, memlib.hardware, memlib.serving_cli; "
            "bad = [m for m in ('torch', 'transformers', 'matplotlib', 'ipywidgets') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
