"""Chapter 04 explorers driven headless; expected numbers come from hand arithmetic on configs.

The tiny config (``tiny_llama`` in conftest) is small enough to count by hand:
V=128, H=64, 4 heads of 16, 2 KV heads, 2 layers, I=96, untied embeddings.
"""
import pytest

import memlib
from memlib.breakdown import Breakdown
from memlib.training import train_memory
from memlib.widgets.training import (GPUS, lora_explorer, lora_fit, parse_targets, plot_bytes_per_param,
                                     plot_lora_fit, plot_predicted_vs_measured, plot_step_timeline,
                                     state_bytes, train_timeline, training_explorer, training_step)

# -- the tiny model, by hand ------------------------------------------------------------------
V, H, L, I, D, KV = 128, 64, 2, 96, 16, 2
MATRICES = {  # (rows, cols) per layer, as the model lays them out
    "q": (H, 4 * D), "k": (H, KV * D), "v": (H, KV * D), "o": (4 * D, H),
    "gate": (H, I), "up": (H, I), "down": (I, H),
}
PER_LAYER = sum(r * c for r, c in MATRICES.values())           # 4096+2048+2048+4096+3*6144 = 30_720
VECTORS = L * 2 * H + H                                         # two RMSNorms per layer + final norm = 320
P_TINY = V * H + L * PER_LAYER + VECTORS + V * H                # embed + layers + norms + lm_head
RTX4090 = 24_564 * 2**20                                        # nvidia-smi total of an RTX 4090


def test_tiny_count_by_hand(tiny_llama):
    assert PER_LAYER == 30_720 and VECTORS == 320
    assert P_TINY == 78_144 == memlib.total_params(tiny_llama)




