"""The bench (memlib.measure): the counter is byte-exact, fake tensors measure what real
tensors allocate, and bad input gives a clear error.

Needs torch and transformers (skipped otherwise).  Runs in well under a minute on 2 cores.
"""
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.bench

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from memlib.measure import measure_prefill, measure_train, measure_weights  # noqa: E402
from memlib.measure.counter import StorageCounter  # noqa: E402

TINY_LLAMA = {"model_type": "llama", "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 128,
              "max_position_embeddings": 256, "tie_word_embeddings": False}
TINY_QWEN3 = {"model_type": "qwen3", "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 32, "num_hidden_layers": 2, "intermediate_size": 96,
              "max_position_embeddings": 256, "tie_word_embeddings": True}
TINY_GPT2 = {"model_type": "gpt2", "vocab_size": 128, "n_embd": 64, "n_head": 4, "n_layer": 2,
             "n_positions": 64}


def _no_timeline(bd):
    return {k: v for k, v in bd.meta.items() if k not in ("timeline", "build_s", "run_s", "fake", "device", "loss",
                                                   "fake_kernel_patches")}


# -- importing is free ------------------------------------------------------------------------
def test_import_does_not_import_torch():
    code = ("import sys, memlib.measure, memlib.measure.cli; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'eager import'")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the counter, by hand ---------------------------------------------------------------------
def test_counter_views_inplace_and_frees():
    c = StorageCounter()
    with c:
        a = torch.empty(10)                 # 10 x 4 bytes: one allocation
        b = a.view(2, 5)                    # a view shares the storage: nothing new
        a.add_(1)                           # in place: nothing new
        s = a[2:7]                          # a slice is a view too
        assert c.live_bytes == 40
        d = a + 1                           # a new storage
        assert c.live_bytes == 80
        del a, s
        assert c.live_bytes == 80           # b still holds the first storage
        del b
        assert c.live_bytes == 40
        del d
    assert c.live_bytes == 0 and c.peak == 80


def test_counter_ignores_storages_made_before_counting():
    x = torch.randn(4, 4)                   # made before counting: never counted
    c = StorageCounter()
    with c:
        v = x.view(16)                      # a view of it: free
        x.mul_(2)                           # in place on it: free
        y = x * 2                           # a new 64-byte storage
        assert c.live_bytes == 64
        del v, y
    assert c.peak == 64


def test_linear_adamw_step_by_hand():
    """One nn.Linear(8, 4) trained with AdamW, second step measured, against hand arithmetic."""
    torch.manual_seed(0)
    n_in, n_out, batch, fp32 = 8, 4, 2, 4
    lin = torch.nn.Linear(n_in, n_out)
    opt = torch.optim.AdamW(lin.parameters(), foreach=False)
    x = torch.randn(batch, n_in)            # made before counting: not counted
    c = StorageCounter()
    c.register(lin.parameters(), "weights")
    with c:
        for step in (1, 2):
            if step == 2:
                c.reset_peak()
                start = c.live_bytes
            c.set_phase("forward")
            loss = lin(x).sum()
            c.set_phase("backward")
            loss.backward()
            c.categorize([p.grad for p in lin.parameters()], "gradients")
            c.set_phase("step")
            opt.step()
            c.categorize([t for s in opt.state.values() for t in s.values()], "optimizer")
            opt.zero_grad(set_to_none=True)
            del loss
    c.close()

    W = n_in * n_out * fp32 + n_out * fp32            # weight 128 + bias 16 = 144
    G = W                                             # fp32 grads, same shapes = 144
    step_tensors = 2 * 4                              # AdamW: one fp32 scalar `step` per parameter
    ADAM = 2 * W + step_tensors                       # exp_avg + exp_avg_sq + steps = 296
    y = batch * n_out * fp32                          # addmm output (2, 4) = 32
    loss_b = fp32                                     # the scalar loss
    assert W == 144 and ADAM == 296
    assert start == W + ADAM == 440                   # resident at the start of step 2 (grads set to None)
    # forward: y (32) then loss (4); y dies right after the sum (sum's backward needs no input)
    assert c.phase_peaks["forward"] == W + ADAM + y + loss_b == 476
    # backward: ones_like(loss) seed (4), grad_W = grad_y^T @ x (128, kept as .grad: its layout
    # already matches the weight), grad_b = grad_y.sum(0) (16)
    assert c.phase_peaks["backward"] == W + ADAM + loss_b + fp32 + G == 592
    # step (single-tensor AdamW), weight first: denom = exp_avg_sq.sqrt() / bias_correction2_sqrt
    # makes two weight-sized temporaries (sqrt, then the division) before addcdiv_ updates in place
    weight_tmp = n_in * n_out * fp32
    assert c.phase_peaks["step"] == W + ADAM + G + loss_b + 2 * weight_tmp == 844
    assert c.peak == 844 and c.peak_phase == "step"
    assert c.by_category(c.live_at_peak()) == {"weights": W, "optimizer": ADAM, "gradients": G,
                                               "other": loss_b + 2 * weight_tmp}


