"""Chapter 04 explorers driven headless; expected numbers come from hand arithmetic on configs.

The tiny config (``tiny_llama`` in conftest) is small enough to count by hand:
V=128, H=64, 4 heads of 16, 2 KV heads, 2 layers, I=96, untied embeddings.
"""
import pytest

from memlib.breakdown import Breakdown
from memlib.lora import lora_fit
from memlib.training import state_bytes, train_memory
from memlib.widgets.training import (lora_explorer, parse_targets, plot_bytes_per_param, plot_lora_fit,
                                     plot_predicted_vs_measured, plot_step_timeline, training_explorer)

# -- the tiny model, by hand ------------------------------------------------------------------
from tiny_params_by_hand import H, L, MATRICES, P_TINY


# -- training_explorer ------------------------------------------------------------------------
def test_training_explorer_drives_train_memory(tiny_llama):
    ex = training_explorer(model=tiny_llama, batch_size=1, seq_len=16)
    assert ex.error is None
    # the step: weights + gradients + state + foreach AdamW's whole second moment (PyTorch's default)
    assert ex.result.phases["step"] == 2 * P_TINY + 2 * P_TINY + 4 * P_TINY + 2 * P_TINY == 781_440
    r = ex.set(precision="mixed", optimizer="sgd_momentum")
    assert r.phases["step"] == (4 + 4 + 4) * P_TINY                 # SGD updates in place
    assert r.total == train_memory(tiny_llama, 1, 16, precision="mixed", optimizer="sgd_momentum").total


def test_training_explorer_peak_moves_from_step_to_backward():
    ex = training_explorer()                                        # Llama-3.1-8B, b=1, s=2048, bf16
    assert ex.result.peak_phase == "step" and ex.result.peak_at == "optimizer"
    assert ex.set(seq_len=4096).peak_phase == "backward"


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


def test_lora_explorer_invalid_inputs_show_a_message():
    ex = lora_explorer()
    for bad, word in [(dict(rank=0), "rank"), (dict(targets="attn_proj"), "targets"), (dict(targets=" , "), "targets"),
                      (dict(batch_size=0), "batch_size"), (dict(seq_len=4097), "max_position_embeddings")]:
        ex.set(rank=16, targets="all-linear", batch_size=1, seq_len=2048)
        assert ex.error is None
        assert ex.set(**bad) is None
        assert ex.result is None and word in ex.error, (bad, ex.error)


def test_parse_targets():
    assert parse_targets("all-linear") == "all-linear"
    assert parse_targets("q_proj, v_proj") == ("q_proj", "v_proj")
    assert parse_targets("q k") == ("q", "k")
    with pytest.raises(ValueError, match="targets"):
        parse_targets("  ")


# -- plot functions draw without error ---------------------------------------------------------
def test_plot_functions(ax):
    r = train_memory("Llama-3.1-8B", 1, 2048)
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


def test_training_explorer_optimizer_impl_control(tiny_llama):
    ex = training_explorer(model=tiny_llama, batch_size=1, seq_len=16)
    # the step's temporaries, by hand: foreach a whole bf16 second moment, fused none
    assert ex.set(optimizer_impl="fused").phases["step"] == (2 + 2 + 4) * P_TINY
    assert ex.set(optimizer_impl="foreach").phases["step"] == (2 + 2 + 4 + 2) * P_TINY
    assert ex.set(optimizer_impl="loop").phases["step"] == train_memory(tiny_llama, 1, 16, optimizer_impl="loop").phases["step"]


def test_lora_explorer_dropout_control_adds_the_dropout_copies(tiny_llama):
    ex = lora_explorer(model=tiny_llama, rank=8, targets="q_proj, v_proj", base="bf16", seq_len=16)
    assert ex.result.meta["lora_dropout"] == 0.0 and not ex.result.meta["double_quant"]
    off = ex.result.meta["activations_saved"]
    on = ex.set(lora_dropout=0.05).meta["activations_saved"]
    # q and v each keep a dropped-out bf16 copy of their 64-wide input and a 1-byte mask, in 2 layers
    assert on - off == L * 2 * (2 + 1) * 16 * H == 12_288
    assert ex.set(lora_dropout=1.0) is None and "lora_dropout" in ex.error


def test_explorers_keep_their_margins_when_the_numbers_grow():
    # the y label must not be pushed out of the figure by wider tick labels after an update
    ex = training_explorer()
    pos = ex.ax.get_position().bounds
    ex.set(seq_len=131_072, precision="mixed")
    assert ex.ax.get_position().bounds == pos and pos[0] * ex.fig.get_size_inches()[0] >= 0.75


def test_new_plot_functions(ax):
    from memlib.widgets.training import plot_peak_vs_seq_len, plot_step_phase
    rs = [train_memory("Llama-3.1-8B", 1, 2048, optimizer_impl=i) for i in ("loop", "foreach", "fused")]
    plot_step_phase(rs, ax, labels=["loop", "foreach", "fused"], measured=[rs[0].phases["step"], None, None])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["loop", "foreach", "fused"]
    ax.clear()
    plot_peak_vs_seq_len("Qwen3-0.6B", [256, 1024, 4096], ax)
    labels = ax.get_legend().get_texts()
    assert any("fused: the backward holds the peak at every length" in t.get_text() for t in labels)
    ax.clear()
    plot_bytes_per_param([state_bytes("Llama-3.1-8B", "mixed", recipe=r) for r in ("amp", "megatron")], ax)
    assert "master weights" in [t.get_text() for t in ax.get_legend().get_texts()]
    ax.clear()
    r = lora_fit("Llama-2-7b", base="bf16", lora_dropout=0.05)
    plot_lora_fit([r], ax)
    assert any("GiB short" in t.get_text() for t in ax.texts)
