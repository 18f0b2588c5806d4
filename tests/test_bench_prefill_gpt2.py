"""GPT-2's prefill peak, by hand and against the bench, on a tiny GPT-2 (chapter 03 §inference).

Traced on gpt2 itself (b2 s1024 eager, whose peak memlib put 44,040,192 B too high): in the
last layer's eager attention transformers holds two bf16 score tensors at a time (``q·kᵀ``
and its scaled copy), not three, and c_attn's fused output (q, k and v are its views);
``GPT2Block`` keeps the attention's output, and in eager its softmax, alive through the MLP.
"""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from memlib.inference import inference_memory  # noqa: E402
from memlib.measure.scenarios import measure_prefill  # noqa: E402

pytestmark = pytest.mark.bench

# hidden 64, 8 heads, MLP width 64 (so the scores dominate at s=64), 2 layers
TINY_GPT2 = {"model_type": "gpt2", "vocab_size": 128, "n_embd": 64, "n_head": 8, "n_inner": 64, "n_layer": 2,
             "n_positions": 64, "bos_token_id": 0, "eos_token_id": 0}
H, NH, I, L, a = 64, 8, 64, 2, 2


def by_hand(B, S, attention):
    T = B * S
    always = a * T * H + a * T * H + 8 * S + a * S * H   # embeddings, layer input, positions, wpe output
    mask = a * B * S * S
    kv = L * 2 * a * T * H
    mlp = always + 2 * a * T * H + 4 * a * T * I + a * T * H      # residual, ln_2, 4 GELU tensors, attn output
    if attention == "eager":
        mlp += mask + a * B * NH * S * S                            # the mask and the softmax, held
        attn = always + a * T * H + mask + 4 * B * NH * S * S + 3 * a * T * H   # ln_1, 2 score tensors, c_attn
        return kv + max(mlp, attn)
    return kv + mlp


def test_by_hand_numbers():
    # b2 s64 eager: 16384·2 + 512 + 8192 + 16384 (ln_1) + 16384 (mask) + 262144 + 49152 = 385536; KV 65536
    assert by_hand(2, 64, "eager") == 385536 + 65536
    # b2 s64 sdpa: 16384·2 + 512 + 8192 + 32768 + 65536 + 16384 = 156160; KV 65536
    assert by_hand(2, 64, "sdpa") == 156160 + 65536


@pytest.mark.parametrize("B,S,attention,peak_at", [
    (2, 64, "eager", "attention"),
    (1, 16, "eager", "mlp"),
    (2, 64, "sdpa", "mlp"),
])
def test_prefill_peak_matches_bench(B, S, attention, peak_at):
    measured = measure_prefill(TINY_GPT2, B, S, attention=attention)
    predicted = inference_memory(TINY_GPT2, B, S, attention=attention, runtime="transformers")
    assert predicted.peak_at == peak_at
    assert measured.meta["prefill_peak"] == by_hand(B, S, attention) == predicted.meta["prefill_peak"]