# -- fake tensors measure what real tensors allocate ------------------------------------------
@pytest.mark.parametrize("cfg", [TINY_LLAMA, TINY_QWEN3, TINY_GPT2], ids=["llama", "qwen3", "gpt2"])
def test_fake_equals_real_prefill_and_weights(cfg):
    fake, real = measure_prefill(cfg, 2, 16, fake=True), measure_prefill(cfg, 2, 16, fake=False)
    assert fake.components == real.components
    assert _no_timeline(fake) == _no_timeline(real)
    assert fake.meta["kv_cache"] > 0 and fake.meta["prefill_peak"] >= fake.meta["kv_cache"]
    assert fake.total == fake.meta["weights"] + fake.meta["buffers"] + fake.meta["prefill_peak"]
    assert measure_weights(cfg).components == measure_weights(cfg, fake=False).components


@pytest.mark.parametrize("kw", [dict(precision="bf16"), dict(precision="mixed"),
                                dict(precision="bf16", recompute="full"), dict(precision="bf16", attention="eager"),
                                dict(precision="mixed", optimizer="sgd")],
                         ids=["bf16", "mixed", "recompute", "eager", "sgd"])
def test_fake_equals_real_train_llama(kw):
    fake = measure_train(TINY_LLAMA, 2, 16, fake=True, **kw)
    real = measure_train(TINY_LLAMA, 2, 16, fake=False, **kw)
    assert fake.components == real.components
    assert fake.phases == real.phases and fake.peak_phase == real.peak_phase
    assert fake.meta["timeline"] == real.meta["timeline"]
    assert _no_timeline(fake) == _no_timeline(real)


@pytest.mark.parametrize("cfg", [TINY_QWEN3, TINY_GPT2], ids=["qwen3", "gpt2"])
def test_fake_equals_real_train_others(cfg):
    fake = measure_train(cfg, 2, 16, precision="mixed", fake=True)
    real = measure_train(cfg, 2, 16, precision="mixed", fake=False)
    assert fake.components == real.components and fake.phases == real.phases


