"""Chapter 03 explorers: what a forward pass keeps, for training and for a prefill.

Three layers, as in every explorer (memlib.widgets):

1. compute: :func:`memlib.activations.layer_tensors` (the tensors autograd saves, as
   records), :func:`memlib.activations.activation_breakdown` (what a step keeps, by block),
   :func:`memlib.training.train_memory` (the step's peak) and
   :func:`memlib.inference.inference_memory` (the prefill's peak);
2. plot functions that draw on a matplotlib ``ax``: :func:`plot_activations_vs_seq_len`,
   :func:`plot_saved_per_layer`, :func:`plot_layer_tensors`, :func:`plot_logits_share`
   (with :func:`logits_share`), :func:`plot_recompute`, :func:`plot_predicted_vs_measured`
   and :func:`plot_prediction_errors`;
3. the explorer :func:`activation_explorer`.

Sweeps over ``seq_len`` pass numpy arrays to memlib (no Python loop over grid points).
ipywidgets and matplotlib are imported only inside the functions that need them.
"""
from __future__ import annotations

import numpy as np

from ..activations import (BLOCK_LABELS, activation_breakdown, display_block, layer_tensors,
                           model_state_bytes)
from ..breakdown import Breakdown
from ..inference import inference_memory
from ..plotting import plot_predicted_vs_measured, token_ticks as _tokens  # noqa: F401
from ..scenario import ATTENTIONS, PRECISIONS, RECOMPUTE, Scenario, attention_used
from ..spec import load_spec
from ..training import train_memory
from ..units import GiB, UNITS

#: The colour of each block a decoder layer's saved tensors are grouped into.
BLOCKS = dict(zip(BLOCK_LABELS, ("#8C8C8C", "#4C72B0", "#C44E52", "#55A868", "#937860")))
#: Colours of the parts of the activations outside the blocks.
OTHER_COLORS = {"layer inputs (checkpoints)": "#8172B3", "outside the layers": "#CCB974",
                "loss log-softmax (fp32)": "#DD8452", "backward's 2 fp32 T×V buffers": "#F2B880"}
ATTENTION_STYLES = {"sdpa": "-", "eager": "--"}
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">")
#: Korthikanti et al. (2022): a GPT layer without its s² term saves 34·s·b·h bytes.
KORTHIKANTI = 34

def describe_activations(b: Breakdown) -> str:
    """Table of an :func:`activation_breakdown` plus the layer's bytes per token and the step's peak."""
    m = b.meta
    H = m["hidden_size"]
    ppt = m["per_layer_total"] / m["tokens"]
    lines = [b.table(), "",
             f"one layer saves {m['per_layer_total']:,} B = {ppt:,.0f} B per token = {ppt / H:.1f}·h",
             f"  (h = {H:,}; Korthikanti's GPT layer: {KORTHIKANTI}·h + its s² term)"]
    if m["recompute"] != "none" and m["recompute_extra"]:
        lines.append(f"recompute={m['recompute']}: the backward brings one layer's "
                     f"{m['recompute_extra'] / GiB:,.3f} GiB back at a time")
    t = m["train"]
    at_peak = {k: v for k, v in t.components.items() if v}
    parts = ", ".join(f"{k} {v / GiB:,.2f}" for k, v in at_peak.items())
    lines.append(f"training step peak: {m['peak'] / GiB:,.2f} GiB = {m['peak'] / 1e9:,.2f} GB in the "
                 f"{m['peak_phase']} ({m['peak_at']})")
    lines.append(f"  live then (GiB): {parts}")
    return "\n".join(lines)


