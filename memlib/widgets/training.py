"""Chapter 04 explorers: training state, the step timeline, and LoRA / QLoRA on one GPU.

Three layers (DESIGN §3):

1. compute: :func:`memlib.training.train_memory`, :func:`memlib.lora.lora_memory` and
   :func:`memlib.optimizers.optimizer_state_bytes`; here, thin wrappers that add what a
   plot needs: :func:`train_timeline` (the components live at every mark of the step
   timeline), :func:`training_step` (``train_memory`` plus those marks),
   :func:`state_bytes` (weights, gradients, optimizer state and autocast cache of one
   recipe) and :func:`lora_fit` (``lora_memory`` against a GPU's memory);
2. plot functions that draw on a matplotlib ``ax``: :func:`plot_step_timeline`,
   :func:`plot_bytes_per_param`, :func:`plot_lora_fit`, :func:`plot_predicted_vs_measured`;
3. explorers: :func:`training_explorer` and :func:`lora_explorer`.

ipywidgets and matplotlib are imported only inside the functions that need them.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..plotting import plot_predicted_vs_measured  # noqa: F401  (re-exported for chapter 04)
from ..activations import ATTENTIONS, PRECISIONS, RECOMPUTE
from ..breakdown import Breakdown
from ..lora import BASES, TARGET_GROUPS, lora_memory
from ..optimizers import OPTIMIZERS, optimizer_state_bytes
from ..params import count_params
from ..spec import load_spec
from ..training import CATEGORIES, PHASES, matmul_weight_params, prepare_step, step_timeline, train_memory
from ..units import GB, UNITS, GiB
from ..validation import choice, positive_int
from .kv import GPUS

#: Components of a training step, bottom to top in every stacked chart.
COMPONENTS = ("weights", "optimizer", "gradients", "autocast_cache", "activations", "transient")
COMPONENT_COLORS = {"weights": "#4C72B0", "optimizer": "#DD8452", "gradients": "#55A868",
                    "autocast_cache": "#8172B3", "activations": "#C44E52", "transient": "#CCB974"}
#: Width of each phase on a timeline's x axis (the axis is "progress through the phase").
PHASE_WIDTH = {"forward": 1.0, "backward": 1.0, "step": 0.35}
#: Optimizer names as the chapter's table prints them.
OPTIMIZER_LABELS = {"adamw": "AdamW", "sgd": "SGD", "sgd_momentum": "SGD + momentum",
                    "adafactor": "Adafactor (factored)", "adamw_8bit": "8-bit AdamW (bnb)", "lion": "Lion"}


# -- compute ---------------------------------------------------------------------------------
def train_timeline(model, batch_size, seq_len, precision: str = "bf16", optimizer: str = "adamw",
                   recompute: str = "none", attention: str = "sdpa", grad_accum: int = 1,
                   device: str = "cuda"):
    """The marks of :func:`memlib.training.train_memory`'s step timeline with their components.

    Returns a list of ``(phase, label, {component: bytes})`` with the components of
    :data:`COMPONENTS`.  The inputs come from :func:`memlib.training.prepare_step`, as
    ``train_memory``'s do, and go through :func:`memlib.training.step_timeline`, so the sum of each mark's components equals
    ``train_memory(...).meta["timeline"]`` mark for mark (the widget tests check it).
    Inside a run of identical layers only the run's two ends are marked; live bytes change
    linearly between them.
    """
    spec, sc, inputs = prepare_step(model, batch_size, seq_len, precision, optimizer, recompute,
                                    attention, grad_accum, device)
    marks, _ = step_timeline(spec, sc, inputs, recompute, grad_accum)
    out = []
    for ph, label, *values in marks:
        comps = {"weights": inputs.weights, "optimizer": inputs.optimizer}
        comps.update({k: int(v) for k, v in zip(CATEGORIES, values)})
        out.append((ph, label, comps))
    return out


def training_step(model, batch_size, seq_len, precision: str = "bf16", optimizer: str = "adamw",
                  recompute: str = "none", attention: str = "sdpa", grad_accum: int = 1,
                  device: str = "cuda") -> Breakdown:
    """:func:`memlib.training.train_memory` with ``meta["marks"]`` (:func:`train_timeline`),
    ``meta["model"]`` and ``meta["params"]`` added, for plotting and describing."""
    r = train_memory(model, batch_size, seq_len, precision=precision, optimizer=optimizer,
                     recompute=recompute, attention=attention, grad_accum=grad_accum, device=device)
    spec = load_spec(model)
    marks = train_timeline(spec, batch_size, seq_len, precision, optimizer, recompute, attention,
                           grad_accum, device)
    return replace(r, meta={**r.meta, "model": spec.name, "params": count_params(spec).total,
                            "marks": marks})


def state_bytes(model, precision: str = "mixed", optimizer: str = "adamw") -> Breakdown:
    """Model states of a full fine-tune: ``weights``, ``gradients``, ``optimizer`` state and,
    under ``mixed``, the ``autocast_cache`` (bf16 copies of every matmul weight).

    ``bf16``: ``2 + 2 + state(2)``; ``mixed``: ``4 + 4 + state(4)`` bytes per parameter,
    plus ``2`` per matmul weight for the cache (chapter 04).  ``meta["params"]`` is the
    parameter count, so ``b[k] / b.meta["params"]`` is bytes per parameter.
    """
    choice("precision", precision, PRECISIONS)
    spec = load_spec(model)
    P = count_params(spec).total
    p = 4 if precision == "mixed" else 2
    comps = {"weights": P * p, "gradients": P * p,
             "optimizer": optimizer_state_bytes(spec, optimizer, state_bytes=p)}
    if precision == "mixed":
        comps["autocast_cache"] = 2 * matmul_weight_params(spec)
    return Breakdown(comps, title=f"{spec.name}: {precision} {OPTIMIZER_LABELS.get(optimizer, optimizer)}",
                     meta={"params": P, "precision": precision, "optimizer": optimizer})


def parse_targets(targets):
    """LoRA targets typed as text: a group name (``all-linear``, ``attention``, ``mlp``) or
    module names separated by commas or spaces (``q_proj, v_proj`` or ``q v``)."""
    if not isinstance(targets, str):
        return targets
    text = targets.strip()
    if text in TARGET_GROUPS:
        return text
    names = tuple(t for t in text.replace(",", " ").split() if t)
    if not names:
        raise ValueError("targets: empty; give module names (q_proj, v_proj, ...) or "
                         f"one of {', '.join(TARGET_GROUPS)}")
    return names


def gpu_bytes(gpu) -> int:
    """A GPU named in :data:`memlib.widgets.kv.GPUS` (driver-reported bytes), or bytes as given."""
    if isinstance(gpu, str):
        if gpu not in GPUS:
            raise ValueError(f"gpu: unknown GPU {gpu!r}; known: {', '.join(GPUS)}")
        return GPUS[gpu]
    return positive_int("gpu", gpu)


def lora_fit(model, gpu="RTX 4090 24GB", batch_size: int = 1, seq_len: int = 2048, rank: int = 16,
             targets="all-linear", base: str = "nf4", double_quant: bool = True,
             recompute: str = "none", optimizer: str = "adamw", attention: str = "sdpa") -> Breakdown:
    """:func:`memlib.lora.lora_memory` against one GPU's memory.

    ``meta`` adds ``gpu``, ``gpu_memory`` (bytes the driver reports), ``fits``
    (``peak <= gpu_memory``), ``margin`` (``gpu_memory - peak``, negative when short) and
    ``model``.  The CUDA context and the allocator's slack come on top (chapter 07).
    """
    mem = gpu_bytes(gpu)
    spec = load_spec(model)
    r = lora_memory(spec, batch_size, seq_len, rank=rank, targets=parse_targets(targets), base=base,
                    double_quant=double_quant, optimizer=optimizer, recompute=recompute,
                    attention=attention)
    name = gpu if isinstance(gpu, str) else f"{mem / GB:.1f} GB"
    return replace(r, meta={**r.meta, "model": spec.name, "gpu": name, "gpu_memory": mem,
                            "fits": bool(r.total <= mem), "margin": int(mem - r.total),
                            "params": count_params(spec).total})


# -- describe --------------------------------------------------------------------------------
def describe_training(r: Breakdown) -> str:
    """Table of a training step plus the peak's phase and moment, and the per-phase peaks."""
    m = r.meta
    lines = [r.table(), "",
             f"peak {r.total / GiB:,.2f} GiB = {r.total / GB:,.2f} GB in the {r.peak_phase} "
             f"(at '{m['peak_at']}')",
             "phase peaks: " + "  ".join(f"{ph} {v / GiB:,.2f}" for ph, v in r.phases.items()) + " GiB",
             f"optimizer state {m['optimizer_state'] / GiB:,.2f} GiB; "
             f"activations saved by the end of the forward {m['activations_saved'] / GiB:,.2f} GiB"]
    if "params" in m:
        p = 4 if m["precision"] == "mixed" else 2
        lines.append(f"model states: {(2 * p * m['params'] + m['optimizer_state']) / m['params']:.2f} bytes/param"
                     + (f" + autocast cache {m['autocast_cache'] / m['params']:.2f}" if m.get("autocast_cache") else ""))
    return "\n".join(lines)


