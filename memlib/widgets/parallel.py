"""Chapter 05 explorer and figures: what every GPU holds under a parallel layout.

Three layers (DESIGN §3):

1. compute: :func:`memlib.parallel.parallel_train_memory`; :func:`explore_parallel` maps
   the explorer's controls onto it (knobs the layout does not use — micro-batches and the
   schedule without a pipeline, sequence parallelism without tensor parallelism — are left
   out rather than refused);
2. a plot function that draws on a matplotlib ``ax``: :func:`plot_ranks` (one bar per
   rank or per layout at its peak, stacked by part: weights, gradients, optimizer state,
   FSDP2's gathered parameters, communication buffers, activations, transients);
3. the explorer :func:`parallel_explorer`.

ipywidgets and matplotlib are imported only inside the functions that need them.
"""
from __future__ import annotations

from ..breakdown import Breakdown
from ..hardware import get_gpu, gpu_names
from ..parallel import OFFLOADS, SCHEDULES, parallel_train_memory
from ..scenario import PRECISIONS, RECOMPUTE
from ..units import GB, UNITS, GiB

#: The parts a bar is stacked by, bottom to top: label -> the rank's components it sums.
PARTS = {
    "weights": ("weights",),
    "gradients": ("gradients",),
    "optimizer state": ("optimizer",),
    "gathered params/grads (FSDP2)": ("unsharded_params", "unsharded_grads"),
    "comm. buffers": ("fsdp_all_gather", "fsdp_reduce_scatter", "ddp_buckets", "pp_buffers", "comm"),
    "activations": ("activations", "in_flight_activations"),
    "transients": ("transient", "autocast_cache"),
}
#: One colour per part, the same in every chapter 05 figure.
PART_COLORS = {"weights": "#4C72B0", "gradients": "#DD8452", "optimizer state": "#55A868",
               "gathered params/grads (FSDP2)": "#8172B3", "comm. buffers": "#937860",
               "activations": "#C44E52", "transients": "#8C8C8C"}


def parts(r: Breakdown) -> dict:
    """``r``'s components at its peak summed into :data:`PARTS` (bytes, ints; chapter 05).
    A component outside every part raises ``ValueError`` (nothing is dropped silently)."""
    comps = dict(r.components)
    known = {c for cs in PARTS.values() for c in cs}
    unknown = sorted(set(comps) - known)
    if unknown:
        raise ValueError(f"components: {unknown} belong to no part of {list(PARTS)}")
    return {p: int(sum(comps.get(c, 0) for c in cs)) for p, cs in PARTS.items()}


# -- compute ---------------------------------------------------------------------------------
def explore_parallel(model, dp: int = 8, tp: int = 1, pp: int = 1, cp: int = 1, ep: int = 1, zero: int = 3,
                     sp: bool = False, microbatches: int = 8, schedule: str = "1f1b", offload: str = "none",
                     batch_size: int = 1, seq_len: int = 4096, precision: str = "bf16", recompute: str = "none",
                     gpu: str = "H100-80GB") -> Breakdown:
    """:func:`memlib.parallel.parallel_train_memory` for the explorer's controls (chapter 05):
    ``microbatches`` and ``schedule`` only with a pipeline (``pp > 1``), ``sp`` only with
    ``tp > 1``.  ``meta["gpu_name"]`` and ``meta["gpu_memory"]`` name the GPU compared to."""
    kw = dict(dp=dp, tp=tp, pp=pp, cp=cp, ep=ep, zero=zero, offload=offload)
    if isinstance(pp, int) and pp > 1:
        kw.update(microbatches=microbatches, schedule=schedule)
    if isinstance(tp, int) and tp > 1:
        kw["sp"] = sp
    g = get_gpu(gpu)
    r = parallel_train_memory(model, batch_size, seq_len, precision, recompute=recompute, **kw)
    return Breakdown(r.components, title=r.title, kinds=r.kinds, phases=r.phases, peak_phase=r.peak_phase,
                     peak_at=r.peak_at, phase_components=r.phase_components, children=r.children, label=r.label,
                     meta={**r.meta, "gpu_name": g.name, "gpu_memory": g.usable_bytes})


def describe_parallel(r: Breakdown) -> str:
    """Rank 0's components at its peak, every rank kind's peak, the global batch, what went
    to the host, and whether the largest rank fits the GPU (chapter 05)."""
    m = r.meta
    lines = [Breakdown(r.components, title=r.title, kinds=r.kinds).table(), ""]
    lines.append(f"layout: {m['plan_label']} on {m['world_size']} GPUs; {m['tokens_per_rank']:,} tokens per rank "
                 f"per micro-batch; global batch {m['global_batch']} sequences of {m['seq_len']}")
    if r.children:
        lines.append("peak by rank: " + ", ".join(f"{c.label} {c.total / GiB:,.2f} GiB ({c.peak_phase})"
                                                 for c in r.children))
    host = sum(m.get("host", {}).values())
    if host:
        lines.append(f"offloaded to the host per rank: {host / GiB:,.2f} GiB (not in the GPU's peak)")
    peak, g = m["max_peak"], m["gpu_memory"]
    verdict = (f"fits on each {m['gpu_name']} ({g / GiB:,.2f} GiB): {(g - peak) / GiB:,.2f} GiB to spare"
               if peak <= g else
               f"does NOT fit on a {m['gpu_name']} ({g / GiB:,.2f} GiB): {(peak - g) / GiB:,.2f} GiB short")
    lines.append(f"largest rank: {peak / GiB:,.2f} GiB = {peak / GB:,.2f} GB; " + verdict
                 + " (before the CUDA context and the allocator's slack, chapter 07)")
    return "\n".join(lines)