# -- plot functions -------------------------------------------------------------------------
def plot_activations_vs_seq_len(model, seq_lens, ax, attention=("sdpa", "eager"), recompute: str = "none",
                                batch_size: int = 1, precision: str = "bf16", what: str = "train",
                                mark: int | None = None, measured: dict | None = None, unit: str = "GiB",
                                states: bool = True, color=None, label: str | None = None):
    """Activation memory against sequence length (log-log), one line per attention kind.

    ``what="train"``: the bytes a training step saves by the end of its forward
    (``train_memory(...).meta["activations_saved"]``); ``what="prefill"``: the prefill's
    peak above the weights, KV cache included (``inference_memory(...).meta["prefill_peak"]``).
    SDPA (flash) is solid, eager dashed: eager's ``B·heads·S²`` score matrices make its line
    bend up to slope 2.  ``measured``: ``{attention: (seq_lens, bytes)}`` from the bench, drawn
    as markers.  ``states``: a dotted line at the model states (training: weights + gradients
    + optimizer) or the weights (prefill).  ``mark`` puts a dot at that length.  Returns ``ax``.
    """
    from ..plotting import color_for
    spec = load_spec(model)
    s = np.asarray(seq_lens, dtype=np.int64)
    s = s[s <= spec.max_position_embeddings]
    attention = (attention,) if isinstance(attention, str) else tuple(attention)
    color = color or color_for(spec.name)
    scale = UNITS[unit]
    for att in attention:
        if what == "train":
            y = train_memory(spec, batch_size, s, precision=precision, recompute=recompute,
                             attention=att).meta["activations_saved"]
        else:
            y = inference_memory(spec, batch_size, s, attention=att).meta["prefill_peak"]
        used = attention_used(spec, att)
        name = label or spec.name
        ax.plot(s, np.asarray(y) / scale, ATTENTION_STYLES[att], color=color, lw=2,
                label=f"{name}, {att}" + (" (runs eager)" if used != att else ""))
        if mark is not None and mark <= spec.max_position_embeddings:
            if what == "train":
                v = train_memory(spec, batch_size, mark, precision=precision, recompute=recompute,
                                 attention=att).meta["activations_saved"]
            else:
                v = inference_memory(spec, batch_size, mark, attention=att).meta["prefill_peak"]
            ax.plot([mark], [v / scale], "o", color=color, ms=7)
        if measured and att in measured:
            ms, mv = measured[att]
            ax.plot(ms, np.asarray(mv) / scale, "x" if att == "eager" else "o", color="k", ms=7,
                    mfc="none", mew=1.5, label=f"bench, {att}")
    if states:
        if what == "train":
            t = train_memory(spec, 1, int(s[0]), precision=precision)
            ref = t.meta["optimizer_state"] + 2 * model_state_bytes(spec, precision)
            text = "weights + gradients + AdamW state"
        else:
            from ..weights import weight_memory
            ref = weight_memory(spec).total
            text = "bf16 weights"
        ax.axhline(ref / scale, color=color, ls=":", lw=1)
        ax.text(s[0], ref / scale, f" {spec.name}: {text}", color=color, fontsize=7, va="bottom")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter
    ax.xaxis.set_major_formatter(FuncFormatter(_tokens))
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel(unit)
    what_text = ("activations saved by the forward" if what == "train"
                 else "prefill peak above the weights (KV included)")
    ax.set_title(f"{what_text}, batch {batch_size}" + (f", recompute={recompute}" if what == "train" and
                                                        recompute != "none" else ""), fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    return ax


def plot_saved_per_layer(models, ax, batch_size: int = 1, seq_len: int = 4096, attention: str = "sdpa",
                         precision: str = "bf16", reference: float | None = KORTHIKANTI):
    """One horizontal stacked bar per model: the bytes one decoder layer saves per token, in
    units of its hidden size ``h`` (so models of every width compare), split by block.

    The first layer is shown (for DeepSeek, a dense one).  A vertical line marks
    Korthikanti et al.'s ``34·h`` for a GPT layer without its s² term.  Returns ``ax``.
    """
    specs = [load_spec(m) for m in models]
    y = np.arange(len(specs))
    for i, spec in enumerate(specs):
        s = min(seq_len, spec.max_position_embeddings)
        sc = Scenario(batch_size, s, precision, attention)
        T = batch_size * s
        left = 0.0
        per_block = {b: 0 for b in BLOCKS}
        for t in layer_tensors(spec, sc, moe=spec.moe_layers[-1]).values():
            per_block[display_block(t)] += t.nbytes
        for b, v in per_block.items():
            w = v / T / spec.hidden_size
            if w:
                ax.barh([i], [w], left=left, color=BLOCKS[b], height=0.7, label=b if i == 0 else None)
            left += w
        note = f" {left:.1f}·h"
        if s != seq_len:
            note += f" (s={s})"
        ax.text(left, i, note, va="center", fontsize=8)
    from matplotlib.patches import Patch
    used = {display_block(t) for spec in specs
            for t in layer_tensors(spec, Scenario(batch_size, 1, precision, attention)).values()}
    handles = {b: Patch(color=c, label=b) for b, c in BLOCKS.items() if b in used}
    if reference:
        ax.axvline(reference, color="k", ls="--", lw=1)
        ax.text(reference, -0.5, f" GPT: {reference}·h", fontsize=8, va="bottom")
    ax.set_yticks(y)
    ax.set_yticklabels([s.name + (" (MoE layer)" if s.is_moe else "")
                        + (f" ({attention_used(s, attention)})" if attention_used(s, attention) != attention else "")
                        for s in specs], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, ax.get_xlim()[1] * 1.15)
    ax.set_xlabel(f"bytes saved per token per layer / hidden size h ({precision}, {attention}, s={seq_len:,})")
    ax.legend(handles=list(handles.values()), fontsize=8, loc="lower right")
    return ax


def plot_layer_tensors(model, ax, batch_size: int = 1, seq_len: int = 4096, attention: str = "sdpa",
                       precision: str = "bf16", unit: str = "MiB", moe: bool | None = None):
    """One horizontal bar per tensor one decoder layer saves
    (:func:`memlib.activations.layer_tensors`), coloured by block, in ``unit``.  Returns ``ax``."""
    spec = load_spec(model)
    sc = Scenario(batch_size, seq_len, precision, attention)
    recs = layer_tensors(spec, sc, moe=spec.moe_layers[0] if moe is None else moe)
    d = {k: t.nbytes for k, t in recs.items()}
    names = [k for k, v in d.items() if v]
    vals = [d[k] / UNITS[unit] for k in names]
    ax.barh(range(len(names)), vals, color=[BLOCKS[display_block(recs[k])] for k in names], height=0.75)
    top = max(vals)
    for i, v in enumerate(vals):
        ax.text(v + top * 0.01, i, f"{v:,.0f}", va="center", fontsize=7)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.15)
    ax.set_xlabel(f"{unit} saved by one layer")
    ax.set_title(f"{spec.name}, b={batch_size} s={seq_len:,} {precision} {attention_used(spec, attention)}: "
                 f"{sum(d.values()) / UNITS[unit]:,.0f} {unit} per layer", fontsize=9)
    from matplotlib.patches import Patch
    used = {display_block(recs[k]) for k in names}
    ax.legend(handles=[Patch(color=c, label=b) for b, c in BLOCKS.items() if b in used], fontsize=7,
              loc="center right")
    return ax


