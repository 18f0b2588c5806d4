"""What a training step saves (chapter 03), checked against hand arithmetic from the configs.

The tiny config (``conftest.tiny_llama``): vocab 128, hidden 64, 4 heads of 16, 2 K/V heads,
2 layers, MLP width 96.  Every expected number below is derived from the formulas of
chapter 03 (what each op saves for its backward), not from memlib.
"""
import numpy as np

import memlib
from memlib.activations import Saved, activation_breakdown, display_block, is_quadratic, layer_tensors
from memlib.scenario import Scenario
from memlib.training import train_memory

# tiny config, batch 2 x 32 tokens
from tiny_activations_by_hand import B, S, H, L, NH, HD, T, NORM_BF16, ATTN_SDPA, MLP, OUTSIDE_BF16, LOSS


def test_tiny_sdpa_by_hand(tiny_llama):
    r = activation_breakdown(tiny_llama, B, S)
    assert NORM_BF16 == 33_024 and ATTN_SDPA == 25_600 and MLP == 49_152
    assert r["norms"] == L * 2 * NORM_BF16 == 132_096
    assert r["attention"] == L * ATTN_SDPA == 51_200
    assert r["attention S²"] == 0
    assert r["MLP / experts"] == L * MLP == 98_304
    assert r["outside the layers"] == OUTSIDE_BF16 == 35_584
    assert r["loss log-softmax (fp32)"] == LOSS == 32_768
    assert r.total == 349_952                          # what the bench measures at the end of the forward, - 8 B
    assert r.meta["per_layer_total"] == 2 * NORM_BF16 + ATTN_SDPA + MLP == 140_800
    assert r.meta["per_layer_per_token"] == 140_800 // T == 2_200


def test_tiny_eager_repeats_kv_and_adds_scores(tiny_llama):
    r = activation_breakdown(tiny_llama, B, S, attention="eager")
    attn = 4 * 2 * T * 64                               # q, K and V repeated to 4 heads, output
    scores = (4 + 2) * B * NH * S * S                   # fp32 softmax + its bf16 copy
    assert r["attention"] == L * attn == 65_536
    assert r["attention S²"] == L * scores == 98_304
    assert r.total == L * (2 * NORM_BF16 + attn + scores + MLP) + OUTSIDE_BF16 + LOSS
    r = activation_breakdown(tiny_llama, B, S, attention="eager", recompute="selective")   # S² recomputed
    assert r["attention S²"] == 0 and r["attention"] == L * attn


def test_tiny_full_recompute_keeps_layer_inputs(tiny_llama):
    r = activation_breakdown(tiny_llama, B, S, recompute="full")
    # each layer's input, plus the position ids (8 bytes x S) every checkpoint keeps
    assert r["layer inputs (checkpoints)"] == L * 2 * T * H + 8 * S == 16_640
    assert "norms" not in r and "MLP / experts" not in r
    assert r.total == 16_640 + OUTSIDE_BF16 + LOSS
    # one layer comes back at a time in the backward: its full set minus its input
    assert r.meta["recompute_extra"] == 140_800 - 2 * T * H


def test_tiny_mixed_precision(tiny_llama):
    r = activation_breakdown(tiny_llama, B, S, precision="mixed")
    # fp32 residual stream: normalised stays fp32; autocast casts the output once per reader
    input_norm = 4 * T * H + 4 * T + 4 * T * H + 3 * 2 * T * H     # read by q, k, v
    post_norm = 4 * T * H + 4 * T + 4 * T * H + 2 * 2 * T * H      # read by gate, up
    assert r["norms"] == L * (input_norm + post_norm) == 214_016
    assert r["attention"] == L * ATTN_SDPA and r["MLP / experts"] == L * MLP
    final_norm = 4 * T * H + 4 * T + 4 * T * H + 2 * T * H         # read by lm_head
    assert r["outside the layers"] == 2 * S * HD * 4 + final_norm + 8 * T == 45_824


def test_batch_and_length_scale_linearly_with_sdpa(tiny_llama):
    one = activation_breakdown(tiny_llama, 1, S).total
    rope = 2 * S * HD * 2                        # the RoPE tables depend on S only; the rest on B x S
    assert activation_breakdown(tiny_llama, 4, S).total - rope == 4 * (one - rope)
    assert activation_breakdown(tiny_llama, 1, 4 * S).total - 4 * rope == 4 * (one - rope)


