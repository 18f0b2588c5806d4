"""Chapter 03 explorer driven headless, checked against hand arithmetic from the configs.

The tiny config (``conftest.tiny_llama``): vocab 128, hidden 64, 4 heads of 16, 2 K/V heads,
2 layers, MLP width 96.  Every expected number below is derived from the formulas of
chapter 03 (what each op saves for its backward), not from memlib.
"""
import numpy as np

from memlib.training import train_memory
from memlib.widgets.activations import (activation_explorer, describe_activations, logits_share,
                                        plot_activations_vs_seq_len, plot_layer_tensors, plot_logits_share,
                                        plot_prediction_errors, plot_predicted_vs_measured, plot_recompute,
                                        plot_saved_per_layer)

# tiny config, batch 2 x 32 tokens
from tiny_activations_by_hand import B, S, L, NH, LOSS


def test_explorer_shows_activation_breakdown(tiny_llama):
    ex = activation_explorer(model=tiny_llama, batch_size=B, seq_len=S)
    assert ex.error is None and ex.result.total == 349_952       # test_activations.py derives it
    r = ex.set(attention="eager")
    assert r["attention S²"] == L * (4 + 2) * B * NH * S * S     # fp32 softmax + its bf16 copy
    r = ex.set(recompute="selective")
    assert r["attention S²"] == 0


def test_llama31_8b_description():
    r = activation_explorer().result                           # Llama-3.1-8B, batch 1 x 4096, sdpa
    assert "49.0·h" in describe_activations(r)
    assert r.meta["peak"] == train_memory("Llama-3.1-8B", 1, 4096).total


def test_invalid_inputs_show_a_message(tiny_llama):
    ex = activation_explorer(model=tiny_llama, batch_size=B, seq_len=S)
    assert ex.set(seq_len=257) is None                  # max_position_embeddings = 256
    assert ex.result is None and "max_position_embeddings" in ex.error and "257" in ex.error
    ex.set(seq_len=S)
    assert ex.error is None and ex.result.total == 349_952
    ex.set(batch_size=0)
    assert ex.result is None and "batch_size" in ex.error
    ex.set(batch_size=-2)
    assert ex.result is None and ex.error
    ex.set(batch_size=B)                                # recovers
    assert ex.error is None and ex.result.total == 349_952


def test_logits_share(tiny_llama):
    parts = logits_share(tiny_llama, batch_size=B, seq_len=S)
    assert parts["log_softmax"] == LOSS and parts["backward_buffers"] == 2 * LOSS
    assert parts["layers"] == 349_952 - LOSS


def test_plot_functions(ax):
    plot_activations_vs_seq_len("Qwen3-0.6B", 2 ** np.arange(7, 14), ax, measured={"sdpa": ([512], [1.3e9])})
    assert len(ax.get_lines()) >= 3
    ax.clear()
    plot_activations_vs_seq_len("Llama-3.1-8B", 2 ** np.arange(7, 14), ax, what="prefill", mark=2048)
    ax.clear()
    plot_saved_per_layer(["gpt2", "Llama-3.1-8B", "Qwen3-30B-A3B", "gemma-2-9b"], ax)
    ax.clear()
    plot_layer_tensors("Qwen3-0.6B", ax, seq_len=1024, attention="eager")
    ax.clear()
    plot_logits_share(["Qwen3-0.6B", "gpt2"], ax)
    ax.clear()
    plot_recompute("Llama-3.1-8B", ax, seq_len=2048, ymax=10.0)
    assert ax.get_ylim() == (0.0, 10.0) and ax.get_yscale() == "linear"
    ax.clear()
    plot_predicted_vs_measured([1e9, 2e9, 4e9], [1.01e9, 2e9, 3.9e9], ax, groups=["a", "a", "b"])
    ax.clear()
    plot_prediction_errors([1e9, 2e9, 4e9], [1.01e9, 2e9, 3.9e9], ax, groups=["a", "a", "b"])
