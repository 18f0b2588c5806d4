"""Training backward rules against the bench (chapters 03 and 04), on tiny models.

What memlib models here, each checked against the bench's measurement (fake tensors on the
CPU) or hand arithmetic:

* under mixed precision the routed experts (tiny Qwen3-MoE) run in fp32 (``grouped_mm`` on
  the fp32 master weights): their saved tensors are ``4·T·k·(2H + 4·I)`` bytes per layer;
* the peak of the experts' backward is the routing weights' ``mul`` (``3·e·T·k·H``) or,
  when ``2·I`` is well above ``H``, ``act·up``'s ``mul``;
* with full recompute, an RMSNorm layer over a bf16 residual keeps its checkpointed input
  beside the recomputed fp32 copy (``2·T·H``); o_proj's saved input is freed before the
  eager attention core's backward (tiny Llama);
* beyond a sliding window, SDPA's model-level mask is one (1, 1, S, S) boolean (tiny Mistral);
* under autocast the final norm's fp32 output is alive at the forward's loss moment (tiny Llama).

Tiny configs (1-2 layers, 512 tokens): a few seconds each on 2 cores.
"""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from memlib.activations import layer_tensors  # noqa: E402
from memlib.measure import measure_train  # noqa: E402
from memlib.scenario import Scenario  # noqa: E402
from memlib.spec import load_spec  # noqa: E402
from memlib.training import mlp_backward_extra, mlp_gradient_moment, train_memory  # noqa: E402

pytestmark = pytest.mark.bench

H, E, K, T = 64, 8, 4, 512
S = T * K                      # token-expert rows


def tiny_moe(moe_inter):
    return {"model_type": "qwen3_moe", "vocab_size": 128, "hidden_size": H, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16, "num_hidden_layers": 1, "intermediate_size": 96,
            "moe_intermediate_size": moe_inter, "num_experts": E, "num_experts_per_tok": K,
            "decoder_sparse_step": 1, "max_position_embeddings": 4096}


def test_expert_tensors_by_hand():
    """Saved by the routed experts, per layer, in e-byte elements: the gathered tokens (S·H),
    the fused gate/up output (S·2I), act(gate) and act·up (S·I each), the experts' output (S·H)."""
    I = 48
    spec = load_spec(tiny_moe(I))
    for precision, e in (("bf16", 2), ("mixed", 4)):
        t = layer_tensors(spec, Scenario(1, T, precision), moe=True)
        experts = sum(t[k].nbytes for k in t if k.startswith(("moe.tokens_gathered", "moe.experts.")))
        assert experts == e * (S * H + S * 2 * I + 2 * S * I + S * H) == e * S * (2 * H + 4 * I)
    # the post-attention norm's output is cast once under autocast (for the router): 2·T·H
    mixed = layer_tensors(spec, Scenario(1, T, "mixed"), moe=True)
    assert mixed["post_attn_norm.output"].nbytes == 2 * T * H


def test_backward_extra_by_hand():
    # I = 48: routing mul 3·e·S·H beats e·S·(2I − H) − 8·S (+ down's weight gradient p·E·I·H)
    spec = load_spec(tiny_moe(48))
    assert mlp_backward_extra(spec, Scenario(1, T, "bf16"), True) == 3 * 2 * S * H == 786432
    assert mlp_backward_extra(spec, Scenario(1, T, "mixed"), True) == 3 * 4 * S * H == 1572864
    assert mlp_gradient_moment(spec, Scenario(1, T, "bf16"), True) == (2 * S * (96 - H) - 8 * S, 2 * E * 48 * H)
    # I = 256: act·up's mul wins: 2·2048·448 − 8·2048 = 1,818,624 > 3·2·2048·64 = 786,432, and with
    # down's new weight gradient (2·8·256·64 = 262,144) the MLP's backward holds 2,080,768 over its
    # saved tensors (not when gradients accumulate: the new gradient is added in place)
    spec = load_spec(tiny_moe(256))
    sc = Scenario(1, T, "bf16")
    assert mlp_backward_extra(spec, sc, True) == 2 * S * (2 * 256 - H) - 8 * S == 1818624
    act, grad = mlp_gradient_moment(spec, sc, True)
    assert act + grad == 1818624 + 262144 == 2080768


#: Bytes the bench counts that memlib does not model: AdamW's scalar step counters (fused:
#: one fp32 per tensor), the grouped GEMM's int32 offsets (4·E), the loss scalars.  Measured
#: differences at these points: 136 to 168 bytes.
SCALARS = 256