def logits_share(model, batch_size: int = 1, seq_len: int = 4096, attention: str = "sdpa",
                 precision: str = "bf16") -> dict:
    """Activation bytes alive when the backward starts (no recompute), in three parts:
    ``layers`` (everything saved by the decoder layers and outside them but the loss),
    ``log_softmax`` (the loss's saved fp32 ``4·T·V``) and ``backward_buffers`` (the two
    more fp32 ``T × V`` buffers the backward of the loss allocates: the log-softmax's
    gradient and the logits' gradient, ``8·T·V``)."""
    spec = load_spec(model)
    sc = Scenario(batch_size, min(seq_len, spec.max_position_embeddings), precision, attention)
    b = activation_breakdown(spec, batch_size, sc.seq_len, precision, attention)
    lsm = b["loss log-softmax (fp32)"]
    return {"layers": b.total - lsm, "log_softmax": lsm, "backward_buffers": 2 * lsm}


def plot_logits_share(models, ax, batch_size: int = 1, seq_len: int = 4096, attention: str = "sdpa",
                      precision: str = "bf16"):
    """One horizontal bar per model, in percent of the activation bytes alive when the
    backward starts: what the layers saved, the loss's fp32 log-softmax, and the backward's
    two extra fp32 ``T × V`` buffers.  The vocabulary size is annotated.  Returns ``ax``."""
    specs = [load_spec(m) for m in models]
    colors = [OTHER_COLORS["outside the layers"], OTHER_COLORS["loss log-softmax (fp32)"],
              OTHER_COLORS["backward's 2 fp32 T×V buffers"]]
    labels = ["saved by the layers (+ final norm, RoPE)", "loss: fp32 log-softmax, 4·T·V",
              "backward: 2 more fp32 T×V buffers"]
    for i, spec in enumerate(specs):
        parts = logits_share(spec, batch_size, seq_len, attention, precision)
        total = sum(parts.values())
        left = 0.0
        for j, v in enumerate(parts.values()):
            w = 100 * v / total
            ax.barh([i], [w], left=left, color=colors[j], height=0.7, label=labels[j] if i == 0 else None)
            left += w
        logit = 100 * (parts["log_softmax"] + parts["backward_buffers"]) / total
        clamp = f", s={spec.max_position_embeddings:,}" if seq_len > spec.max_position_embeddings else ""
        ran = "" if attention_used(spec, attention) == attention else f", {attention_used(spec, attention)}"
        ax.text(101, i, f"{logit:.0f}% logits (V={spec.vocab_size:,}{clamp}{ran}, {total / GiB:,.1f} GiB)",
                va="center", fontsize=8)
    ax.set_yticks(range(len(specs)))
    ax.set_yticklabels([s.name for s in specs], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 160)
    ax.set_xticks([0, 25, 50, 75, 100])
    ax.set_xlabel(f"% of the activations alive as the backward starts (b={batch_size}, s={seq_len:,}, {attention})")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.45, -0.2), ncol=3)
    return ax