def test_llama31_8b_per_token(tiny_llama):
    r = activation_breakdown("Llama-3.1-8B", 1, 4096)
    # 2 RMSNorms (8h + 4 each) + q, o (2h each) + k, v (2 x h/4 each) + logsumexp (4 per head) + SwiGLU (8 x 3.5h)
    per_token = 2 * (8 * 4096 + 4) + 2 * 4096 + 2 * 4096 + 2 * 2 * 1024 + 4 * 32 + 8 * 14336
    assert per_token == 49 * 4096 + 4 * 32 + 8 == 200_840
    assert r.meta["per_layer_per_token"] == per_token
    assert r["loss log-softmax (fp32)"] == 4 * 4096 * 128_256
    assert r.meta["per_layer_per_token"] / 4096 == 49.0 + (4 * 32 + 8) / 4096
    assert r.meta["peak"] == train_memory("Llama-3.1-8B", 1, 4096).total


def test_breakdown_equals_train_memory_and_is_vectorised():
    for m in memlib.catalog_names():
        for att in ("sdpa", "eager"):
            for rec in ("none", "selective", "full"):
                b = activation_breakdown(m, 2, 256, "bf16", att, rec)
                assert b.total == train_memory(m, 2, 256, attention=att, recompute=rec).meta["activations_saved"], m
    s = np.array([128, 512, 2048])
    arr = activation_breakdown("Qwen3-0.6B", 1, s, attention="eager").total
    assert arr.tolist() == [activation_breakdown("Qwen3-0.6B", 1, int(x), attention="eager").total for x in s]
    assert np.all(np.diff(arr) > 0)


def test_records_say_what_each_rule_needs():
    spec = memlib.load_spec("Qwen3-0.6B")
    eager = layer_tensors(spec, Scenario(1, 512, attention="eager"))
    assert display_block(eager["input_norm.rsqrt"]) == "norms"
    assert display_block(eager["attn.softmax"]) == "attention S²" and is_quadratic(eager["attn.softmax"])
    assert display_block(eager["attn.q"]) == "attention"
    # the only reason to keep o_proj's input is o_proj's own gradient (LoRA drops it when o is frozen)
    assert eager["attn.out"].needed_by == ("o",)
    moe = layer_tensors(memlib.load_spec("Qwen3-30B-A3B"), Scenario(1, 512), moe=True)
    assert display_block(moe["moe.experts.up"]) == "MLP / experts" and moe["moe.experts.up"].half == "mlp"
    # OPT's residual dropout mask is tokens x hidden, not a score tensor (selective recompute keeps it)
    opt = layer_tensors(memlib.load_spec("opt-13b"), Scenario(1, 512, attention="eager"))
    assert opt["attn.dropout_mask"].axes == ("T", "H") and not is_quadratic(opt["attn.dropout_mask"])
    assert isinstance(opt["attn.dropout_mask"], Saved)


def test_prefill_peaks_of_phi3_and_deepseek_by_hand():
    """Prefill candidates where a family holds more than the Llama pattern (chapter 03
    §inference); the bench measures these to the byte (data/bench/prefill.jsonl)."""
    from memlib.activations import prefill_transients
    from memlib.spec import load_spec
    # Phi-3-mini, b=4, s=2048, SDPA: H 3072, I 8192, head 96, window 2047 <= 2048
    B, S, T, H, I = 4, 2048, 4 * 2048, 3072, 8192
    always = 2 * T * H + 2 * T * H + 8 * S + 2 * 2 * S * 96 + S * S    # ..., RoPE, the (1,1,S,S) bool mask
    mlp = always + 2 * (2 * T * H) + 4 * 2 * T * I                      # fused gate_up (2I) + act + product
    got = prefill_transients(load_spec("Phi-3-mini-4k-instruct"), Scenario(B, S, attention="sdpa"))
    assert got == {"mlp": mlp}
    # DeepSeek-V2-Lite, b=1, s=2048, eager: 16 heads, q 192 (128 + 64 rotary), v 128, latent 512
    B, S, T, H, nh = 1, 2048, 2048, 2048, 16
    always = 2 * T * H + 2 * T * H + 8 * S + 2 * 2 * S * 64
    held = 3 * nh * 192 + nh * 64 + 512 + 64 + nh * (128 + 128)   # q, q_pe, query states, latents, kv_b, keys
    attention = always + 2 * T * H + 2 * B * S * S + 10 * B * nh * S * S + 2 * T * held
    got = prefill_transients(load_spec("DeepSeek-V2-Lite"), Scenario(B, S, attention="eager"))
    assert got["attention"] == attention