def describe_lora(r: Breakdown) -> str:
    """Table of a LoRA/QLoRA step plus trainable parameters and whether it fits the GPU."""
    m = r.meta
    verdict = (f"fits on {m['gpu']} ({m['gpu_memory'] / GiB:,.2f} GiB): {m['margin'] / GiB:,.2f} GiB to spare"
               if m["fits"] else
               f"does NOT fit on {m['gpu']} ({m['gpu_memory'] / GiB:,.2f} GiB): {-m['margin'] / GiB:,.2f} GiB short")
    lines = [r.table(), "",
             f"trainable: {m['trainable_params']:,} adapter parameters "
             f"({m['trainable_params'] / m['params']:.3%} of {m['params']:,}); targets {', '.join(m['targets'])}",
             f"frozen base ({m['base']}{' + double quant' if m['base'] == 'nf4' and m['double_quant'] else ''}): "
             f"{m['base_weights'] / GiB:,.2f} GiB = {m['base_weights'] / GB:,.2f} GB",
             f"peak {r.total / GiB:,.2f} GiB = {r.total / GB:,.2f} GB in the {r.peak_phase}; {verdict}"]
    return "\n".join(lines)


# -- plot functions --------------------------------------------------------------------------
def _phase_offsets():
    offsets, start = {}, 0.0
    for ph in PHASES:
        offsets[ph] = start
        start += PHASE_WIDTH[ph]
    return offsets, start