def plot_recompute(model, ax, batch_size: int = 1, seq_len: int = 4096, precision: str = "bf16", unit: str = "GiB",
                   ymax: float | None = None):
    """Grouped bars on a linear axis: the activations saved by the forward (stacked by block)
    for recompute none / selective / full, with SDPA and eager attention.  ``ymax`` (in
    ``unit``) zooms in: a bar taller than it is cut at the top edge, with a zigzag and its
    total written there.  (Bars are never stacked on a log axis, where the lower segments
    would look far larger than they are.)  Returns ``ax``."""
    spec = load_spec(model)
    x = 0
    ticks, labels = [], []
    seen = set()
    for att in ATTENTIONS:
        for rec in RECOMPUTE:
            b = activation_breakdown(spec, batch_size, seq_len, precision, att, rec)
            bottom = 0.0
            for name, v in b.components.items():
                v = v / UNITS[unit]
                if v <= 0:
                    continue
                color = BLOCKS.get(name) or OTHER_COLORS[name]
                ax.bar([x], [v], bottom=bottom, color=color, width=0.7, label=None if name in seen else name)
                seen.add(name)
                bottom += v
            if ymax is not None and bottom > ymax:
                ax.plot([x - 0.35, x - 0.12, x + 0.12, x + 0.35], [ymax * 0.96, ymax * 0.99, ymax * 0.93, ymax * 0.96],
                        color="white", lw=3, clip_on=False, zorder=4)
                ax.text(x, ymax * 0.9, f"{bottom:,.0f} ↑", ha="center", va="top", fontsize=8, color="white",
                        fontweight="bold", zorder=5)
            else:
                ax.text(x, bottom, f"{bottom:,.1f}", ha="center", va="bottom", fontsize=8)
            ticks.append(x)
            labels.append(f"{rec}\n{attention_used(spec, att)}")
            x += 1
        x += 0.5
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, fontsize=8)
    if ymax is not None:
        ax.set_ylim(0, ymax)
    else:
        ax.set_ylim(0, ax.get_ylim()[1] * 1.08)
    ax.set_ylabel(f"{unit} saved by the forward")
    ax.set_title(f"{spec.name}, b={batch_size} s={seq_len:,} {precision}: recompute none / selective / full",
                 fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


def plot_prediction_errors(measured, predicted, ax, groups=None, unit: str = "GiB", title: str = ""):
    """Relative error ``(predicted - measured) / measured`` in percent against the measured
    bytes (log x), one marker per group, with the median and largest absolute error in the title.
    Returns ``ax``."""
    from ..plotting import color_for
    meas = np.asarray(measured, dtype=float)
    err = 100 * (np.asarray(predicted, dtype=float) - meas) / meas
    groups = list(groups) if groups is not None else ["points"] * len(meas)
    for j, g in enumerate(dict.fromkeys(groups)):
        idx = [i for i, x in enumerate(groups) if x == g]
        ax.plot(meas[idx] / UNITS[unit], err[idx], MARKERS[j % len(MARKERS)], ms=4, alpha=0.8, color=color_for(g),
                label=g)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    top = max(1.0, float(np.abs(err).max()) * 1.15)
    ax.set_ylim(-top, top)
    ax.set_xlabel(f"measured by the bench ({unit})")
    ax.set_ylabel("memlib error (%)")
    ax.set_title((title + ": " if title else "") + f"|error| median {np.median(np.abs(err)):.2f}%, "
                 f"max {np.abs(err).max():.2f}%", fontsize=10)
    return ax


# -- explorer -------------------------------------------------------------------------------
def activation_explorer(model="Llama-3.1-8B", batch_size: int = 1, seq_len: int = 4096, attention: str = "sdpa",
                        recompute: str = "none", precision: str = "bf16"):
    """Model × batch × sequence length × attention × recompute × precision → the activations a
    training step saves (by block, :func:`activation_breakdown`) and the step's peak, with a
    plot of the saved activations against sequence length for SDPA and eager attention.

    ``ex.result`` is the Breakdown; ``ex.set(seq_len=..., recompute=...)`` drives it headless.
    A length beyond ``max_position_embeddings`` or a batch below 1 shows a message.
    """
    import ipywidgets as w

    from .base import Explorer, model_dropdown

    controls = {
        "model": model_dropdown(model),
        "batch_size": w.IntText(value=batch_size, description="batch_size"),
        "seq_len": w.IntText(value=seq_len, description="seq_len"),
        "attention": w.Dropdown(options=list(ATTENTIONS), value=attention, description="attention"),
        "recompute": w.Dropdown(options=list(RECOMPUTE), value=recompute, description="recompute"),
        "precision": w.Dropdown(options=list(PRECISIONS), value=precision, description="precision"),
    }

    def compute(model, batch_size, seq_len, attention, recompute, precision):
        return activation_breakdown(model, batch_size, seq_len, precision, attention, recompute)

    def plot(b, ax):
        m = b.meta
        top = m["max_position_embeddings"]
        grid = np.unique(np.clip(2 ** np.arange(7, int(np.ceil(np.log2(top))) + 1), 1, top))
        plot_activations_vs_seq_len(m["spec"], grid, ax, attention=ATTENTIONS, recompute=m["recompute"],
                                    batch_size=m["batch_size"], precision=m["precision"], mark=m["seq_len"])
        ax.minorticks_off()

    return Explorer(compute, controls, plot=plot, describe=describe_activations,
                    title="Activations: what a training step saves for its backward")
