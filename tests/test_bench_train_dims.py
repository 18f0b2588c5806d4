"""The bench's training dimensions (AMP scope, optimizer implementations, the mask shim), each against hand arithmetic or an
independent measurement (real tensors, PyTorch's MemTracker), never against the bench's
own earlier output.

* AMP scope: autocast around the forward only; its cache dies when the forward ends.
* Optimizer implementations: loop / foreach / fused, AdamW and SGD with momentum.
* MoE in mixed precision (fp32 grouped GEMMs, as on a GPU).
* GPT-2, mixed precision, full recompute (the autocast emulation follows checkpointing).
* The mask shim: fake tensors without it build a mask a real run never builds.
* MemTracker cross-check on a small subset.

Tiny configs, fake and real CPU tensors: well under a minute on 2 cores.
"""
import contextlib

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from memlib.measure import crosscheck_train, measure_train  # noqa: E402

pytestmark = pytest.mark.bench

# vocab 128, hidden 64, 4 heads of 16, 2 KV heads, 2 layers, MLP 128, untied embeddings
TINY_LLAMA = {"model_type": "llama", "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 128,
              "max_position_embeddings": 256, "tie_word_embeddings": False}
TINY_GPT2 = {"model_type": "gpt2", "vocab_size": 128, "n_embd": 64, "n_head": 4, "n_layer": 2,
             "n_positions": 64, "bos_token_id": 0, "eos_token_id": 0}
TINY_MOE = {"model_type": "qwen3_moe", "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16, "num_hidden_layers": 2, "intermediate_size": 96,
            "moe_intermediate_size": 32, "num_experts": 8, "num_experts_per_tok": 2, "decoder_sparse_step": 1,
            "max_position_embeddings": 256}

# TINY_LLAMA by hand
H, V, L, KV_OUT, INTER = 64, 128, 2, 2 * 16, 128
LAYER_LINEAR = H * H + 2 * H * KV_OUT + H * H + 3 * H * INTER       # q, k, v, o, gate/up/down = 36864
LAYER = LAYER_LINEAR + 2 * H                                         # + 2 RMSNorm weights
N_PARAMS = L * LAYER + 2 * V * H + H                                 # + embed, lm_head, final norm = 90432
# parameters in model.parameters() order: embed, per layer q k v o gate up down + 2 norms, norm, lm_head
ORDER = [V * H] + L * [H * H, H * KV_OUT, H * KV_OUT, H * H, H * INTER, H * INTER, H * INTER, H, H] + [H, V * H]
# AdamW's loop: at parameter i, `denom` of parameter i-1 is still alive while sqrt(exp_avg_sq_i) and
# its division are made: n[i-1] + 2 n[i] elements (gate -> up: 3 x 8192)
LOOP_TMP = max(ORDER[i - 1] * (i > 0) + 2 * ORDER[i] for i in range(len(ORDER)))
LOSS = 4                                                             # the fp32 scalar loss, alive in the step


def test_hand_counts():
    assert LAYER_LINEAR == 36864 and N_PARAMS == 90432 and sum(ORDER) == N_PARAMS
    assert LOOP_TMP == 3 * 8192


# -- AMP scope ----------------------------------------------------------------------------------
def test_autocast_cache_dies_with_the_forward():
    """Mixed precision: autocast covers the forward only.  Leaving it frees the cached bf16
    weight copies that autograd did not save.  With full recompute, autograd saves nothing
    inside the checkpointed layers, so all their Linear weight copies die: 2 bytes x the
    layers' Linear parameters.  Without recompute every copy is saved (a Linear's backward
    needs its weight): nothing dies.  In bf16 there is no autocast at all."""
    full = measure_train(TINY_LLAMA, 2, 16, precision="mixed", recompute="full")
    assert full.meta["end_of_forward"] - full.meta["start_of_backward"] == 2 * L * LAYER_LINEAR == 147456
    none = measure_train(TINY_LLAMA, 2, 16, precision="mixed", recompute="none")
    assert none.meta["end_of_forward"] == none.meta["start_of_backward"]
    bf16 = measure_train(TINY_LLAMA, 2, 16, precision="bf16", recompute="full")
    assert bf16.meta["end_of_forward"] == bf16.meta["start_of_backward"]
    assert "around the forward only" in full.meta["autocast"] and bf16.meta["autocast"] is None