# -- what the numbers mean ----------------------------------------------------------------------
def test_tiny_llama_exact_numbers():
    """Weights and KV bytes of the tiny Llama, by hand."""
    h, inter, v, L, kvh, hd, bf16 = 64, 128, 128, 2, 2, 16, 2
    per_layer = 4 * h * hd * 2 + 2 * h * hd * kvh + 3 * h * inter + 2 * h  # q,o + k,v + mlp + 2 norms
    params = L * per_layer + 2 * v * h + h                                  # + embed, lm_head, final norm
    w = measure_weights(TINY_LLAMA)
    assert w.meta["n_params"] == params and w["weights"] == params * bf16
    assert w["buffers"] == 2 * (hd // 2) * 4                                # inv_freq + original_inv_freq, fp32
    p = measure_prefill(TINY_LLAMA, 2, 16)
    assert p["kv_cache"] == 2 * L * 2 * kvh * 16 * hd * bf16               # K and V, batch 2, 16 tokens
    assert p.meta["attention_kernel"] == "flash_for_cpu" and p.meta["math_path"] is False
    assert p.meta["logits"] == 2 * 1 * v * bf16                              # logits_to_keep=1


def test_train_breakdown_is_consistent():
    t = measure_train(TINY_LLAMA, 2, 16)
    m = t.meta
    assert t.total == m["train_peak"] == max(t.phases.values()) == t.phases[t.peak_phase]
    assert set(t.components) == {"weights", "buffers", "gradients", "optimizer", "activations"}
    assert t["weights"] == m["weights"]
    # bf16 AdamW: two bf16 moments per parameter + a 4-byte fp32 step per parameter tensor
    n_tensors = 2 * 9 + 3
    assert m["optimizer_state"] == 2 * m["weights"] + 4 * n_tensors
    assert m["optimizer_scalar_step_bytes"] == 4 * n_tensors
    assert 0 < len(m["timeline"]) <= 400 and max(b for _, b in m["timeline"]) == t.total
    assert {p for p, _ in m["timeline"]} <= {"forward", "backward", "step", "end"}
    assert m["end_of_forward"] <= t.phases["forward"]
    mixed = measure_train(TINY_LLAMA, 2, 16, precision="mixed")
    assert mixed["weights"] == 2 * t["weights"]                               # fp32 master weights
    full = measure_train(TINY_LLAMA, 2, 16, recompute="full")
    assert full.meta["end_of_forward"] < m["end_of_forward"]                  # fewer saved activations


def test_sdpa_fallback_is_recorded():
    gemma2 = {"model_type": "gemma2", "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 16, "num_hidden_layers": 2, "intermediate_size": 96,
              "max_position_embeddings": 256, "sliding_window": 8}
    p = measure_prefill(gemma2, 1, 16)
    assert p.meta["sdpa_fallback"] is True and p.meta["attention"] == "eager"
    assert p.meta["attention_kernel"] == "eager"


def test_falcon_refinedweb_config_is_mapped():
    rw = {"model_type": "RefinedWebModel", "n_layer": 2, "n_head": 4, "hidden_size": 64, "vocab_size": 128,
          "multi_query": True, "parallel_attn": True, "bias": False, "alibi": False}
    w = measure_weights(rw)
    assert w.meta["architecture"] == "FalconForCausalLM"
    assert "renamed n_layer -> num_hidden_layers" in w.meta["config_changes"]
    # 2 layers: qkv (64 -> 64 + 2*16), dense, mlp 4x, 2 norms... only the layer count matters here
    two = measure_weights({**rw, "n_layer": 3})
    assert two.meta["n_params"] > w.meta["n_params"]


def test_quantization_config_is_dropped():
    cfg = {**TINY_LLAMA, "quantization_config": {"quant_method": "fp8", "fmt": "e4m3",
                                                 "weight_block_size": [128, 128]}}
    w = measure_weights(cfg)
    assert "dropped quantization_config" in w.meta["config_changes"]
    assert w["weights"] == measure_weights(TINY_LLAMA)["weights"]


def test_math_path_is_flagged():
    """Falcon-7B-style multi-query attention hands SDPA a 1-head K/V to broadcast: the CPU's
    fused kernel refuses it and the math path (s x s scores, _safe_softmax) runs."""
    falcon = {"model_type": "falcon", "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4,
              "num_hidden_layers": 1, "new_decoder_architecture": False, "multi_query": True,
              "parallel_attn": True}
    p = measure_prefill(falcon, 1, 16)
    assert p.meta["math_path"] is True and p.meta["attention_kernel"] == "math"
    assert p["kv_cache"] == 2 * 1 * 16 * 16 * 2                      # K and V, 1 kv head, 16 tokens, hd 16
    mha = measure_prefill({**falcon, "multi_query": False}, 1, 16)
    assert mha.meta["math_path"] is False and mha.meta["attention_kernel"] == "flash_for_cpu"


# -- autocast: CPU vs CUDA op lists -------------------------------------------------------------
def test_cuda_autocast_policy_emulation():
    import torch.nn.functional as F
    from memlib.measure.autocast import CudaAutocastPolicy
    from memlib.measure import autocast_policy_diff
    bf16, fp32 = torch.bfloat16, torch.float32
    x, w = torch.randn(4, 8, dtype=bf16), torch.randn(8, 8)
    with torch.autocast("cpu", dtype=bf16):
        assert torch.softmax(x, -1).dtype == bf16                   # plain CPU autocast keeps bf16
        assert torch.pow(x, 3.0).dtype == bf16
    pol = CudaAutocastPolicy()
    with torch.autocast("cpu", dtype=bf16), pol:
        assert torch.softmax(x, -1).dtype == fp32                   # CUDA: fp32_set_opt_dtype
        assert F.softmax(x, dim=-1).dtype == fp32
        assert torch.softmax(x, -1, dtype=bf16).dtype == bf16       # an explicit dtype is kept
        assert x.sum().dtype == fp32
        assert torch.pow(x, 3.0).dtype == fp32 and (x ** 2).dtype == fp32   # CUDA: fp32 policy
        assert F.layer_norm(x, (8,)).dtype == fp32
        assert (x.float() @ w).dtype == bf16                        # matmuls: bf16 on both
        assert F.silu(x).dtype == bf16                              # in no list: unchanged
    assert torch.softmax(x, -1).dtype == bf16                       # outside autocast: nothing
    assert pol.changed["softmax"] == 2 and pol.changed["pow"] == 2      # torch.pow and **
    diff = autocast_policy_diff()
    assert "aten::softmax.int" in diff["cuda_only"] and "aten::cat" in diff["cpu_only"]
    assert "aten::mm" in diff["both"]


def test_mixed_precision_cuda_policy_on_gpt2():
    """GPT-2's gelu_new calls torch.pow on the bf16 MLP activation: fp32 on a GPU."""
    cuda = measure_train(TINY_GPT2, 2, 16, precision="mixed")
    cpu = measure_train(TINY_GPT2, 2, 16, precision="mixed", autocast_policy="cpu")
    assert cuda.meta["autocast_policy"] == "cuda (emulated on the cpu)" and cpu.meta["autocast_policy"] == "cpu"
    assert cuda.meta["autocast_emulated"] == {"pow": 2 * 2}         # 2 layers x 2 steps
    assert cuda.phases["forward"] > cpu.phases["forward"] and cuda.meta["end_of_forward"] > cpu.meta["end_of_forward"]
    llama = measure_train(TINY_LLAMA, 2, 16, precision="mixed")
    assert llama.meta["autocast_emulated"] == {}                    # RMSNorm and softmax upcast by hand


# -- bad input ----------------------------------------------------------------------------------
def test_unknown_catalog_name():
    with pytest.raises(ValueError, match="neither a catalog name"):
        measure_weights("No-Such-Model-7B")


def test_unsupported_model_type():
    with pytest.raises(ValueError, match="model_type 'not_a_real_arch'"):
        measure_prefill({**TINY_LLAMA, "model_type": "not_a_real_arch"}, 1, 8)


def test_missing_num_hidden_layers():
    cfg = {k: v for k, v in TINY_LLAMA.items() if k != "num_hidden_layers"}
    with pytest.raises(ValueError, match="num_hidden_layers"):
        measure_train(cfg, 1, 8)
    gpt2 = {k: v for k, v in TINY_GPT2.items() if k != "n_layer"}
    with pytest.raises(ValueError, match="n_layer"):
        measure_weights(gpt2)


def test_missing_model_type():
    with pytest.raises(ValueError, match="model_type"):
        measure_weights({k: v for k, v in TINY_LLAMA.items() if k != "model_type"})


@pytest.mark.parametrize("kw,field", [(dict(batch_size=0), "batch_size"), (dict(seq_len=-1), "seq_len"),
                                      (dict(precision="fp8"), "precision"), (dict(recompute="some"), "recompute"),
                                      (dict(attention="flash"), "attention"), (dict(optimizer="adam"), "optimizer"),
                                      (dict(device="tpu"), "device")])
def test_bad_knobs(kw, field):
    args = dict(batch_size=1, seq_len=8)
    args.update(kw)
    with pytest.raises(ValueError, match=field):
        measure_train(TINY_LLAMA, **args)


def test_gpu_refused_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="cuda"):
        measure_weights(TINY_LLAMA, device="cuda")


