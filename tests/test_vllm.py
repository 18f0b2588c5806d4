"""memlib.vllm: vLLM's accounting release by release, checked by hand arithmetic (chapter 07).

Every boundary between releases is a source change cited in data/serving/VLLM_ACCOUNTING.md;
the expected numbers are hand arithmetic on the configs, or what a real log printed.
"""
import pytest

import memlib
from memlib import vllm as V
from memlib.serving import weights_per_gpu

GIB, MIB = 2**30, 2**20


# -- versions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("version, engine, family", [
    ("0.2.5", None, "v0-total-used"), ("0.5.5", None, "v0-init-free"), ("0.6.3.post1", None, "v0-init-free"),
    ("0.6.4.post1", None, "torch-peak"), ("0.6.5", None, "profiling"), ("0.7.3", "v0", "profiling"),
    ("0.7.3", "v1", "torch-peak"), ("0.8.5.post1", None, "torch-peak"), ("0.9.0", None, "torch-peak"),
    ("0.9.1", None, "profiling"), ("0.19", None, "profiling"), ("0.21.0", None, "profiling+graphs"),
    ("0.33.0", None, "profiling+graphs")])
def test_accounting_family_by_release(version, engine, family):
    assert V.accounting_family(version, engine) == family


def test_engine_defaults_and_errors():
    assert V.default_engine("0.7.3") == "v0" and V.default_engine("0.8.0") == "v1"
    assert V.parse_version("0.6.4.post1") == (0, 6, 4) and V.parse_version("v0.19") == (0, 19, 0)
    with pytest.raises(ValueError, match="engine"):
        V.accounting_family("0.11.0", "v0")
    with pytest.raises(ValueError, match="engine"):
        V.accounting_family("0.6.0", "v1")
    with pytest.raises(ValueError, match="vllm_version"):
        V.parse_version("latest")


def test_scheduler_defaults():
    H100, L40S = 79 * GIB, 44 * GIB
    assert V.scheduler_defaults("0.6.4", "v0", H100, "H100", 20000) == (20000, 256)   # max(L, 2048)
    assert V.scheduler_defaults("0.6.4", "v0", H100, "H100", 4096) == (4096, 256)
    assert V.scheduler_defaults("0.6.4", "v0", H100, "H100", 1024) == (2048, 256)
    assert V.scheduler_defaults("0.6.4", "v0", H100, "H100", 131072) == (512, 256)   # chunked, old default
    assert V.scheduler_defaults("0.8.5", "v0", H100, "H100", 131072) == (2048, 256)
    assert V.scheduler_defaults("0.9.2", "v1", H100, "H100", 8192) == (8192, 1024)
    assert V.scheduler_defaults("0.9.2", "v1", H100, "H100", 8192, usage="llm") == (16384, 1024)
    assert V.scheduler_defaults("0.9.2", "v1", L40S, "L40S", 8192) == (2048, 256)
    assert V.scheduler_defaults("0.8.3", "v1", L40S, "L40S", 8192) == (2048, 1024)   # 1024 everywhere < 0.8.4
    assert V.scheduler_defaults("0.9.0", "v1", 79 * GIB, "A100-80GB", 8192) == (2048, 256)  # A100 excluded
    assert V.scheduler_defaults("0.8.5", "v1", 79 * GIB, "A100-80GB", 8192) == (8192, 1024)
    assert V.scheduler_defaults("0.28", "v1", 178 * GIB, "B200", 8192) == (16384, 1024)


def test_kv_dtype_vocabulary():
    assert V.kv_dtype_of("auto", "fp16") == "fp16" and V.kv_dtype_of("fp8_e5m2") == "fp8"
    with pytest.raises(ValueError, match="kv_dtype"):
        V.kv_dtype_of("int3")


# -- from KV bytes to blocks ------------------------------------------------------------------

