"""Chapter 05's explorers (one layout; the planner) driven headless, and the plot function; numbers
by hand from the configs.

Llama-3.1-8B (config.json): hidden 4096, 32 layers, 32 heads / 8 KV heads of 128, MLP 14336,
vocabulary 128256, untied embeddings.
"""
import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import memlib  # noqa: E402
from memlib.parallel import parallel_train_memory  # noqa: E402
from memlib.parallel.planner import OFFLOAD_ORDER  # noqa: E402
from memlib.widgets.parallel import (PARTS, explore_parallel, explore_plan, parallel_explorer,  # noqa: E402
                                     parts, plan_answer, plan_explorer, plot_ranks, rank_bars)

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


# -- the planner explorer -------------------------------------------------------------------
H100 = memlib.get_gpu("H100-80GB").usable_bytes
# Llama-3.1-70B (config.json): hidden 8192, 80 layers, 64 heads / 8 KV heads of 128, MLP 28672,
# vocabulary 128256, untied embeddings
H7, L7, I7 = 8192, 80, 28672
P70 = L7 * (2 * H7 * H7 + 2 * H7 * 8 * 128 + 3 * H7 * I7 + 2 * H7) + 2 * V * H7 + H7     # 70,553,706,496


def test_plan_explorer_lists_what_fits_best_first():
    ex = plan_explorer()                 # Llama-3.1-8B on 1 node of 8 H100s, 8,192 tokens, global batch 32
    assert ex.error is None
    v = ex.result
    labels = [x.plan.label() for x in v.fits]
    assert [val for _, val in ex.controls["layout"].options] == labels and len(set(labels)) == len(labels)
    assert ex.controls["layout"].value == labels[0] and v.chosen is v.fits[0]
    # the planner's documented criterion, checked through the other entry point: each listed
    # layout's largest rank (every stage, ZeRO-1's heaviest rank) fits one H100's runtime bytes
    for x in v.fits:
        p = x.plan
        r = parallel_train_memory("Llama-3.1-8B", x.micro_batch_size, 8192, plan=p,
                                  grad_accum=x.accumulation if p.pp == 1 else 1)
        assert r.meta["max_peak"] <= H100, p.label()
        assert r.meta["global_batch"] == 32, p.label()                       # micro x dp x accumulation
        assert p.world_size == 8
    # ranked: fewest model-parallel GPUs, then lowest ZeRO stage, then no offload, then most headroom
    keys = [(x.plan.tp * x.plan.pp * x.plan.cp * x.plan.ep, x.plan.zero, OFFLOAD_ORDER.index(x.plan.offload),
             -x.headroom) for x in v.fits]
    assert keys == sorted(keys)
    # the first choice needs no model parallelism: dp8 ZeRO-3; each rank holds 1/8 of the bf16
    # weights (by hand)
    assert labels[0] == "dp8 zero3" and v.ranks["weights"] == 2 * TOTAL // 8
    assert "dp8 zero3" in ex.text.value and "fit" in ex.text.value


def test_plan_explorer_leaves_out_what_is_too_big_by_hand():
    # 70B on 8 H100s, offload allowed, full recompute: without tensor/pipeline/context
    # parallelism and below ZeRO-2 every rank holds the whole bf16 weights, 2 x P bytes
    assert P70 == memlib.total_params("Llama-3.1-70B") == 70_553_706_496
    assert 2 * P70 > H100                                              # 131.4 GiB > 79.2 GiB
    ex = plan_explorer("Llama-3.1-70B", seq_len=4096, global_batch_size=32, recompute="full", offload="allowed")
    labels = [x.plan.label() for x in ex.result.fits]
    assert labels and all(x.peak <= H100 for x in ex.result.fits)
    for too_big in ("dp8 ddp", "dp8 zero1", "dp8 ddp offload optimizer", "dp8 zero1 offload optimizer"):
        assert too_big not in labels
    assert all(x.plan.zero >= 2 or x.plan.tp * x.plan.pp * x.plan.cp > 1 for x in ex.result.fits)