@pytest.mark.parametrize("moe_inter,precision,recompute", [
    (48, "mixed", "full"),       # peak: the routing weights' mul, fp32 experts
    (48, "bf16", "full"),        # + the checkpointed bf16 input beside its fp32 copy
    (256, "mixed", "none"),      # peak: act·up's mul
])
def test_prediction_matches_bench(moe_inter, precision, recompute):
    cfg = tiny_moe(moe_inter)
    kw = dict(precision=precision, recompute=recompute, optimizer_impl="fused")
    measured = measure_train(cfg, 1, T, **kw)
    predicted = train_memory(cfg, 1, T, **kw)
    assert predicted.peak_at == "layer 0 mlp"
    assert 0 <= measured.phases["backward"] - predicted.phases["backward"] <= SCALARS
    eof = next(v for ph, label, v in predicted.meta["timeline"] if label == "end")
    assert 0 <= measured.meta["end_of_forward"] - eof <= SCALARS


# -- the same two backward rules in a dense layer ----------------------------------------------------
TINY_LLAMA = {"model_type": "llama", "vocab_size": 128, "hidden_size": H, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": 1, "intermediate_size": 192,
              "max_position_embeddings": 4096, "tie_word_embeddings": False}


@pytest.mark.parametrize("attention,moment", [("sdpa", "layer 0 mlp"), ("eager", "layer 0 attention")])
def test_dense_recomputed_layer_matches_bench(attention, moment):
    """bf16, full recompute: the checkpointed bf16 input (2·T·H = 65,536 B here) is alive beside
    the recomputed layer (without it memlib was 65,536 B under the bench at the MLP's moment);
    at the eager attention core's backward o_proj's saved input (2·T·q) is already freed."""
    kw = dict(precision="bf16", recompute="full", optimizer_impl="fused", attention=attention)
    measured = measure_train(TINY_LLAMA, 1, T, **kw)
    predicted = train_memory(TINY_LLAMA, 1, T, **kw)
    assert predicted.peak_at == moment
    assert 0 <= measured.phases["backward"] - predicted.phases["backward"] <= SCALARS


# -- the sliding window's model-level mask ---------------------------------------------------------------
TINY_MISTRAL = {"model_type": "mistral", "vocab_size": 128, "hidden_size": H, "num_attention_heads": 4,
                "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 192,
                "max_position_embeddings": 4096, "tie_word_embeddings": False, "sliding_window": 256}


def test_sliding_window_mask_is_one_boolean_square():
    """SDPA beyond the window: the model builds one (1, 1, S, S) boolean mask per forward (S² bytes,
    whatever the batch), kept as a checkpoint input under full recompute; each layer's (B, 1, S, S)
    bf16 additive copy is a saved tensor.  memlib counted 2·B·S² for the first: at B = 2, S = 512,
    786,432 B too many at the backward's peak (measured: 786,276 = that minus the bench's scalars)."""
    from memlib.activations import causal_mask_bytes
    spec = load_spec(TINY_MISTRAL)
    assert causal_mask_bytes(spec, Scenario(2, 512, "bf16", "sdpa", "full")) == 512 * 512
    assert causal_mask_bytes(spec, Scenario(2, 128, "bf16", "sdpa", "full")) == 0     # within the window
    kw = dict(precision="bf16", recompute="full", optimizer_impl="fused")
    measured = measure_train(TINY_MISTRAL, 2, 512, **kw)
    predicted = train_memory(TINY_MISTRAL, 2, 512, **kw)
    assert predicted.peak_at == "layer 1 mlp"
    assert 0 <= measured.phases["backward"] - predicted.phases["backward"] <= SCALARS


# -- the forward's loss moment under autocast ------------------------------------------------------------
def test_final_norm_fp32_output_alive_at_the_loss():
    """Under autocast the final norm's fp32 output (lm_head reads a bf16 cast of it) is held by the
    model's output object until the loss is computed: 4·T·H more than in bf16 at that moment
    (131,072 B here).  Whatever memlib leaves out at that moment in both precisions (the padded
    labels, scalars: 4,268 B here) must be the same, so the mixed-only term is exact."""
    cfg = {**TINY_LLAMA, "num_hidden_layers": 2, "vocab_size": 8192}     # the loss is the forward's peak
    diff = {}
    for precision in ("bf16", "mixed"):
        kw = dict(precision=precision, recompute="full", optimizer_impl="fused")
        measured = measure_train(cfg, 2, 256, **kw)
        predicted = train_memory(cfg, 2, 256, **kw)
        assert max(predicted.meta["timeline"][:3], key=lambda t: t[2])[1] == "loss"
        diff[precision] = measured.phases["forward"] - predicted.phases["forward"]
    assert diff["mixed"] == diff["bf16"] and 0 <= diff["bf16"] <= 8 * 2 * 257 + SCALARS