# -- command line -----------------------------------------------------------------------------
def _cli(argv, capsys):
    from memlib.cli import main      # the real entry point of `python -m memlib`
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_prefill_json(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY_LLAMA))
    rc, out, err = _cli(["measure", str(path), "--scenario", "prefill", "--batch-size", "2", "--seq-len", "16",
                         "--json"], capsys)
    assert rc == 0
    data = json.loads(out)
    for key in ("weights", "kv_cache", "prefill_peak", "total", "attention", "math_path"):
        assert key in data
    assert data["kv_cache"] == 8192 and data["attention"] == "sdpa" and data["math_path"] is False
    assert "building" in err


def test_cli_train_json_and_table(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY_LLAMA))
    argv = ["measure", str(path), "--scenario", "train", "--batch-size", "1", "--seq-len", "8", "--quiet"]
    rc, out, err = _cli(argv + ["--json"], capsys)
    data = json.loads(out)
    assert rc == 0 and err == ""
    for key in ("train_peak", "phase_peak", "peak_phase", "attention", "components"):
        assert key in data
    assert set(data["phase_peak"]) == {"forward", "backward", "step"}
    assert data["train_peak"] == sum(data["components"].values())
    rc, out, _ = _cli(argv, capsys)
    assert rc == 0 and "activations" in out and "train_peak=" in out


def test_cli_bad_input(capsys):
    rc, _, err = _cli(["measure", "No-Such-Model", "--scenario", "prefill", "--batch-size", "1", "--seq-len", "8",
                       "--quiet"], capsys)
    assert rc == 2 and err.startswith("memlib: error:") and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        _cli(["measure", "gpt2", "--scenario", "decode", "--batch-size", "1", "--seq-len", "8"], capsys)
    with pytest.raises(SystemExit):
        _cli(["measure", "gpt2", "--scenario", "train", "--batch-size", "0", "--seq-len", "8"], capsys)


# -- catalog models (fake tensors, seconds) -----------------------------------------------------
def test_catalog_llama_weights():
    w = measure_weights("Llama-3.1-8B")
    assert w.meta["n_params"] == 8_030_261_248 and w["weights"] == 2 * 8_030_261_248


@pytest.mark.slow
def test_catalog_llama_train_step():
    t = measure_train("Llama-3.1-8B", 1, 2048)
    w = 2 * 8_030_261_248
    assert t["weights"] == w and t["gradients"] == w
    assert t.peak_phase == "step" and t.meta["attention_kernel"] == "flash_for_cpu"