# -- state bytes per recipe and optimizer -----------------------------------------------------
def test_state_bytes_by_hand(tiny_llama):
    bf16 = state_bytes(tiny_llama, "bf16", "adamw")
    assert bf16["weights"] == 2 * P_TINY == 156_288
    assert bf16["gradients"] == 2 * P_TINY
    assert bf16["optimizer"] == 2 * 2 * P_TINY == 312_576           # exp_avg + exp_avg_sq in bf16
    assert "autocast_cache" not in bf16 and bf16.total == 8 * P_TINY
    mixed = state_bytes(tiny_llama, "mixed", "adamw")
    assert mixed["weights"] + mixed["gradients"] + mixed["optimizer"] == 16 * P_TINY
    # autocast caches a bf16 copy of every Linear weight and lm_head (not the embedding, not norms)
    assert mixed["autocast_cache"] == 2 * (L * PER_LAYER + V * H) == 139_264
    assert state_bytes(tiny_llama, "mixed", "sgd")["optimizer"] == 0
    assert state_bytes(tiny_llama, "mixed", "sgd_momentum")["optimizer"] == 4 * P_TINY
    assert state_bytes(tiny_llama, "mixed", "lion")["optimizer"] == 4 * P_TINY
    # Adafactor: a row and a column statistic per matrix, a full second moment per vector
    rows_cols = L * sum(r + c for r, c in MATRICES.values()) + 2 * (V + H)
    assert rows_cols == 2 * 928 + 384
    assert state_bytes(tiny_llama, "mixed", "adafactor")["optimizer"] == 4 * (rows_cols + VECTORS) == 10_240
    # 8-bit AdamW: two uint8 states per matrix value + one fp32 absmax per 256 values; vectors fp32
    matrix_params = L * PER_LAYER + 2 * V * H                       # 77_824 = 304 blocks of 256
    assert state_bytes(tiny_llama, "bf16", "adamw_8bit")["optimizer"] == \
        2 * (matrix_params + 4 * matrix_params // 256) + 2 * 4 * VECTORS == 160_640


def test_state_bytes_per_param_llama():
    P = 8_030_261_248                                               # Llama-3.1-8B, chapter 01
    b = state_bytes("Llama-3.1-8B", "mixed", "adamw")
    assert (b["weights"] + b["gradients"] + b["optimizer"]) == 16 * P
    assert state_bytes("Llama-3.1-8B", "bf16", "adamw").total == 8 * P
    with pytest.raises(ValueError, match="precision"):
        state_bytes("Llama-3.1-8B", "fp8")


# -- training_explorer ------------------------------------------------------------------------
def test_training_explorer_tiny_by_hand(tiny_llama):
    ex = training_explorer(model=tiny_llama, batch_size=1, seq_len=16)
    r = ex.result
    assert ex.error is None
    assert r["weights"] == 2 * P_TINY
    assert r.meta["optimizer_state"] == 2 * 2 * P_TINY
    # the step: weights + gradients + state + AdamW's two temporaries of the largest tensor (V x H)
    assert r.phases["step"] == 2 * P_TINY + 2 * P_TINY + 4 * P_TINY + 2 * (V * H) * 2 == 657_920
    r = ex.set(precision="mixed")
    assert r["weights"] == 4 * P_TINY and r.meta["optimizer_state"] == 8 * P_TINY
    assert r.meta["autocast_cache"] == 2 * (L * PER_LAYER + V * H)
    assert r.phases["step"] == 4 * P_TINY + 4 * P_TINY + 8 * P_TINY + 2 * (V * H) * 4
    r = ex.set(optimizer="sgd_momentum")
    assert r.meta["optimizer_state"] == 4 * P_TINY
    assert r.phases["step"] == (4 + 4 + 4) * P_TINY                 # SGD updates in place


def test_optimizer_state_does_not_grow_with_batch(tiny_llama):
    ex = training_explorer(model=tiny_llama, batch_size=1, seq_len=64)
    one = ex.result
    eight = ex.set(batch_size=8)
    assert one.meta["optimizer_state"] == eight.meta["optimizer_state"] == 4 * P_TINY
    assert eight.meta["activations_saved"] > 7 * one.meta["activations_saved"]


def test_grad_accumulation_keeps_gradients_through_the_forward(tiny_llama):
    ex = training_explorer(model=tiny_llama, batch_size=2, seq_len=32)
    plain = ex.result
    accum = ex.set(grad_accum=4)
    # the later micro-batches run their forward with every bf16 gradient alive
    assert accum.phases["forward"] - plain.phases["forward"] == 2 * P_TINY
    assert accum.phases["step"] == plain.phases["step"]


def test_timeline_marks_add_up_to_train_memory():
    for args in [("Llama-3.1-8B", 1, 2048, "bf16"), ("Qwen3-0.6B", 2, 1024, "mixed", "adamw", "full"),
                 ("DeepSeek-V2-Lite", 1, 512, "mixed", "adafactor", "selective", "eager", 2)]:
        kw = dict(zip(["precision", "optimizer", "recompute", "attention", "grad_accum"], args[3:]))
        marks = train_timeline(*args[:3], **kw)
        r = train_memory(*args[:3], **kw)
        assert [sum(c.values()) for _, _, c in marks] == [v for _, _, v in r.meta["timeline"]]
        best = max(marks, key=lambda m: sum(m[2].values()))
        assert {k: v for k, v in best[2].items() if v} == dict(r.components)


def test_training_explorer_peak_moves_from_step_to_backward():
    ex = training_explorer()                                        # Llama-3.1-8B, b=1, s=2048, bf16
    r = ex.result
    P = 8_030_261_248
    assert r.peak_phase == "step" and r.meta["peak_at"] == "optimizer"
    assert r.total == 2 * P + 2 * P + 4 * P + 2 * (128_256 * 4096) * 2 == 66_343_436_288
    r = ex.set(seq_len=4096)
    assert r.peak_phase == "backward" and r.get("gradients") == 0


def test_training_explorer_invalid_inputs_show_a_message(tiny_llama):
    ex = training_explorer()
    assert ex.set(batch_size=0) is None
    assert ex.result is None and "batch_size" in ex.error
    ex.set(batch_size=1, seq_len=131_073)
    assert ex.result is None and "max_position_embeddings" in ex.error
    ex.set(seq_len=1024, grad_accum=0)
    assert ex.result is None and "grad_accum" in ex.error
    ex.set(grad_accum=1)
    assert ex.error is None and ex.result is not None
    tiny = training_explorer(model=tiny_llama, seq_len=257)         # max_position_embeddings = 256
    assert tiny.result is None and "256" in tiny.error


# -- lora_explorer ----------------------------------------------------------------------------
def test_lora_params_by_hand(tiny_llama):
    ex = lora_explorer(model=tiny_llama, rank=8, targets="q_proj, v_proj", base="bf16", seq_len=16)
    r = ex.result
    # r x (in + out) for A and B, summed over q (64 -> 64) and v (64 -> 32), in 2 layers
    trainable = L * (8 * (64 + 64) + 8 * (64 + 32))
    assert trainable == 3_584 and r.meta["trainable_params"] == trainable
    assert r["optimizer"] == 2 * 2 * trainable                       # AdamW, bf16 adapters
    assert r.meta["base_weights"] == 2 * P_TINY
    r = ex.set(targets="all-linear", rank=4)
    assert r.meta["trainable_params"] == L * 4 * sum(a + b for a, b in MATRICES.values()) == 7_424


def test_lora_llama2_7b_peft_count_and_fit():
    ex = lora_explorer(model="Llama-2-7b", rank=8, targets="q_proj,v_proj", base="bf16")
    r = ex.result
    assert r.meta["trainable_params"] == 32 * 2 * 8 * (4096 + 4096) == 4_194_304   # what PEFT prints
    assert r.meta["base_weights"] == 2 * 6_738_415_616 > 12 * 10**9              # seed 004's 12 GB
    assert r.meta["gpu_memory"] == RTX4090
    assert r.meta["fits"] == (r.total <= RTX4090) and r.meta["margin"] == RTX4090 - r.total
    q = ex.set(base="nf4", double_quant=True)
    assert q.meta["base_weights"] < r.meta["base_weights"] / 3
    assert q.meta["fits"] and q.meta["margin"] > 0
    assert q.total > 12 * 10**9 > ex.set(recompute="full").total   # 2048 tokens: 12 GB needs recompute
    small = ex.set(gpu="L4 24GB", base="bf16", recompute="none", batch_size=8, seq_len=4096)
    assert not small.meta["fits"] and small.meta["margin"] < 0 and small.meta["gpu_memory"] == GPUS["L4 24GB"]


def test_lora_explorer_invalid_inputs_show_a_message():
    ex = lora_explorer()
    for bad, word in [(dict(rank=0), "rank"), (dict(targets="attn_proj"), "targets"), (dict(targets=" , "), "targets"),
                      (dict(batch_size=0), "batch_size"), (dict(seq_len=4097), "max_position_embeddings")]:
        ex.set(rank=16, targets="all-linear", batch_size=1, seq_len=2048)
        assert ex.error is None
        assert ex.set(**bad) is None
        assert ex.result is None and word in ex.error, (bad, ex.error)


def test_parse_targets_and_lora_fit():
    assert parse_targets("all-linear") == "all-linear"
    assert parse_targets("q_proj, v_proj") == ("q_proj", "v_proj")
    assert parse_targets("q k") == ("q", "k")
    with pytest.raises(ValueError, match="targets"):
        parse_targets("  ")
    with pytest.raises(ValueError, match="gpu"):
        lora_fit("Llama-2-7b", gpu="TPU v9")
    assert lora_fit("Llama-2-7b", gpu=12 * 10**9).meta["gpu_memory"] == 12 * 10**9


# -- plot functions draw without error ---------------------------------------------------------
def test_plot_functions(ax):
    r = training_step("Llama-3.1-8B", 1, 2048)
    fake = Breakdown({"weights": 1}, meta={"timeline": [("forward", 50 * 2**30), ("backward", 60 * 2**30),
                                                        ("step", 62 * 2**30)]})
    plot_step_timeline(r, ax, measured=fake)
    assert len(ax.collections) >= 4                                  # stacked components
    ax.clear()
    plot_step_timeline(train_memory("Qwen3-0.6B", 1, 512), ax, legend="inside")
    ax.clear()
    plot_bytes_per_param([state_bytes("Llama-3.1-8B", p, o) for p in ("bf16", "mixed")
                          for o in ("adamw", "adafactor")], ax)
    ax.clear()
    plot_lora_fit([lora_fit("Llama-2-7b", base=b) for b in ("bf16", "nf4")], ax)
    ax.clear()
    plot_predicted_vs_measured([1e9, 2e9, 4e9], [1.01e9, 1.98e9, 4e9], ax, groups=["a", "a", "b"])