def _event_x(phases):
    """x of each point of a measured timeline: a phase's points spread evenly over its width."""
    phases = list(phases)
    offsets, end = _phase_offsets()
    counts = {ph: phases.count(ph) for ph in PHASES}
    seen = dict.fromkeys(PHASES, 0)
    xs = []
    for ph in phases:
        xs.append(offsets[ph] + PHASE_WIDTH[ph] * seen[ph] / max(counts[ph], 1))
        seen[ph] += 1
    return np.array(xs), offsets, end


def _mark_spans(marks):
    """``(x0, x1)`` of every mark of a predicted timeline: the moment it stands for, laid out
    as the bench's events are (layers evenly over most of the phase, the loss and the
    embedding at the ends).  Unknown labels are spread evenly over their phase."""
    offsets, _ = _phase_offsets()
    layer_ids = [int(lbl.split()[1]) for _, lbl, *_ in marks if lbl.startswith("layer ")]
    L = max(layer_ids) + 1 if layer_ids else 1
    fixed = {("forward", "loss"): (0.90, 0.97), ("forward", "end"): (0.97, 1.0),
             ("backward", "loss"): (0.0, 0.03), ("backward", "lm_head"): (0.03, 0.06),
             ("backward", "embedding"): (0.97, 1.0), ("step", "optimizer"): (0.0, 1.0)}
    spans = []
    for k, (ph, lbl, *_) in enumerate(marks):
        parts = lbl.split()
        if (ph, lbl) in fixed:
            f0, f1 = fixed[(ph, lbl)]
        elif ph == "forward" and parts[0] == "layer" and len(parts) == 2:
            i = int(parts[1])
            f0, f1 = 0.9 * i / L, 0.9 * (i + 1) / L
        elif ph == "backward" and parts[0] == "layer" and len(parts) == 3:
            j = L - 1 - int(parts[1]) + (0.5 if parts[2] == "attention" else 0.0)
            f0, f1 = 0.06 + 0.91 * j / L, 0.06 + 0.91 * (j + 0.5) / L
        else:
            same = [q for q, m in enumerate(marks) if m[0] == ph]
            r = same.index(k)
            f0, f1 = r / len(same), (r + 1) / len(same)
        spans.append((offsets[ph] + PHASE_WIDTH[ph] * f0, offsets[ph] + PHASE_WIDTH[ph] * f1))
    return spans


def plot_step_timeline(result: Breakdown, ax, measured: Breakdown | None = None, unit: str = "GiB",
                       legend: bool = True, title: str | None = None, annotate: bool = True):
    """Live memory through one training step: forward, backward, optimizer step.

    ``result``: a :func:`training_step` Breakdown (components stacked at every mark) or a
    plain :func:`memlib.training.train_memory` one (its ``meta["timeline"]`` totals as a
    line).  Each mark is drawn as a short plateau at the moment it stands for, joined
    linearly (live bytes change linearly across a run of identical layers).
    ``legend``: True (beside the axes), ``"inside"`` (components only, inside the axes) or False.
    ``measured``: a :func:`memlib.measure.measure_train` Breakdown whose
    ``meta["timeline"]`` (``(phase, live bytes)``) is drawn on top, its points spread
    evenly over each phase.  The x axis is progress through each phase (phases have fixed
    widths, :data:`PHASE_WIDTH`).  The predicted peak is a dot, the measured one a cross.
    Returns ``ax``.
    """
    scale = UNITS[unit]
    marks = result.meta.get("marks")
    if marks is None:
        marks = [(ph, lbl, {"total": v}) for ph, lbl, v in result.meta["timeline"]]
    spans = _mark_spans(marks)
    offsets, end = _phase_offsets()
    names = [k for k in COMPONENTS if any(c.get(k, 0) for _, _, c in marks)] or ["total"]
    first = marks[0][2]
    start = {k: (first.get(k, 0) if k in ("weights", "optimizer", "gradients") else 0) for k in names}
    xs, rows = [0.0], [start]
    for (x0, x1), (_, _, c) in zip(spans, marks):
        xs += [x0, x1]
        rows += [c, c]
    xs = np.array(xs)
    ys = [np.array([r.get(k, 0) for r in rows], dtype=float) / scale for k in names]
    if names == ["total"]:
        ax.plot(xs, ys[0], color="#4C72B0", lw=2, label="predicted (memlib)")
    else:
        ax.stackplot(xs, *ys, labels=names, colors=[COMPONENT_COLORS[k] for k in names], alpha=0.85)
    totals = np.array([sum(c.values()) for _, _, c in marks], dtype=float)
    best = int(np.argmax(totals))
    peak_x = sum(spans[best]) / 2
    ax.plot([peak_x], [totals[best] / scale], "o", color="k", ms=7, zorder=5,
            label=f"predicted peak {totals[best] / scale:,.2f} {unit}")
    top = totals.max()
    if measured is not None:
        tl = measured.meta["timeline"]
        mx, _, _ = _event_x([ph for ph, _ in tl])
        mv = np.array([v for _, v in tl], dtype=float)
        ax.plot(mx, mv / scale, color="k", lw=1.2, label="measured (bench)")
        j = int(np.argmax(mv))
        ax.plot([mx[j]], [mv[j] / scale], "x", color="#b00020", ms=10, mew=2.5, zorder=6,
                label=f"measured peak {mv[j] / scale:,.2f} {unit}")
        top = max(top, mv.max())
    for ph in PHASES[1:]:
        ax.axvline(offsets[ph], color="0.3", lw=0.8, ls=":")
    if annotate:
        ax.annotate(f"peak: {result.peak_phase}, {result.meta.get('peak_at', '')}",
                    (peak_x, totals[best] / scale), xytext=(0, 8), textcoords="offset points", fontsize=8,
                    ha="right" if peak_x > end * 0.6 else "left", va="bottom")
    ax.set_xlim(0, end)
    ax.set_ylim(0, top / scale * 1.15)
    ax.set_xticks([offsets[ph] + PHASE_WIDTH[ph] / 2 for ph in PHASES])
    ax.set_xticklabels([ph + (" (peak)" if ph == result.peak_phase else "") for ph in PHASES])
    ax.tick_params(axis="x", length=0)
    ax.set_ylabel(f"live memory ({unit})")
    if title is not None:
        ax.set_title(title, fontsize=10)
    if legend == "inside":      # compact: components only (the explorers draw this one fast)
        handles, labels = ax.get_legend_handles_labels()
        keep = [i for i, lbl in enumerate(labels) if lbl in COMPONENT_COLORS] or list(range(len(labels)))
        ax.legend([handles[i] for i in keep], [labels[i] for i in keep], fontsize=7, loc="lower left",
                  ncol=min(len(keep), 3), framealpha=0.9)
    elif legend:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax


def plot_bytes_per_param(rows, ax, labels=None, reference: float | None = 16):
    """Horizontal stacked bars of bytes per parameter: weights, gradients, optimizer state and
    (hatched, alive during forward and backward only) the autocast cache.

    ``rows``: Breakdowns from :func:`state_bytes`.  A dashed line marks ``reference``
    (the ZeRO paper's 16 bytes/param).  Returns ``ax``.
    """
    if isinstance(rows, Breakdown):
        rows = [rows]
    rows = list(rows)
    labels = list(labels or [r.title for r in rows])
    y = np.arange(len(rows))
    left = np.zeros(len(rows))
    for k in ("weights", "gradients", "optimizer", "autocast_cache"):
        vals = np.array([r.get(k, 0) / r.meta["params"] for r in rows])
        if not vals.any():
            continue
        cache = k == "autocast_cache"
        ax.barh(y, vals, left=left, height=0.65, label="autocast cache (fwd + bwd only)" if cache else k,
                color="white" if cache else COMPONENT_COLORS[k], edgecolor=COMPONENT_COLORS[k],
                hatch="///" if cache else None, lw=1 if cache else 0)
        left += vals
    for i, r in enumerate(rows):
        states = sum(r.get(k, 0) for k in ("weights", "gradients", "optimizer")) / r.meta["params"]
        cache = r.get("autocast_cache", 0) / r.meta["params"]
        ax.text(left[i], i, f" {states:.2f}" + (f" (+{cache:.2f})" if cache else ""), va="center",
                ha="left", fontsize=8)
    if reference:
        ax.axvline(reference, color="k", ls="--", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(left.max(), reference or 0) * 1.22)
    ax.set_xlabel("bytes per parameter")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax


def plot_lora_fit(results, ax, gpu_memory: int | None = None, labels=None, gpu_name: str | None = None,
                  unit: str = "GiB"):
    """One stacked bar per LoRA/QLoRA (or any training) Breakdown, and the GPU's memory as a
    line: a bar under the line fits.  ``gpu_memory`` defaults to the first result's
    ``meta["gpu_memory"]``.  Returns ``ax``."""
    from ..plotting import stacked_bar
    if isinstance(results, Breakdown):
        results = [results]
    results = list(results)
    if gpu_memory is None:
        gpu_memory = results[0].meta.get("gpu_memory")
        gpu_name = gpu_name or results[0].meta.get("gpu")
    stacked_bar(results, ax=ax, unit=unit, labels=labels or [r.title for r in results],
                colors=COMPONENT_COLORS)
    if gpu_memory:
        g = gpu_memory / UNITS[unit]
        ax.axhline(g, color="k", ls="--", lw=1)
        ax.text(0.99, g, f"{gpu_name or 'GPU'}: {g:,.2f} {unit}", ha="right", va="bottom", fontsize=8,
                transform=ax.get_yaxis_transform())
        ax.set_ylim(0, max(g, max(r.total for r in results) / UNITS[unit]) * 1.15)
    ax.set_ylabel(f"peak memory ({unit})")
    return ax