def test_amp_scope_real_tensors_agree():
    """The same scope on real CPU tensors (an independent run: real kernels, real autocast)."""
    kw = dict(precision="mixed", recompute="full")
    fake, real = measure_train(TINY_LLAMA, 2, 16, **kw), measure_train(TINY_LLAMA, 2, 16, fake=False, **kw)
    for key in ("end_of_forward", "start_of_backward", "train_peak", "phase_peak"):
        assert fake.meta[key] == real.meta[key], key


# -- optimizer implementations --------------------------------------------------------------------
@pytest.mark.parametrize("precision,impl,temporary", [
    ("bf16", "loop", LOOP_TMP * 2),         # previous denom + sqrt + division, bf16
    ("bf16", "foreach", N_PARAMS * 2),      # _foreach_sqrt of every exp_avg_sq at once: one bf16 moment
    ("bf16", "fused", 0),                   # _fused_adamw_ updates in place
    ("mixed", "foreach", N_PARAMS * 4),     # fp32 state: 4 bytes per parameter
    ("mixed", "loop", LOOP_TMP * 4),
], ids=["bf16-loop", "bf16-foreach", "bf16-fused", "mixed-foreach", "mixed-loop"])
def test_adamw_step_temporaries_by_hand(precision, impl, temporary):
    """At the step phase's peak, beyond weights, gradients and state, only the loss scalar
    and the implementation's temporaries are alive."""
    t = measure_train(TINY_LLAMA, 1, 8, precision=precision, optimizer_impl=impl)
    w = N_PARAMS * (2 if precision == "bf16" else 4)
    n_tensors = 2 * 9 + 3
    step = t.meta["phase_components"]["step"]
    assert step["weights"] == w and step["gradients"] == w
    assert step["optimizer"] == 2 * w + 4 * n_tensors              # exp_avg, exp_avg_sq, 4-byte steps
    assert step["activations"] == LOSS + temporary
    assert t.phases["step"] == sum(step.values())
    assert t.meta["optimizer_impl"] == impl
    assert t.meta["optimizer_flags"] == {"loop": {"foreach": False, "fused": False},
                                         "foreach": {"foreach": True, "fused": False},
                                         "fused": {"foreach": False, "fused": True}}[impl]


@pytest.mark.parametrize("impl", ["loop", "foreach", "fused"])
def test_sgd_momentum_has_no_step_temporary(impl):
    """SGD with momentum updates its buffer and the parameters in place in all three
    implementations: the step peak is weights + gradients + one momentum buffer + the loss."""
    t = measure_train(TINY_LLAMA, 1, 8, optimizer="sgd", optimizer_impl=impl)
    w = N_PARAMS * 2
    step = t.meta["phase_components"]["step"]
    assert step == {"weights": w, "buffers": step["buffers"], "gradients": w, "optimizer": w,
                    "activations": LOSS}


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_optimizer_impls_fake_equals_real(optimizer, impl):
    """Fake tensors run the same optimizer code as real ones: the step phase agrees to the byte."""
    kw = dict(optimizer=optimizer, optimizer_impl=impl)
    fake, real = measure_train(TINY_LLAMA, 1, 8, **kw), measure_train(TINY_LLAMA, 1, 8, fake=False, **kw)
    assert fake.phases == real.phases and fake.meta["phase_components"] == real.meta["phase_components"]


def test_bad_optimizer_impl():
    with pytest.raises(ValueError, match="optimizer_impl"):
        measure_train(TINY_LLAMA, 1, 8, optimizer_impl="apex")


