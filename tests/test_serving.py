"""memlib.serving per GPU, the features that change what fits, runtime="vllm", and the
``serve``/``gpus`` commands (chapter 07).  Expected values are hand arithmetic on the configs."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import memlib
from memlib import serving as S
from memlib.kv_cache import beam_search_kv, kv_cache

GIB, MIB = 2**30, 2**20
ROOT = Path(__file__).resolve().parent.parent


# -- weights per GPU --------------------------------------------------------------------------

def test_weights_tp1_equal_memlib_weights_plus_padding_and_the_rope_table():
    for model in ("Llama-3.1-8B", "Qwen3-30B-A3B", "DeepSeek-V2-Lite", "gemma-2-9b", "Mixtral-8x7B-v0.1"):
        spec = memlib.load_spec(model)
        rotary = spec.qk_rope_head_dim if spec.is_mla else spec.head_dim
        w = S.weights_per_gpu(model)
        assert w["rope_cache"] == spec.max_position_embeddings * rotary * 2
        bare = S.weights_per_gpu(model, vocab_padding=1, rope_table=False)
        assert bare.total == memlib.weight_memory(model).total, model
        tables = 1 if spec.tie_word_embeddings else 2
        assert w["vocab"] - bare["vocab"] == tables * (-(-spec.vocab_size // 64) * 64 - spec.vocab_size) * spec.embed_dim * 2


def test_llama_3_1_8b_weights_by_hand():
    # 8,030,261,248 params x 2 B + the 131072 x 128 x 2 B rope table (128256 is a multiple of 64)
    assert S.weights_per_gpu("Llama-3.1-8B").total == 8_030_261_248 * 2 + 131072 * 128 * 2
    # tp=2: q 4096x4096/2, k,v 4096x(4 heads x128), o 2048x4096, MLP 3 x 4096x14336/2, x 32 layers, 2 B
    per_layer = 4096 * 2048 + 2 * 4096 * 512 + 2048 * 4096 + 3 * 4096 * 7168
    w = S.weights_per_gpu("Llama-3.1-8B", tp=2)
    assert w["matrices"] == 32 * per_layer * 2
    assert w["vocab"] == 2 * (128256 // 2) * 4096 * 2 and w["other"] == (32 * 2 * 4096 + 4096) * 2


def test_kv_heads_are_copied_when_tp_exceeds_them():
    # Llama-3.1-8B has 8 KV heads: at tp=16 each rank keeps 1 (not 0.5).
    assert S.kv_heads_per_gpu("Llama-3.1-8B", 16) == 1 and S.kv_heads_per_gpu("Llama-3.1-8B", 4) == 2
    w8 = S.weights_per_gpu("Llama-3.1-8B", tp=8)["matrices"]
    w16 = S.weights_per_gpu("Llama-3.1-8B", tp=16)["matrices"]
    kv = 2 * 4096 * 128 * 32 * 2          # k and v: one head each at tp=8 and at tp=16
    assert (w8 - kv) / 2 == pytest.approx(w16 - kv, rel=1e-9)      # everything else halves


def test_quantized_matrices_use_chapter_01s_formulas():
    # fp8 / int8: 1 B per weight + one 4 B scale per output channel; gptq 4-bit, group 128.
    spec = memlib.load_spec("Llama-3.1-8B")
    n = sum(i * o * c for _, _, i, o, c in memlib.params.named_linears(spec))
    outs = sum(o * c for _, _, i, o, c in memlib.params.named_linears(spec))
    assert S.weights_per_gpu(spec, quantization="fp8")["matrices"] == n + 4 * outs
    assert S.weights_per_gpu(spec, quantization="int8")["matrices"] == n + 4 * outs
    gptq = memlib.weight_memory(spec, "gptq")
    assert S.weights_per_gpu(spec, quantization="gptq", vocab_padding=1, rope_table=False).total == gptq.total


# -- the KV cache per GPU ---------------------------------------------------------------------

def test_layer_bytes_per_gpu():
    assert S.layer_kv_bytes_per_gpu("Llama-3.1-8B") == 2 * 8 * 128 * 2
    assert S.layer_kv_bytes_per_gpu("Llama-3.1-8B", tp=4) == 2 * 2 * 128 * 2
    assert S.layer_kv_bytes_per_gpu("Llama-3.1-8B", tp=16) == 2 * 1 * 128 * 2   # a copied head
    assert S.layer_kv_bytes_per_gpu("Llama-3.1-8B", kv_dtype="fp8") == 2 * 8 * 128
    # MLA keeps the latent: (kv_lora_rank 512 + rope 64) x 2 B, the same on every rank
    assert S.layer_kv_bytes_per_gpu("DeepSeek-V2-Lite") == S.layer_kv_bytes_per_gpu("DeepSeek-V2-Lite", 8) == 576 * 2


def test_kv_needed_for_one_request():
    # DeepSeek-V2-Lite at 32768 tokens: 27 layers x 576 x 2 B x 32768 = 0.949 GiB (vLLM printed 0.95)
    assert S.kv_bytes_per_request("DeepSeek-V2-Lite", 32768) == 27 * 1152 * 32768
    assert S.kv_bytes_per_request("Llama-3.1-8B", 1000) == 1008 * 131_072          # 63 blocks of 16
    assert S.max_model_len_that_fits("Llama-3.1-8B", 2 * MIB * 10 + 5) == 160


def test_runtime_vllm_pages_by_16_and_frees_blocks_outside_the_window():
    # Llama-3.1-8B, 1000 tokens: 63 blocks of 16 = 1008 token slots per layer
    v = kv_cache("Llama-3.1-8B", 1000, runtime="vllm")
    assert v.total == 1008 * 131_072 and v["paging_waste"] == 8 * 131_072
    assert v.total == kv_cache("Llama-3.1-8B", 1000, block_size=16).total
    # gemma-2-9b: 21 sliding layers (window 4096) x 8192 B/token; at 6008 tokens vLLM has freed
    # floor((6008 - 4095) / 16) = 119 of ceil(6008 / 16) = 376 blocks: 257 blocks = 4112 slots,
    # one block more than the window's 4095 tokens rounded up (256 blocks)
    g = kv_cache("gemma-2-9b", 6008, runtime="vllm")
    m = kv_cache("gemma-2-9b", 6008, runtime="minimal")
    assert g["sliding_layers"] == m["sliding_layers"] == 21 * 4095 * 8192
    assert g.total == 21 * 376 * 16 * 8192 + 21 * 257 * 16 * 8192
    assert g.total - kv_cache("gemma-2-9b", 6008, block_size=16).total == 21 * 16 * 8192
    arr = kv_cache("gemma-2-9b", np.array([1000, 6008]), runtime="vllm").total
    assert arr[1] == g.total and arr[0] == kv_cache("gemma-2-9b", 1000, runtime="vllm").total


# -- features ---------------------------------------------------------------------------------

def test_prefix_caching_shares_whole_blocks_only():
    per_token = 32 * 4096                      # Llama-3.1-8B, all layers
    b = S.prefix_cache_kv("Llama-3.1-8B", 1000, 200, 10)
    assert b["shared_prefix"] == 992 * per_token                                 # 62 full blocks, once
    assert b["private"] == 10 * -(-(8 + 200) // 16) * 16 * per_token             # 13 blocks each
    assert b.meta["saved"] == 9 * 992 * per_token
    assert b.meta["without_sharing"] == 10 * 1200 * per_token == b.total + b.meta["saved"]
    assert S.prefix_cache_kv("Llama-3.1-8B", 15, 0, 10).meta["saved"] == 0       # no whole block to share


def test_parallel_sampling_is_linear_in_samples():
    # chapter 02's beam_search_kv with paged blocks: the prompt once, each sample's own blocks
    sizes = [beam_search_kv("Llama-3.1-8B", 1000, 100, n, block_size=16).total for n in (1, 2, 4, 8)]
    steps = np.diff(sizes)
    assert (steps[1:] == 2 * steps[:-1]).all() and steps[0] > 0     # equal increments per sample
    assert beam_search_kv("Llama-3.1-8B", 1000, 100, 4).kinds["prompt"] == "kv"


def test_preemption():
    sw = S.preemption_cost("Llama-3.1-8B", 1000, "swap")
    rc = S.preemption_cost("Llama-3.1-8B", 1000, "recompute")
    assert sw["kv_cache"] == rc["kv_cache"] == 63 * 2 * MIB      # ceil(1000/16) blocks of 2 MiB
    assert sw.meta["cpu_bytes"] == sw["kv_cache"] and sw.meta["pcie_bytes"] == 2 * sw["kv_cache"]
    assert rc.meta["cpu_bytes"] == 0 and rc.meta["recompute_tokens"] == 1000
    with pytest.raises(ValueError, match="mode"):
        S.preemption_cost("Llama-3.1-8B", 10, "drop")


def test_draft_model_shares_the_pool():
    d = S.draft_model_cost("Llama-3.1-70B", "Llama-3.1-8B", 8192)
    assert d.meta["target_kv_bytes_per_token"] == 80 * 4096
    assert d.meta["kv_bytes_per_token"] == 80 * 4096 + 32 * 4096
    assert d.meta["token_fraction"] == pytest.approx(327_680 / 458_752)
    assert d["draft_weights"] == S.weights_per_gpu("Llama-3.1-8B").total and d["draft_kv"] == 8192 * 32 * 4096


def test_lora_slots_by_hand():
    # r=16, one slot, every projection of Llama-3.1-8B: 16 x (in + out) x 2 B per layer
    per_layer = 16 * ((4096 + 4096) + 2 * (4096 + 1024) + (4096 + 4096) + 2 * (4096 + 14336) + (14336 + 4096))
    assert S.lora_slot_bytes("Llama-3.1-8B", 1, 16) == 32 * per_layer * 2 == 83_886_080
    assert S.lora_slot_bytes("Llama-3.1-8B", 4, 16) == 4 * 83_886_080
    assert S.lora_slot_bytes("Llama-3.1-8B", 1, 16, targets=["q", "k", "v"]) == 32 * 16 * (8192 + 2 * 5120) * 2
    # tp=2: q/k/v/gate/up keep their input and halve their output; o/down halve their input
    half = 16 * ((4096 + 2048) + 2 * (4096 + 512) + (2048 + 4096) + 2 * (4096 + 7168) + (7168 + 4096))
    assert S.lora_slot_bytes("Llama-3.1-8B", 1, 16, tp=2) == 32 * half * 2


def test_bad_inputs_name_the_field():
    with pytest.raises(ValueError, match="quantization"):
        S.weights_per_gpu("Llama-3.1-8B", quantization="int2")
    with pytest.raises(ValueError, match="tp"):
        S.layer_kv_bytes_per_gpu("Llama-3.1-8B", tp=0)
    with pytest.raises(ValueError, match="requests"):
        S.prefix_cache_kv("Llama-3.1-8B", 100, 10, 0)
    with pytest.raises(ValueError, match="targets"):
        S.lora_slot_bytes("Llama-3.1-8B", targets=["nope"])


# -- the command line -------------------------------------------------------------------------

def run(capsys, *args):
    """``python -m memlib ARGS`` in process: (exit status, stdout, stderr)."""
    from memlib.cli import main
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_serve_json_contract(capsys):
    rc, out, err = run(capsys, "serve", "Qwen3-8B", "--gpu", "A100-40GB", "--max-model-len", "40960",
                       "--vllm-version", "0.9.2", "--sampler", "sort", "--json")
    assert rc == 0, err
    d = json.loads(out)
    b = memlib.vllm_budget("Qwen3-8B", "A100-40GB", max_model_len=40960, vllm_version="0.9.2", sampler="sort")
    assert d["kv_cache_tokens"] == b.meta["kv_cache_tokens"] and d["components"] == dict(b.components)
    assert d["kv_cache_bytes"] == d["components"]["kv_cache"] and d["max_concurrency"] == b.meta["max_concurrency"]


def test_serve_flags_and_errors(capsys):
    rc, out, _ = run(capsys, "serve", "Llama-3.1-8B", "--gpu", "H100-80GB", "--tp", "2", "--kv-dtype", "fp8",
                     "--max-num-batched-tokens", "4096", "--json")
    d = json.loads(out)
    assert rc == 0 and d["tp"] == 2 and d["kv_dtype"] == "fp8" and d["max_num_batched_tokens"] == 4096
    rc, out, _ = run(capsys, "serve", "Llama-3.1-8B", "--max-model-len", "8192")
    assert rc == 0 and "KV cache:" in out
    for bad, field in ((("--gpu", "V100"), "gpu"), (("--tp", "0"), "tp"),
                       (("--gpu-memory-utilization", "1.5"), "gpu_memory_utilization"),
                       (("--max-model-len", "200000"), "max_model_len")):
        rc, _, err = run(capsys, "serve", "Llama-3.1-8B", *bad)
        assert rc == 2 and err.count("\n") == 1 and field in err, err


def test_gpus_command(capsys):
    rc, out, _ = run(capsys, "gpus", "--json")
    assert rc == 0 and [r["name"] for r in json.loads(out)] == memlib.hardware.gpu_names()
    rc, out, _ = run(capsys, "gpus")
    assert rc == 0 and "H100-80GB" in out


def test_the_serving_core_imports_only_numpy():
    code = ("import sys, memlib.serving, memlib.vllm, memlib.hardware, memlib.serving_cli, "
            "memlib.measure.vllm_logs; "
            "bad = [m for m in ('torch', 'transformers', 'matplotlib', 'ipywidgets') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_memlib_vllm_works_without_the_repositorys_data(tmp_path):
    """A library user has no data/ directory: memlib.vllm must not need it."""
    import shutil
    shutil.copytree(ROOT / "memlib", tmp_path / "memlib")
    code = ("import memlib; b = memlib.vllm_budget('Llama-3.1-8B', 'H100-80GB', max_model_len=8192); "
            "print(b.meta['num_blocks'] > 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr
