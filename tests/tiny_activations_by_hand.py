"""What the tiny config (``tiny_llama`` in conftest) saves at batch 2 x 32 tokens, by hand, from
the formulas of chapter 03 (shared by test_activations.py and test_widgets_activations.py).
"""

B, S, H, I, V, L, NH, HD, KV = 2, 32, 64, 96, 128, 2, 4, 16, 32
T = B * S                                                # 64 tokens
NORM_BF16 = 4 * T * H + 4 * T + 2 * T * H + 2 * T * H    # fp32 copy, rsqrt, normalised, output
ATTN_SDPA = 2 * T * 64 + 2 * T * KV + 2 * T * KV + 2 * T * 64 + 4 * B * NH * S   # q, k, v, out, logsumexp
MLP = 4 * 2 * T * I                                      # gate, up, silu(gate), product
OUTSIDE_BF16 = 2 * S * HD * 2 + NORM_BF16 + 8 * T        # RoPE cos/sin, final norm, int64 labels
LOSS = 4 * T * V                                         # fp32 log-softmax