def test_plan_explorer_says_when_nothing_fits_and_what_would():
    # one A100-40GB and Llama-3.1-8B: one layout (the GPU alone, no ZeRO), whose bf16 weights
    # and AdamW moments alone, 6 x P bytes, are more than the GPU
    assert 6 * TOTAL > memlib.get_gpu("A100-40GB").usable_bytes
    ex = plan_explorer("Llama-3.1-8B", gpu="A100-40GB", gpus_per_node=1, seq_len=4096, global_batch_size=8)
    v = ex.result
    assert ex.error is None and "⚠" not in ex.message.value          # an answer, not an error
    assert v.chosen is None and not v.fits and v.answer.considered == 1
    assert list(ex.controls["layout"].options) == [] and ex.controls["layout"].value is None
    assert v.ranks.meta["max_peak"] > memlib.get_gpu("A100-40GB").usable_bytes     # the closest, shown
    text = ex.text.value
    assert "NOTHING FITS: tried 1 layout" in text and "closest: single GPU" in text
    assert "with offload allowed" in text and "with recompute full" in text and "with both" in text
    assert ex.image.layout.display != "none" and ex.image.value
    # the hint agrees with the planner asked directly with both
    both = plan_answer("Llama-3.1-8B", gpu="A100-40GB", gpus_per_node=1, seq_len=4096, global_batch_size=8,
                       recompute="full", offload="allowed")
    assert f"with both: {len(both.fits)} layout(s) fit" in text if both.fits else "with both: still none" in text


def test_plan_explorer_follows_its_controls_and_keeps_the_choice():
    ex = plan_explorer()
    ex.set(layout="dp4 tp2 zero1 sp")
    assert ex.result.chosen.plan.label() == "dp4 tp2 zero1 sp"
    r = ex.set(seq_len=4096)                                    # still fits: still chosen
    assert r.chosen.plan.label() == "dp4 tp2 zero1 sp" and r.answer.question["seq_len"] == 4096
    r = ex.set(nodes=2, layout="dp16 zero3")                    # the drop-down is rebuilt for 16 GPUs first
    assert r.chosen.plan.label() == "dp16 zero3" and r.chosen.plan.world_size == 16
    assert r.ranks["weights"] == 2 * TOTAL // 16                 # FSDP2 shard: 8,030,261,248 divides by 16
    with pytest.raises(ValueError, match="^layout: 'tp3'"):
        ex.set(layout="tp3")
    # the same inputs answer from the cache
    assert plan_answer(nodes=2, seq_len=4096) is plan_answer(nodes=2, seq_len=4096)


def test_plan_explorer_bad_input_names_the_control():
    ex = plan_explorer()                                        # never displayed
    good = {k: val for k, val in ex.values.items() if k != "layout"}
    cases = {"nodes": dict(nodes=0), "GPUs/node (gpus_per_node:": dict(gpus_per_node=-1),
             "global batch (global_batch_size: must be": dict(global_batch_size=0),
             "seq_len: 1000000 is beyond": dict(seq_len=10**6)}
    for start, bad in cases.items():
        assert ex.set(**bad) is None, bad
        assert ex.error.startswith(start) and "\n" not in ex.error, ex.error
        assert ex.result is None and ex.text.value == "" and ex.image.layout.display == "none"
        assert list(ex.controls["layout"].options) == []
        assert ex.set(**good) is not None and ex.error is None
    # 3 GPUs: 32 heads and 32 layers do not divide by 3 and the sequence splits by powers of
    # two, so every layout is dp=3, and a global batch of 4 is no multiple of it
    assert ex.set(gpus_per_node=3, global_batch_size=4) is None
    assert ex.error.startswith("global batch (global_batch_size: no layout of 3 GPUs") and "dp in {3}" in ex.error
    with pytest.raises(ValueError, match="^global_batch_size"):
        explore_plan(gpus_per_node=3, global_batch_size=4)