# -- MoE in mixed precision -------------------------------------------------------------------------
def test_moe_mixed_precision_runs_fp32_grouped_gemms():
    """transformers casts the experts' input to the fp32 master weights; the grouped GEMMs then
    run in fp32 (CUDA/CPU fallback kernel).  Their outputs alive at the end of the forward: per
    layer the up projection (S x 2*moe_inter) and the down projection (S x hidden), with
    S = tokens x top_k, 4 bytes each in mixed precision and 2 in bf16."""
    b, s, top_k, moe_inter, layers = 1, 16, 2, 32, 2
    S = b * s * top_k
    per_layer = S * (2 * moe_inter + H)
    mixed = measure_train(TINY_MOE, b, s, precision="mixed")
    assert mixed.meta["activations_by_op"]["end_of_forward"]["aten._grouped_mm.default"] == layers * per_layer * 4
    bf16 = measure_train(TINY_MOE, b, s, precision="bf16")
    assert bf16.meta["activations_by_op"]["end_of_forward"]["aten._grouped_mm.default"] == layers * per_layer * 2
    assert any("grouped_mm" in p for p in mixed.meta["fake_kernel_patches"])


def test_moe_mixed_fake_equals_real():
    """The real CPU grouped GEMM accepts fp32 without any patch: the fake run must match it."""
    fake = measure_train(TINY_MOE, 1, 16, precision="mixed", recompute="full")
    real = measure_train(TINY_MOE, 1, 16, precision="mixed", recompute="full", fake=False)
    assert fake.phases == real.phases and fake.components == real.components


# -- GPT-2, mixed precision, full recompute -----------------------------------------------------------
def test_gpt2_mixed_full_recompute():
    """Recomputation restores the forward's autocast state (torch.utils.checkpoint does), and the
    emulated CUDA op list follows it: gelu_new's pow is fp32 in the forward and in the
    recomputation, so the checkpoint's metadata check passes."""
    fake = measure_train(TINY_GPT2, 2, 16, precision="mixed", recompute="full")
    assert fake.meta["autocast_emulated"] == {"pow": 2 * 2}                # 2 layers x 2 steps
    assert fake.meta["autocast_emulated_recompute"] == {"pow": 2 * 2}      # recomputed once per layer and step
    real = measure_train(TINY_GPT2, 2, 16, precision="mixed", recompute="full", fake=False)
    assert fake.phases == real.phases and fake.components == real.components


# -- the mask shim ------------------------------------------------------------------------------------
QWEN3_LIKE = {"model_type": "qwen3", "vocab_size": 128, "hidden_size": 128, "num_attention_heads": 8,
              "num_key_value_heads": 4, "head_dim": 32, "num_hidden_layers": 2, "intermediate_size": 96,
              "max_position_embeddings": 256, "tie_word_embeddings": True}


def test_fake_without_mask_shim_measures_another_program(monkeypatch):
    """On plain FakeTensors transformers thinks it is tracing and builds the causal mask a real
    run skips.  SDPA then gets a mask, so transformers repeats K and V to every query head
    (repeat_kv copies saved instead of K and V: +2*b*s*hd*(nh-nkv)*2 bytes per layer) and SDPA
    turns the boolean mask into a bf16 one per layer (+2*b*s*s bytes).  That is the reported
    352,321,536 B for Qwen3-0.6B at b=2, s=1024.  With the shim the fake run equals the real one."""
    b, s, nh, nkv, hd, layers = 1, 32, 8, 4, 32, 2
    kw = dict(optimizer_impl="loop")
    real = measure_train(QWEN3_LIKE, b, s, fake=False, **kw)
    shim = measure_train(QWEN3_LIKE, b, s, **kw)
    assert shim.meta["end_of_forward"] == real.meta["end_of_forward"] and shim.phases == real.phases
    from memlib.measure import scenarios
    monkeypatch.setattr(scenarios, "_eager_mask_path", contextlib.nullcontext)
    plain = measure_train(QWEN3_LIKE, b, s, **kw)
    extra = layers * (2 * b * s * hd * (nh - nkv) * 2 + 2 * b * s * s)
    assert plain.meta["end_of_forward"] - real.meta["end_of_forward"] == extra
    # the reported numbers: Qwen3-0.6B (28 layers, 16 query / 8 KV heads of 128), b=2, s=1024
    assert 28 * (2 * 2 * 1024 * 128 * (16 - 8) * 2 + 2 * 2 * 1024 * 1024) == 11_799_963_360 - 11_447_641_824


