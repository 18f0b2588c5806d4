"""Chapter 05 explorer and figures: what every GPU holds under a parallel layout.

Three layers (model and view apart, as in every explorer):

1. compute: :func:`memlib.parallel.parallel_train_memory`; :func:`explore_parallel` maps
   the explorer's controls onto it (knobs the layout does not use — micro-batches and the
   schedule without a pipeline, sequence parallelism without tensor parallelism — are left
   out rather than refused);
2. a plot function that draws on a matplotlib ``ax``: :func:`plot_ranks` (one bar per
   rank or per layout at its peak, stacked by part: weights, gradients, optimizer state,
   FSDP2's gathered parameters, communication buffers, activations, transients);
3. the explorers: :func:`parallel_explorer` (one layout, every knob) and
   :func:`plan_explorer` (the planner, :func:`memlib.plan`: the layouts of a model that fit
   ``nodes × GPUs per node`` GPUs, best first, and the chosen one's ranks; its compute is
   :func:`explore_plan`, its text :func:`describe_plan`, its figure :func:`plot_plan`).

ipywidgets and matplotlib are imported only inside the functions that need them.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from functools import lru_cache

from ..breakdown import Breakdown
from ..hardware import get_gpu, gpu_names
from ..parallel import OFFLOADS, SCHEDULES, parallel_train_memory, plan
from ..scenario import PRECISIONS, RECOMPUTE
from ..spec import load_spec
from ..units import GB, UNITS, GiB
from ..validation import choice, positive_int
from .base import Explorer

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
                     gpu: str = "H100-80GB", grad_accum: int = 1) -> Breakdown:
    """:func:`memlib.parallel.parallel_train_memory` for the explorer's controls (chapter 05):
    ``microbatches`` and ``schedule`` only with a pipeline (``pp > 1``), ``sp`` only with
    ``tp > 1``; ``grad_accum`` (gradient accumulation steps without a pipeline) is not a
    control, the planner explorer passes it.  ``meta["gpu_name"]`` and ``meta["gpu_memory"]``
    name the GPU compared to."""
    kw = dict(dp=dp, tp=tp, pp=pp, cp=cp, ep=ep, zero=zero, offload=offload)
    if isinstance(pp, int) and pp > 1:
        kw.update(microbatches=microbatches, schedule=schedule)
    if isinstance(tp, int) and tp > 1:
        kw["sp"] = sp
    g = get_gpu(gpu)
    r = parallel_train_memory(model, batch_size, seq_len, precision, recompute=recompute, grad_accum=grad_accum,
                              **kw)
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
               unit: str = "GiB", legend: bool = True, rotation: float = 0, every_part: bool = False):
    """One bar per entry of ``results`` (``{label: Breakdown}``: layouts, or the ranks of one
    layout) at its peak, stacked by :data:`PARTS`, the total and the peak's phase on top; the
    GPU's memory as a dashed line (chapter 05).  ``every_part``: every part in the legend, even
    one no bar holds (a legend that stays put while an explorer's layout changes).  Returns ``ax``."""
    labels = list(results)
    split = {lab: parts(results[lab]) for lab in labels}
    xs = range(len(labels))
    bottom = [0.0] * len(labels)
    for part in PARTS:
        vals = [split[lab][part] / UNITS[unit] for lab in labels]
        if any(vals) or every_part:
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


# == the planner explorer: which layouts fit, and what each rank holds in the chosen one =======
#: The explorer's ``offload`` choices -> the offloads the planner may consider.
PLAN_OFFLOADS = {"none": ("none",), "allowed": OFFLOADS}
#: Rows of the text table (the layout drop-down lists every layout that fits).
PLAN_TOP = 8


@dataclass(frozen=True)
class PlanView:
    """What the planner explorer shows (chapter 05): the planner's ``answer``
    (:class:`memlib.parallel.planner.PlanResult`), the ``chosen`` fitting layout (None when
    nothing fits), ``ranks`` (the chosen layout's :func:`explore_parallel` Breakdown, or the
    closest layout's when nothing fits), what the planner ``tried`` (one line) and, when
    nothing fits, ``hints``: what offload and full recompute would let through."""

    answer: object
    chosen: object
    ranks: Breakdown
    tried: str
    hints: tuple = ()

    @property
    def fits(self) -> list:
        """The fitting layouts, best first (the planner's ``fits``; chapter 05)."""
        return self.answer.fits


def _gpus(gpu: str, gpus_per_node, nodes) -> str:
    """The planner's ``gpus`` string ``NODESxPER_NODExGPU``, each count checked under its control's name."""
    nodes = positive_int("nodes", nodes)
    per_node = positive_int("gpus_per_node", gpus_per_node)
    get_gpu(gpu)                                     # names the field and the GPUs known
    return f"{nodes}x{per_node}x{gpu}"


@lru_cache(maxsize=128)
def _cached_plan(model, gpus, seq_len, global_batch_size, precision, recompute, offloads):
    return plan(model, gpus=gpus, seq_len=seq_len, global_batch_size=global_batch_size, precision=precision,
                recompute=recompute, offload=offloads)


def plan_answer(model="Llama-3.1-8B", gpu: str = "H100-80GB", gpus_per_node: int = 8, nodes: int = 1,
                seq_len: int = 8192, global_batch_size: int = 32, precision: str = "bf16",
                recompute: str = "none", offload: str = "none"):
    """:func:`memlib.plan` for the explorer's controls (chapter 05): ``nodes × gpus_per_node``
    GPUs of type ``gpu``; ``offload`` is ``"none"`` (nothing to the host) or ``"allowed"``
    (optimizer state, parameters or both may go).  Cached: an answer for inputs seen before
    is not computed again.  A question no layout can even be built for (the global batch is no
    multiple of any valid data-parallel degree) raises ``ValueError`` naming
    ``global_batch_size`` and the degrees that would do."""
    gpus = _gpus(gpu, gpus_per_node, nodes)
    choice("offload", offload, PLAN_OFFLOADS)
    choice("precision", precision, PRECISIONS)
    choice("recompute", recompute, RECOMPUTE)
    args = (gpus, seq_len, global_batch_size, precision, recompute, PLAN_OFFLOADS[offload])
    try:
        answer = _cached_plan(model, *args)
    except TypeError:                                # an unhashable model (a config dict): not cached
        answer = plan(model, gpus=gpus, seq_len=seq_len, global_batch_size=global_batch_size,
                      precision=precision, recompute=recompute, offload=PLAN_OFFLOADS[offload])
    if not answer.considered:
        from ..parallel.planner import layouts
        spec = load_spec(model)
        dps = sorted({p.dp for p, _ in layouts(spec, int(nodes), int(gpus_per_node), answer.question["seq_len"],
                                                None)})
        raise ValueError(f"global_batch_size: no layout of {int(nodes) * int(gpus_per_node)} GPUs splits a global "
                         f"batch of {global_batch_size} sequences; it must be a multiple of a data-parallel "
                         f"degree dp in {{{', '.join(map(str, dps))}}}")
    return answer


def _tried(answer) -> str:
    """One line: how many layouts the planner evaluated, and the degrees among them."""
    ps = [x.plan for x in answer.all]

    def vals(f):
        return ", ".join(str(v) for v in sorted({getattr(p, f) for p in ps}))
    degrees = "; ".join(f"{f} in {{{vals(f)}}}" for f in ("dp", "tp", "pp", "cp", "ep", "zero")
                        if len({getattr(p, f) for p in ps}) > 1 or getattr(ps[0], f) != 1)
    sp = ", SP on and off" if any(p.sp for p in ps) else ""
    offs = sorted({p.offload for p in ps}, key=OFFLOADS.index)
    n = answer.considered
    return f"tried {n} layout{'s' if n > 1 else ''}: {degrees or 'no parallelism'}{sp}; offload: {', '.join(offs)}"


def _hints(inputs: dict, answer) -> tuple:
    """When nothing fits: what letting the optimizer state/parameters go to the host, recomputing
    the activations, or both would let through (the planner asked again; chapter 05)."""
    tries = []
    if inputs["offload"] == "none":
        tries.append(("offload allowed", dict(offload="allowed")))
    if inputs["recompute"] != "full":
        tries.append(("recompute full", dict(recompute="full")))
    if len(tries) == 2:
        tries.append(("both", dict(offload="allowed", recompute="full")))
    out, helped = [], False
    smallest = min(x.peak for x in answer.all)
    for name, change in tries:
        other = plan_answer(**{**inputs, **change})
        smallest = min([smallest] + [x.peak for x in other.all])
        if other.fits:
            helped, best = True, other.fits[0]
            out.append(f"with {name}: {len(other.fits)} layout(s) fit, the first {best.plan.label()} "
                       f"({best.peak / GiB:,.2f} GiB)")
        else:
            out.append(f"with {name}: still none")
    if not helped:
        out.append(f"no layout tried brings its largest rank below {smallest / GiB:,.2f} GiB: more GPUs, "
                   f"a GPU with more memory, or a shorter sequence")
    return tuple(out)


def _layout_ranks(model, layout, seq_len, precision, recompute, gpu) -> Breakdown:
    """:func:`explore_parallel` for one of the planner's layouts (its micro-batch and accumulation)."""
    p = layout.plan
    r = explore_parallel(model, dp=p.dp, tp=p.tp, pp=p.pp, cp=p.cp, ep=p.ep, zero=p.zero, sp=p.sp,
                         microbatches=p.microbatches, schedule=p.schedule, offload=p.offload,
                         batch_size=layout.micro_batch_size, seq_len=seq_len, precision=precision,
                         recompute=recompute, gpu=gpu, grad_accum=layout.accumulation if p.pp == 1 else 1)
    return r


def explore_plan(model="Llama-3.1-8B", gpu: str = "H100-80GB", gpus_per_node: int = 8, nodes: int = 1,
                 seq_len: int = 8192, global_batch_size: int = 32, precision: str = "bf16",
                 recompute: str = "none", offload: str = "none", layout: str | None = None) -> PlanView:
    """The planner's answer for the controls and the chosen layout's ranks (chapter 05).

    ``layout`` is one fitting layout's label (:meth:`memlib.parallel.Plan.label`), None for the
    planner's first choice.  A layout fits when its largest rank's peak is at most the GPU's
    runtime memory (:attr:`memlib.hardware.GPU.usable_bytes`).  When none fits, ``chosen`` is
    None, ``ranks`` is the closest layout's (the smallest peak) and ``hints`` says what offload
    and recompute would change.
    """
    inputs = dict(model=model, gpu=gpu, gpus_per_node=gpus_per_node, nodes=nodes, seq_len=seq_len,
                  global_batch_size=global_batch_size, precision=precision, recompute=recompute, offload=offload)
    answer = plan_answer(**inputs)
    seq = answer.question["seq_len"]
    if not answer.fits:
        closest = min(answer.all, key=lambda x: (x.peak, x.plan.label()))
        return PlanView(answer, None, _layout_ranks(model, closest, seq, precision, recompute, gpu),
                        _tried(answer), _hints(inputs, answer))
    labels = [x.plan.label() for x in answer.fits]
    if layout is None:
        chosen = answer.fits[0]
    elif layout in labels:
        chosen = answer.fits[labels.index(layout)]
    else:
        raise ValueError(f"layout: {layout!r} is not among the {len(labels)} layouts that fit; "
                         f"the first: {', '.join(labels[:3])}")
    return PlanView(answer, chosen, _layout_ranks(model, chosen, seq, precision, recompute, gpu), _tried(answer))


def describe_plan(v: PlanView) -> str:
    """The question, how many layouts fit, the first :data:`PLAN_TOP` (peak of the largest rank
    and headroom), the chosen layout's ranks; or, when nothing fits, what was tried, the
    closest layout and the hints (chapter 05)."""
    a, q = v.answer, v.answer.question
    n = q["nodes"] * q["gpus_per_node"]
    lines = [f"{q['model']} on {n} x {a.gpu.name} ({q['nodes']} x {q['gpus_per_node']}, {a.gpu_bytes / GiB:,.2f} GiB "
             f"each), {q['seq_len']:,} tokens,",
             f"global batch {q['global_batch_size']}, {q['precision']}, recompute {q['recompute']}, offload "
             f"{'allowed' if len(q['offload']) > 1 else 'none'}"]
    if not v.fits:
        r = v.ranks
        closest = r.meta["plan_label"]
        lines += textwrap.wrap("NOTHING FITS: " + v.tried + ".", 100, subsequent_indent="  ")
        lines.append(f"closest: {closest}, largest rank {r.meta['max_peak'] / GiB:,.2f} GiB, "
                     f"{(r.meta['max_peak'] - a.gpu_bytes) / GiB:,.2f} GiB short (its ranks below).")
        lines += [w for h in v.hints for w in textwrap.wrap(h, 100, initial_indent="  ", subsequent_indent="    ")]
        return "\n".join(lines)
    lines += [f"{len(v.fits)} of {a.considered} layouts fit, ranked by the fewest model-parallel GPUs (tp*pp*cp*ep),",
              "then the lowest ZeRO stage, then no offload, then the most headroom"]
    lines.append(f"     {'layout':<34}{'micro x accum':>14}{'peak GiB':>10}{'headroom':>10}  peak phase")
    chosen = v.chosen.plan.label()
    rows = list(enumerate(v.fits[:PLAN_TOP], 1))
    idx = [x.plan.label() for x in v.fits].index(chosen) + 1
    if idx > PLAN_TOP:
        rows.append((idx, v.chosen))
    for i, x in rows:
        if i > PLAN_TOP and i == idx:
            lines.append("     ...")
        mark = "->" if x.plan.label() == chosen else "  "
        lines.append(f"{mark}{i:>3} {x.plan.label():<34}{f'{x.micro_batch_size} x {x.accumulation}':>14}"
                     f"{x.peak / GiB:>10.2f}{x.headroom / GiB:>10.2f}  {x.peak_phase}")
    if len(v.fits) > len(rows):
        lines.append(f"     ... {len(v.fits) - PLAN_TOP} more in the layout drop-down")
    r = v.ranks
    line = f"chosen: {chosen}; global batch {r.meta['global_batch']} sequences per step"
    if r.children:
        line += "; peak by rank: " + ", ".join(f"{c.label} {c.total / GiB:,.2f} GiB" for c in r.children)
    host = sum(r.meta.get("host", {}).values())
    if host:
        line += f"; on the host per rank: {host / GiB:,.2f} GiB"
    lines.append(line)
    return "\n".join(lines)


def plot_plan(v: PlanView, ax):
    """The chosen layout's ranks stacked by part against the GPU (:func:`plot_ranks`; chapter 05);
    the closest layout's, marked as not fitting, when nothing fits."""
    r = v.ranks
    bars = rank_bars(r)
    plot_ranks(bars, ax, gpu_memory=v.answer.gpu_bytes, gpu_name=v.answer.gpu.name,
               rotation=30 if len(bars) > 4 else 0, every_part=True)
    q = v.answer.question
    n = q["nodes"] * q["gpus_per_node"]
    what = (f"{[x.plan.label() for x in v.fits].index(r.meta['plan_label']) + 1} of {len(v.fits)} that fit"
            if v.chosen is not None else "nothing fits; the closest layout")
    # one line on the left: its height, not its text, sets the top margin, so choosing another
    # layout redraws without computing the layout again (Explorer._layout_signature)
    ax.set_title(f"{q['model']}, {n} x {v.answer.gpu.name}: {r.meta['plan_label']} ({what})", fontsize=9,
                 loc="left")
    return ax


def plan_explorer(model="Llama-3.1-8B", gpu: str = "H100-80GB", gpus_per_node: int = 8, nodes: int = 1,
                  seq_len: int = 8192, global_batch_size: int = 32, precision: str = "bf16",
                  recompute: str = "none", offload: str = "none", layout: str | None = None):
    """Model × GPU type × nodes × GPUs per node × sequence × global batch × precision × recompute
    × offload → the layouts that fit (:func:`memlib.plan`, best first), and the chosen one's
    ranks stacked by part against the GPU (chapter 05).

    The ``layout`` drop-down lists the layouts that fit, rebuilt whenever another control
    changes (the chosen layout stays chosen while it still fits, else the planner's first
    choice).  ``ex.result`` is :func:`explore_plan`'s :class:`PlanView`.  When nothing fits,
    the text says what was tried and what offload or recompute would let through, and the
    figure shows the closest layout; bad input shows a message naming the control.  Headless:
    ``ex.set(seq_len=16384, layout="dp4 tp2 zero1 sp")`` (a layout that does not fit the new
    inputs raises ``ValueError`` listing some that do).
    """
    import ipywidgets as w

    from .base import model_dropdown

    controls = {
        "model": model_dropdown(model),
        "gpu": w.Dropdown(options=gpu_names(), value=gpu, description="GPU"),
        "nodes": w.IntText(value=nodes, description="nodes"),
        "gpus_per_node": w.IntText(value=gpus_per_node, description="GPUs/node"),
        "seq_len": w.IntText(value=seq_len, description="seq_len"),
        "global_batch_size": w.IntText(value=global_batch_size, description="global batch"),
        "precision": w.Dropdown(options=list(PRECISIONS), value=precision, description="precision"),
        "recompute": w.Dropdown(options=list(RECOMPUTE), value=recompute, description="recompute"),
        "offload": w.Dropdown(options=list(PLAN_OFFLOADS), value=offload, description="offload"),
        # filled by the first update with the layouts that fit, best first
        "layout": w.Dropdown(options=[], description="layout", layout=w.Layout(width="420px")),
    }
    ex = PlanExplorer(explore_plan, controls, plot=plot_plan, describe=describe_plan, figsize=(8, 3.6),
                      title="Which layouts fit? The planner, and the chosen layout's ranks")
    if layout is not None:
        ex.set(layout=layout)
    return ex


def _layout_options(answer) -> list:
    """The layout drop-down's ``(label, value)`` pairs: every fitting layout, best first."""
    return [(f"{i}. {x.plan.label()} ({x.peak / GiB:,.1f} GiB)", x.plan.label())
            for i, x in enumerate(answer.fits, 1)]


class PlanExplorer(Explorer):
    """An :class:`~memlib.widgets.base.Explorer` whose ``layout`` drop-down follows the other
    controls: before each update its options become the planner's fitting layouts (cached;
    chapter 05)."""

    def _sync_layouts(self):
        ctl = self.controls["layout"]
        inputs = {k: v for k, v in self.values.items() if k != "layout"}
        try:
            options = _layout_options(plan_answer(**inputs))
        except Exception:       # noqa: BLE001 - the update that follows shows the message
            options = []
        values = [v for _, v in options]
        keep = ctl.value if ctl.value in values else (values[0] if values else None)
        if [tuple(o) for o in ctl.options] == options and ctl.value == keep:
            return
        prev, self._hold = self._hold, True
        try:
            ctl.options = options
            ctl.value = keep
        finally:
            self._hold = prev

    def update(self):
        """Rebuild the layout drop-down for the other controls, then recompute and redraw."""
        if self._hold:
            return self.result
        self._sync_layouts()
        return super().update()

    def set(self, **values):
        """Set several controls, then recompute once; ``layout`` is chosen after the drop-down
        is rebuilt for the other values (``ValueError`` listing some that fit if it does not)."""
        want = values.pop("layout", None)
        self._assign(values)                         # an unknown control: its message
        self._sync_layouts()
        if want is not None:
            ctl = self.controls["layout"]
            allowed = [v for _, v in ctl.options]
            if want not in allowed:
                self.update()
                raise ValueError(f"layout: {want!r} is not among the {len(allowed)} layouts that fit; "
                                 f"the first: {', '.join(allowed[:3]) or 'none'}")
            self._hold = True
            try:
                ctl.value = want
            finally:
                self._hold = False
        return self.update()