# -- explorers -------------------------------------------------------------------------------
def training_explorer(model="Llama-3.1-8B", batch_size: int = 1, seq_len: int = 2048,
                      precision: str = "bf16", optimizer: str = "adamw", recompute: str = "none",
                      attention: str = "sdpa", grad_accum: int = 1):
    """Model × batch × context × precision × optimizer × recompute → the peak of a training
    step, its phase, and the stacked step timeline.

    ``ex.result`` is :func:`training_step`'s Breakdown (components live at the peak,
    ``phases``, ``peak_phase``, ``meta["marks"]``).  A batch below 1 or a context beyond
    the model's ``max_position_embeddings`` shows a message instead.
    """
    import ipywidgets as w

    from .base import Explorer, model_dropdown

    controls = {
        "model": model_dropdown(model),
        "batch_size": w.IntText(value=batch_size, description="batch"),
        "seq_len": w.IntText(value=seq_len, description="seq_len"),
        "precision": w.Dropdown(options=list(PRECISIONS), value=precision, description="precision"),
        "optimizer": w.Dropdown(options=[(OPTIMIZER_LABELS[o], o) for o in OPTIMIZERS], value=optimizer,
                                description="optimizer"),
        "recompute": w.Dropdown(options=list(RECOMPUTE), value=recompute, description="recompute"),
        "attention": w.Dropdown(options=list(ATTENTIONS), value=attention, description="attention"),
        "grad_accum": w.IntText(value=grad_accum, description="grad accum"),
    }

    def compute(model, batch_size, seq_len, precision, optimizer, recompute, attention, grad_accum):
        return training_step(model, batch_size, seq_len, precision, optimizer, recompute, attention, grad_accum)

    def plot(r, ax):
        plot_step_timeline(r, ax, legend="inside")

    return Explorer(compute, controls, plot=plot, describe=describe_training, figsize=(7, 3.2),
                    title="A training step: where the peak falls")


def lora_explorer(model="Llama-2-7b", rank: int = 16, targets: str = "all-linear", base: str = "nf4",
                  double_quant: bool = True, batch_size: int = 1, seq_len: int = 2048,
                  gpu: str = "RTX 4090 24GB", recompute: str = "none"):
    """Model × rank × targets × base (bf16 / nf4) × double quant × batch × context × GPU →
    the LoRA / QLoRA peak, whether it fits, and a bar against the GPU's memory.

    ``targets`` is text: a group (``all-linear``, ``attention``, ``mlp``) or module names
    (``q_proj, v_proj``).  ``ex.result`` is :func:`lora_fit`'s Breakdown
    (``meta["fits"]``, ``meta["margin"]``, ``meta["trainable_params"]``).  A rank or batch
    below 1, an unknown target or a context beyond the model's limit shows a message.
    """
    import ipywidgets as w

    from .base import Explorer, model_dropdown

    controls = {
        "model": model_dropdown(model),
        "rank": w.IntText(value=rank, description="rank r"),
        "targets": w.Combobox(value=targets, options=list(TARGET_GROUPS) + ["q_proj, v_proj", "q, k, v, o"],
                              description="targets", ensure_option=False),
        "base": w.Dropdown(options=list(BASES), value=base, description="base"),
        "double_quant": w.Checkbox(value=double_quant, description="double quant (nf4)"),
        "batch_size": w.IntText(value=batch_size, description="batch"),
        "seq_len": w.IntText(value=seq_len, description="seq_len"),
        "gpu": w.Dropdown(options=list(GPUS), value=gpu, description="GPU"),
        "recompute": w.Dropdown(options=list(RECOMPUTE), value=recompute, description="recompute"),
    }

    def compute(model, rank, targets, base, double_quant, batch_size, seq_len, gpu, recompute):
        return lora_fit(model, gpu, batch_size, seq_len, rank, targets, base, double_quant, recompute)

    def plot(r, ax):
        plot_lora_fit([r], ax, labels=[f"{'QLoRA' if r.meta['base'] == 'nf4' else 'LoRA'} r={r.meta['rank']}"])
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))

    return Explorer(compute, controls, plot=plot, describe=describe_lora, figsize=(5.5, 3.6),
                    title="LoRA / QLoRA: does it fit on this GPU?")