# -- plot function ---------------------------------------------------------------------------
_LABEL_BOX = {"facecolor": "white", "edgecolor": "none", "pad": 0.6, "alpha": 0.85}


def plot_ranks(results: dict, ax, gpu_memory: int | None = None, gpu_name: str | None = None,
               unit: str = "GiB", legend: bool = True, rotation: float = 0):
    """One bar per entry of ``results`` (``{label: Breakdown}``: layouts, or the ranks of one
    layout) at its peak, stacked by :data:`PARTS`, the total and the peak's phase on top; the
    GPU's memory as a dashed line (chapter 05).  Returns ``ax``."""
    labels = list(results)
    split = {lab: parts(results[lab]) for lab in labels}
    xs = range(len(labels))
    bottom = [0.0] * len(labels)
    for part in PARTS:
        vals = [split[lab][part] / UNITS[unit] for lab in labels]
        if any(vals):
            ax.bar(xs, vals, bottom=bottom, width=0.65, color=PART_COLORS[part], label=part)
            bottom = [a + b for a, b in zip(bottom, vals)]
    for x, lab, top in zip(xs, labels, bottom):
        ax.text(x, top, f"{top:,.1f}\n({results[lab].peak_phase})", ha="center", va="bottom", fontsize=7,
                bbox=_LABEL_BOX)
    top = max(bottom) if bottom else 0.0
    if gpu_memory:
        g = gpu_memory / UNITS[unit]
        ax.axhline(g, color="k", ls="--", lw=1, zorder=1, label=f"one {gpu_name or 'GPU'}: {g:,.1f} {unit}")
        top = max(top, g)
    ax.set_ylim(0, top * 1.22 if top else 1)
    pad = 0.6 + max(0, 3 - len(labels)) * 0.5          # one or two bars stay bars, not slabs
    ax.set_xlim(-pad, len(labels) - 1 + pad)
    ax.grid(False, axis="x")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=8, rotation=rotation, ha="right" if rotation else "center")
    ax.set_ylabel(f"per-rank peak ({unit})")
    if legend:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return ax


def rank_bars(r: Breakdown) -> dict:
    """The bars the explorer draws for one layout (chapter 05): every rank kind (pipeline
    stages, ZeRO-1's heaviest rank) at its peak when ranks differ; else the one kind of rank
    at the peak of each phase (forward, backward, step), to show where the peak falls."""
    if r.children:
        return {c.label: c for c in r.children}
    who = "each rank" if r.meta["world_size"] > 1 else "the GPU"
    return {f"{who}:\n{ph} peak": Breakdown(comps, title=r.title, kinds=r.kinds, peak_phase=ph)
            for ph, comps in r.phase_components.items()}


# -- explorer --------------------------------------------------------------------------------
def parallel_explorer(model="Llama-3.1-8B", dp: int = 8, tp: int = 1, pp: int = 1, cp: int = 1, ep: int = 1,
                      zero: int = 3, sp: bool = False, microbatches: int = 8, schedule: str = "1f1b",
                      offload: str = "none", batch_size: int = 1, seq_len: int = 4096, precision: str = "bf16",
                      recompute: str = "none", gpu: str = "H100-80GB"):
    """Model × dp × tp × pp × cp × ep × ZeRO stage × SP × micro-batches × schedule × offload ×
    batch × context × precision × recompute → every rank's training peak, stacked by part,
    against one GPU (chapter 05).

    ``ex.result`` is :func:`explore_parallel`'s Breakdown (rank 0; ``children`` = the stages
    or ZeRO-1's ranks; ``meta["max_peak"]`` the largest rank).  An invalid combination (a
    ``tp`` that does not divide the heads, more stages than layers, ZeRO without data
    parallelism, 1F1B with fewer micro-batches than stages) shows a message instead.
    """
    import ipywidgets as w

    from .base import Explorer, model_dropdown

    controls = {
        "model": model_dropdown(model),
        "dp": w.IntText(value=dp, description="dp"),
        "tp": w.IntText(value=tp, description="tp"),
        "pp": w.IntText(value=pp, description="pp"),
        "cp": w.IntText(value=cp, description="cp"),
        "ep": w.IntText(value=ep, description="ep"),
        "zero": w.Dropdown(options=[("0 (DDP)", 0), ("1 (ZeRO-1)", 1), ("2 (FSDP2, no reshard)", 2),
                                    ("3 (FSDP2)", 3)], value=zero, description="ZeRO"),
        "sp": w.Dropdown(options=[("off", False), ("on", True)], value=sp, description="SP (tp>1)"),
        "microbatches": w.IntText(value=microbatches, description="micro-batches"),
        "schedule": w.Dropdown(options=list(SCHEDULES), value=schedule, description="schedule"),
        "offload": w.Dropdown(options=list(OFFLOADS), value=offload, description="offload"),
        "batch_size": w.IntText(value=batch_size, description="batch/rank"),
        "seq_len": w.IntText(value=seq_len, description="seq_len"),
        "precision": w.Dropdown(options=list(PRECISIONS), value=precision, description="precision"),
        "recompute": w.Dropdown(options=list(RECOMPUTE), value=recompute, description="recompute"),
        "gpu": w.Dropdown(options=gpu_names(), value=gpu, description="GPU"),
    }

    def plot(r, ax):
        bars = rank_bars(r)
        plot_ranks(bars, ax, gpu_memory=r.meta["gpu_memory"], gpu_name=r.meta["gpu_name"],
                   rotation=30 if len(bars) > 4 else 0)
        ax.set_title(f"{r.meta['model']}: {r.meta['plan_label']}", fontsize=9)

    return Explorer(explore_parallel, controls, plot=plot, describe=describe_parallel, figsize=(8, 3.6),
                    title="Parallel training: what every GPU holds")