# -- MemTracker cross-check -----------------------------------------------------------------------------
@pytest.mark.parametrize("cfg,kw", [
    (TINY_LLAMA, dict(precision="bf16", recompute="none", optimizer_impl="loop")),
    (TINY_LLAMA, dict(precision="mixed", recompute="full", optimizer_impl="foreach")),
    (TINY_MOE, dict(precision="mixed", recompute="none", optimizer_impl="fused")),
    (TINY_GPT2, dict(precision="mixed", recompute="full")),
], ids=["llama-bf16-none-loop", "llama-mixed-full-foreach", "moe-mixed-none-fused", "gpt2-mixed-full"])
def test_memtracker_agrees(cfg, kw):
    b, s = 2, 16
    r = crosscheck_train(cfg, b, s, **kw)
    assert r["bench_unchanged"], "MemTracker's presence changed what the bench measured"
    assert r["difference"] == {"forward": 0, "backward": 0, "step": 0}, r
    if cfg is TINY_GPT2:    # GPT-2 views input_ids (input_ids.view(-1, s)): MemTracker counts the batch
        assert r["explained"] == {p: 8 * b * s for p in ("forward", "backward", "step")}
    else:
        assert r["explained"] == {"forward": 0, "backward": 0, "step": 0}
    assert r["memtracker_peak"] - max(r["explained"].values()) == r["bench_peak"]
    assert set(r["memtracker_categories"]["step"]) >= {"parameters", "optimizer_state"}


def test_memtracker_without_module_stats_counts_the_same():
    """The cross-check drops MemTracker's per-module peak bookkeeping (for speed); the device
    totals must equal those of the unchanged MemTracker."""
    kw = dict(precision="mixed", recompute="full", standalone=False)
    fast = crosscheck_train(TINY_LLAMA, 2, 16, **kw)
    full = crosscheck_train(TINY_LLAMA, 2, 16, module_stats=True, **kw)
    assert fast["memtracker"] == full["memtracker"] and fast["memtracker_categories"] == full["memtracker_categories"]


# -- provenance -------------------------------------------------------------------------------------------
def test_error_records_state_versions():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_matrix.py"
    spec = importlib.util.spec_from_file_location("bench_matrix", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    kind, point, res = mod.run_point(("train", {"model": "No-Such-Model", "batch_size": 1, "seq_len": 8,
                                                "precision": "bf16", "recompute": "none", "attention": "sdpa",
                                                "optimizer": "adamw", "optimizer_impl": "loop"}))
    assert "error" in res and res["torch"] == torch.__version__
    import transformers
    assert res["transformers"] == transformers.__version__


# -- the counter survives storage-address reuse ---------------------------------------------------------
@pytest.mark.parametrize("fake", [False, True])
def test_counter_survives_address_reuse(fake):
    """A dead storage's StorageImpl address is reused at once by the next allocation; every
    allocation must still be recorded and every free seen (40 bytes live, never more)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from memlib.measure.counter import StorageCounter
    addresses = set()
    with (FakeTensorMode() if fake else contextlib.nullcontext()):
        c = StorageCounter()
        with c:
            for _ in range(500):
                x = torch.empty(10)
                addresses.add(x.untyped_storage()._cdata)
                assert c.live_bytes == 40
                del x
    assert len(c.records) == 500 and c.live_bytes == 0 and c.peak == 40
    assert len(addresses) < 500            # addresses were reused


# -- command line ------------------------------------------------------------------------------------------
def test_cli_optimizer_impl(tmp_path, capsys):
    import json
    from memlib.cli import main
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY_LLAMA))
    argv = ["measure", str(path), "--scenario", "train", "--batch-size", "1", "--seq-len", "8", "--quiet", "--json"]
    assert main(argv + ["--optimizer-impl", "fused"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["optimizer_impl"] == "fused" and data["optimizer"] == "adamw"
    assert data["start_of_backward"] == data["end_of_forward"]           # bf16: no autocast cache
    with pytest.raises(SystemExit):
        main(argv + ["--optimizer-impl", "apex"])