def test_v1_blocks_tokens_and_concurrency_by_hand():
    # Qwen3-8B: 36 layers x 8 heads x 128 x 2 (K,V) x 2 B = 147,456 B/token; 8505 blocks of 16.
    avail = 8505 * 16 * 147_456
    lay = V.kv_cache_layout("Qwen3-8B", avail, 40960, vllm_version="0.9.2")
    m = lay.meta
    assert m["num_blocks"] == 8505 and m["kv_cache_tokens"] == 136_080
    assert lay["kv_cache"] == avail and lay["unallocated"] == 0 and lay.kinds["kv_cache"] == "kv"
    assert m["max_concurrency"] == pytest.approx(8505 / 2560)          # 40960 / 16 = 2560 blocks
    assert round(m["max_concurrency"], 2) == 3.32                      # the log's "3.32x"
    short = V.kv_cache_layout("Qwen3-8B", avail - 1, 40960, vllm_version="0.9.2")
    assert short.meta["num_blocks"] == 8504 and short["unallocated"] == 16 * 147_456 - 1
    old = V.kv_cache_layout("Qwen3-8B", avail, 40000, vllm_version="0.8.5")   # tokens / max_model_len
    assert old.meta["max_concurrency"] == pytest.approx(136_080 / 40000)
    new = V.kv_cache_layout("Qwen3-8B", avail, 40960, vllm_version="0.25")    # printed tokens derived
    assert new.meta["kv_cache_tokens"] == int(8505 / 2560 * 40960) == 136_080


def test_v0_block_is_all_layers():
    # Llama-3.1-8B V0 block: 16 tokens x 32 layers x 4096 B = 2 MiB; 3.81 GiB -> 1950 blocks
    lay = V.kv_cache_layout("Llama-3.1-8B", int(3.81 * GIB), 20000, vllm_version="0.6.4", engine="v0").meta
    assert lay["num_blocks"] == int(3.81 * 1024 / 2) == 1950
    assert lay["kv_cache_tokens"] == 1950 * 16 and lay["max_concurrency"] == pytest.approx(31200 / 20000)


