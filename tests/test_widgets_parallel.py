"""Chapter 05's explorer driven headless, and its plot function; numbers by hand from the config.

Llama-3.1-8B (config.json): hidden 4096, 32 layers, 32 heads / 8 KV heads of 128, MLP 14336,
vocabulary 128256, untied embeddings.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import memlib  # noqa: E402
from memlib.widgets.parallel import (PARTS, explore_parallel, parallel_explorer, parts, plot_ranks,  # noqa: E402
                                     rank_bars)

H, L, V, I, HD, KV = 4096, 32, 128256, 14336, 128, 8
LAYER = 2 * H * H + 2 * H * KV * HD + 3 * H * I + 2 * H        # q, o, k, v, gate/up/down, two norms
TOTAL = L * LAYER + 2 * V * H + H                               # 8,030,261,248
# tp=8: q, k, v, gate, up by rows, o, down by columns, norms whole, embedding and head by vocabulary rows
LAYER_TP8 = 2 * (H // 8) * H + 2 * (KV * HD // 8) * H + 3 * (I // 8) * H + 2 * H
TOTAL_TP8 = L * LAYER_TP8 + 2 * (V // 8) * H + H


def test_explorer_default_fits_with_the_hand_shards():
    ex = parallel_explorer()                       # Llama-3.1-8B, dp8 zero3, bf16, one sequence of 4096
    assert ex.error is None
    r = ex.result
    assert TOTAL == 8_030_261_248
    assert r["weights"] == 2 * TOTAL // 8 == 2_007_565_312          # bf16 shard of 1/8
    assert r["optimizer"] == 2 * 2 * TOTAL // 8                      # AdamW: two bf16 moments, 1/8 each
    assert r.meta["max_peak"] <= r.meta["gpu_memory"]                # the state it is displayed in fits
    assert "fits on each H100-80GB" in ex.text.value
    assert sum(parts(r).values()) == r.total
    # ranks alike: one bar per phase at that phase's peak, the peak phase's bar is the peak
    bars = rank_bars(r)
    assert [b.total for b in bars.values()] == list(r.phases.values())
    assert max(b.total for b in bars.values()) == r.total


def test_explorer_follows_its_controls():
    ex = parallel_explorer()
    r = ex.set(dp=1, zero=0, tp=8)
    assert r["weights"] == 2 * TOTAL_TP8                              # bf16 TP slice, by hand
    sp = ex.set(sp=True)
    assert sp["weights"] == r["weights"] and sp.meta["activations_saved"] < r.meta["activations_saved"]
    r = ex.set(tp=1, sp=False, pp=4, microbatches=8)
    assert [c.label for c in r.children] == ["stage 0", "stage 1", "stage 2", "stage 3"]
    assert list(rank_bars(r)) == ["stage 0", "stage 1", "stage 2", "stage 3"]
    assert r.meta["global_batch"] == 8                                 # 1 sequence x 8 micro-batches x dp 1
    # stage 0: the embedding and layers 0-7; stage 3: layers 24-31, the final norm and the head
    first, last = r.children[0], r.children[-1]
    assert first["weights"] == 2 * (V * H + 8 * LAYER) and last["weights"] == 2 * (8 * LAYER + H + V * H)
    # knobs the layout does not use are left out: sp without tp, micro-batches without a pipeline
    r = ex.set(pp=1, sp=True)
    assert ex.error is None and r.meta["plan_label"] == "single GPU"


def test_offload_and_gpu_choice():
    ex = parallel_explorer()
    r = ex.set(offload="optimizer")
    assert r["optimizer"] == 0 and r.meta["host"]["optimizer"] == 2 * 2 * TOTAL // 8
    assert "offloaded to the host" in ex.text.value
    r = ex.set(offload="none", gpu="A100-40GB")
    assert r.meta["gpu_memory"] == memlib.get_gpu("A100-40GB").usable_bytes


def test_bad_values_show_a_message_not_a_traceback():
    ex = parallel_explorer()
    assert ex.set(dp=1, tp=3, zero=0) is None and ex.error.startswith("tp: 3 does not divide")
    assert ex.set(tp=1, pp=4, microbatches=2) is None and "microbatches" in ex.error
    assert ex.set(pp=40, microbatches=40) is None and "pp" in ex.error            # 32 layers
    assert ex.set(pp=1, dp=1, zero=3) is None and "zero" in ex.error               # ZeRO without dp
    assert ex.set(dp=8) is not None and ex.error is None


def test_every_failure_shows_one_line_and_nothing_stale():
    ex = parallel_explorer()                                # never displayed
    good = dict(ex.values)
    for bad in (dict(batch_size=0), dict(seq_len=0), dict(dp=0), dict(ep=2), dict(cp=3),
                dict(seq_len=10**7), dict(model="Qwen3-30B-A3B", ep=3)):
        assert ex.set(**bad) is None, bad
        assert ex.result is None and ex.error and "\n" not in ex.error, (bad, ex.error)
        assert ex.image.layout.display == "none" and ex.text.value == "" and "⚠" in ex.message.value
        assert ex.set(**good) is not None and ex.error is None


def test_plot_ranks_draws_one_bar_per_layout():
    fig, ax = plt.subplots(figsize=(8, 3.5))
    res = {"DDP": explore_parallel("Qwen3-0.6B", dp=4, zero=0, seq_len=512),
           "ZeRO-3": explore_parallel("Qwen3-0.6B", dp=4, zero=3, seq_len=512)}
    plot_ranks(res, ax, gpu_memory=memlib.get_gpu("H100-80GB").usable_bytes, gpu_name="H100-80GB")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["DDP", "ZeRO-3"]
    drawn = [p for p in PARTS if any(parts(r)[p] for r in res.values())]
    assert len(ax.patches) == 2 * len(drawn) and ax.get_legend() is not None
    plt.close(fig)