def test_hybrid_allocator_by_hand():
    # gemma-2-9b: 21 sliding (window 4096) + 21 full layers, 8 KV heads x 256, 2 B: 8192 B/token/layer.
    page = 16 * 8192
    avail = 21 * page * 2000                     # group size 21 -> 2000 blocks in each shared pool
    lay = V.kv_cache_layout("gemma-2-9b", avail, 8192, vllm_version="0.10.2", max_num_batched_tokens=2048).meta
    assert lay["hybrid"] and lay["num_blocks"] == 2000
    assert lay["kv_cache_tokens"] == 2000 // 2 * 16                      # two groups share the blocks
    full = 8192 // 16                                                    # 512 blocks per full layer
    slide = -(-min(4096 - 1 + 2048, 8192) // 16) + 1                     # 384 + 1
    assert lay["max_concurrency"] == pytest.approx(2000 * 21 / (21 * (full + slide)))
    old = V.kv_cache_layout("gemma-2-9b", avail, 8192, vllm_version="0.8.5").meta   # whole context everywhere
    assert not old["hybrid"] and old["num_blocks"] == avail // (page * 42)


def test_all_sliding_layers_cap_a_request_at_the_window():
    # Mistral-7B-v0.1: 32 layers, all sliding (window 4096), 8 KV heads x 128 x 2 B = 4096 B/token/layer
    avail = 32 * 16 * 4096 * 1000
    lay = V.kv_cache_layout("Mistral-7B-v0.1", avail, 32768, vllm_version="0.10.2",
                            max_num_batched_tokens=2048).meta
    assert lay["num_blocks"] == 1000 and not lay["hybrid"]
    assert lay["max_concurrency"] == pytest.approx(1000 / (-(-(4095 + 2048) // 16) + 1))   # 385 blocks
    assert V.kv_cache_layout("Mistral-7B-v0.1", avail, 32768, vllm_version="0.8.5").meta["max_concurrency"] == \
        pytest.approx(16000 / 32768)


def test_swap_blocks_match_the_cpu_blocks_vllm_printed():
    # V0's "# CPU blocks" = 4 GiB swap space / block bytes.  Printed: 2048 (Llama-3.1-8B, vllm#10517),
    # 512 (Llama-2-7b, 8 MiB blocks), 4096 (Llama-2-7b at tp=8, 1 MiB blocks).
    assert V.swap_blocks("Llama-3.1-8B") == 4 * GIB // (2 * MIB) == 2048
    assert V.swap_blocks("Llama-2-7b") == 512
    assert V.swap_blocks("Llama-2-7b", tp=8) == 4096


# -- the profile run --------------------------------------------------------------------------

def test_activation_peak_by_hand():
    # Llama-3.1-8B, 20000 tokens: forward = T x 2 B x (3H + 3I) = 20000 x 2 x (12288 + 43008)
    a = V.activation_peak("Llama-3.1-8B", 20000, 256, sampler="sort", engine="v0")
    assert a.phases["forward"] == 20000 * 2 * (3 * 4096 + 3 * 14336) == 2_211_840_000
    assert a.phases["sampler"] == 20000 * 4096 * 2 + 256 * 128256 * 38   # hidden states + 38 B per logit
    assert a.total == a.phases["forward"] and a.peak_phase == "forward" and a.kinds["activation_peak"] == "activation"
    assert V.activation_peak("Llama-3.1-8B", 2048, 256, sampler="sort").peak_phase == "sampler"
    fi = V.activation_peak("Llama-3.1-8B", 2048, 256, sampler="flashinfer")
    assert fi.phases["sampler"] == 2048 * 4096 * 2 + 256 * 128256 * 10
    assert V.activation_peak("Llama-3.1-8B", 100, 256).meta["seqs"] == 100      # S never exceeds T


def test_v0_non_driver_ranks_hold_only_their_logit_slice():
    a0 = V.activation_peak("Qwen3-8B", 8192, 256, tp=4, engine="v0", rank=0)
    a1 = V.activation_peak("Qwen3-8B", 8192, 256, tp=4, engine="v0", rank=1)
    assert a1.phases["sampler"] == 8192 * 4096 * 2 + 256 * (151936 // 4) * 2 < a0.phases["sampler"]


def test_activation_is_linear_in_tokens_not_quadratic():
    # vLLM's attention kernels never build the S x S scores: the forward phase is linear in T.
    f = [V.activation_peak("Llama-3.1-8B", t, 1).phases["forward"] for t in (4096, 8192)]
    assert f[1] == 2 * f[0]


# -- the budget -------------------------------------------------------------------------------

def test_budget_components_sum_to_total_times_utilization():
    b = V.vllm_budget("Llama-3.1-8B", "H100-80GB", max_model_len=8192, vllm_version="0.9.2")
    assert b.total == b.meta["budget"] == int(memlib.get_gpu("H100-80GB").usable_bytes * 0.9)
    assert b["kv_cache"] == b.meta["num_blocks"] * 16 * 131_072
    assert 0 <= b["unallocated"] < 16 * 131_072                      # less than one block
    assert "cuda_context" not in b and b.meta["outside_budget"]["cuda_context"] > 0
    assert set(b.kinds.values()) <= set(memlib.KINDS) and b.kinds["kv_cache"] == "kv"
    assert b.meta["kv_needed_bytes"] == 8192 * 131_072


def test_the_release_decides_what_is_charged():
    kw = dict(max_model_len=8192, max_num_batched_tokens=8192, max_num_seqs=256, sampler="sort")
    peak = V.vllm_budget("Llama-3.1-8B", "H100-80GB", vllm_version="0.8.5", **kw)
    prof = V.vllm_budget("Llama-3.1-8B", "H100-80GB", vllm_version="0.9.2", **kw)
    graphs = V.vllm_budget("Llama-3.1-8B", "H100-80GB", vllm_version="0.21", **kw)
    eager = V.vllm_budget("Llama-3.1-8B", "H100-80GB", vllm_version="0.21", enforce_eager=True, **kw)
    assert peak["cuda_context"] == V.CUDA_CONTEXT and "cuda_context" not in prof
    assert prof.meta["available_kv_bytes"] - peak.meta["available_kv_bytes"] == V.CUDA_CONTEXT
    assert graphs["cuda_graphs"] == V.CUDA_GRAPHS["v1"] and "cuda_graphs" not in eager
    assert eager.meta["available_kv_bytes"] - graphs.meta["available_kv_bytes"] == V.CUDA_GRAPHS["v1"]


def test_more_utilization_more_tokens_and_fp8_doubles_them():
    kw = dict(gpu="L40S", max_model_len=8192, vllm_version="0.10.2")
    lo = V.vllm_budget("Llama-3.1-8B", gpu_memory_utilization=0.8, **kw).meta["kv_cache_tokens"]
    hi = V.vllm_budget("Llama-3.1-8B", gpu_memory_utilization=0.95, **kw).meta["kv_cache_tokens"]
    assert hi > lo
    bf = V.vllm_budget("Llama-3.1-8B", **kw).meta
    f8 = V.vllm_budget("Llama-3.1-8B", kv_dtype="fp8", **kw).meta
    assert f8["num_blocks"] in (2 * bf["num_blocks"], 2 * bf["num_blocks"] + 1)


def test_tensor_parallelism_is_per_gpu():
    one = V.vllm_budget("Llama-3.1-70B", "H100-80GB", tp=4, max_model_len=8192, vllm_version="0.10.2")
    assert one["weights"] < 0.27 * weights_per_gpu("Llama-3.1-70B").total
    assert one.meta["page_bytes_per_token"] == 80 * 2 * 2 * 128 * 2           # 8 KV heads / 4


def test_lora_slots_and_a_draft_model_come_out_of_the_kv_pool():
    kw = dict(max_model_len=8192, vllm_version="0.10.2")
    base = V.vllm_budget("Llama-3.1-8B", "H100-80GB", **kw)
    lora = V.vllm_budget("Llama-3.1-8B", "H100-80GB", max_loras=4, max_lora_rank=16, **kw)
    assert lora["lora_slots"] == 4 * 83_886_080                    # test_serving: 80 MiB per rank-16 slot
    assert base.meta["available_kv_bytes"] - lora.meta["available_kv_bytes"] == lora["lora_slots"]
    # Qwen3-0.6B drafting for Qwen3-32B at tp=4: both have 8 KV heads of 128 -> 2 per GPU.
    draft = V.vllm_budget("Qwen3-32B", "H100-80GB", tp=4, draft_model="Qwen3-0.6B", **kw)
    per_token = 64 * 2 * 2 * 128 * 2 + 28 * 2 * 2 * 128 * 2
    assert draft.meta["page_bytes_per_token"] == per_token == 94_208
    assert draft["kv_cache"] == draft.meta["num_blocks"] * 16 * per_token
    assert draft["draft_weights"] == weights_per_gpu("Qwen3-0.6B", tp=4).total


def test_a_model_that_does_not_fit():
    b = V.vllm_budget("Llama-3.1-70B", "RTX-4090", max_model_len=4096, vllm_version="0.10.2")
    assert b.meta["available_kv_bytes"] < 0 and b["kv_cache"] == 0 and b.meta["kv_cache_tokens"] == 0


def test_gpus_needed_is_the_smallest_tp_that_holds_the_requests():
    g = V.gpus_needed("Llama-3.1-70B", "H100-80GB", max_model_len=8192, concurrency=8, vllm_version="0.10.2")
    tp = g.meta["gpus"]
    assert g.meta["max_concurrency"] >= 8 and 64 % tp == 0
    smaller = [t for t in range(1, tp) if 64 % t == 0]
    assert all(V.vllm_budget("Llama-3.1-70B", "H100-80GB", tp=t, max_model_len=8192,
                             vllm_version="0.10.2").meta["max_concurrency"] < 8 for t in smaller)
    assert V.gpus_needed("Llama-3.1-70B", "RTX-4090", max_model_len=8192, concurrency=1, max_tp=2) is None


def test_bad_inputs_name_the_field():
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        V.vllm_budget("Llama-3.1-8B", gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="kv_dtype"):
        V.vllm_budget("Llama-3.1-8B", kv_dtype="int3")
    with pytest.raises(ValueError, match="gpu"):
        V.vllm_budget("Llama-3.1-8B", gpu="TPU")
    with pytest.raises(ValueError, match="tp"):
        V.vllm_budget("Llama-3.1-8B", tp=0)
    with pytest.raises(ValueError, match="quantization"):
        V.vllm_budget("Llama-3.1-8B", quantization="int2")
    with pytest.raises(ValueError, match="max_model_len"):          # Llama-2-13b: 4096 positions
        V.vllm_budget("Llama-2-13b", max_model_len=8192)
