"""Chapter 03 explorers: what a forward pass keeps, for training and for a prefill.

Three layers (DESIGN §3):

1. compute: :func:`memlib.activations.layer_saved` / :func:`~memlib.activations.model_saved`
   (the tensors autograd saves), :func:`memlib.training.train_memory` (the step's peak) and
   :func:`memlib.inference.inference_memory` (the prefill's peak), gathered here by
   :func:`activation_breakdown`;
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

from ..activations import ATTENTIONS, PRECISIONS, RECOMPUTE, Scenario, attention_used, layer_saved, model_saved
from ..breakdown import Breakdown
from ..inference import inference_memory
from ..kv_cache import check_seq_len
from ..spec import load_spec
from ..training import QUADRATIC, checkpointed_inputs, train_memory
from ..units import GiB, UNITS
from ..plotting import plot_predicted_vs_measured, token_ticks as _tokens  # noqa: F401
from ..validation import choice, positive_int

#: The four blocks a decoder layer's saved tensors are grouped into, with their colours.
BLOCKS = {"norms": "#8C8C8C", "attention": "#4C72B0", "attention S²": "#C44E52", "MLP / experts": "#55A868",
          "autocast weight copies": "#937860"}
#: Colours of the parts of the activations outside the blocks.
OTHER_COLORS = {"layer inputs (checkpoints)": "#8172B3", "outside the layers": "#CCB974",
                "loss log-softmax (fp32)": "#DD8452", "backward's 2 fp32 T×V buffers": "#F2B880"}
ATTENTION_STYLES = {"sdpa": "-", "eager": "--"}
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">")
#: Korthikanti et al. (2022): a GPT layer without its s² term saves 34·s·b·h bytes.
KORTHIKANTI = 34

_NORM_PREFIXES = ("input_norm", "post_attn_norm", "pre_mlp_norm", "post_mlp_norm", "ln_", "ln.")


def block_of(name: str) -> str:
    """The block of a :func:`~memlib.activations.layer_saved` entry: norms, attention,
    attention S² (the score-matrix tensors, :data:`memlib.training.QUADRATIC`), MLP / experts,
    or autocast weight copies (bf16 weights a layer saves under mixed precision, Falcon)."""
    if name.startswith("autocast."):
        return "autocast weight copies"
    if name in QUADRATIC:
        return "attention S²"
    if name.startswith(_NORM_PREFIXES):
        return "norms"
    if name.startswith(("mlp.", "moe.")):
        return "MLP / experts"
    return "attention"


def saved_by_block(spec, sc: Scenario) -> dict:
    """Bytes the decoder layers save, summed over all layers and grouped by :func:`block_of`."""
    out = {b: 0 for b in BLOCKS}
    for moe in spec.moe_layers:
        for name, v in layer_saved(spec, sc, moe=moe).items():
            out[block_of(name)] = out[block_of(name)] + v
    return out


# -- compute + describe (pure) --------------------------------------------------------------
def activation_breakdown(model, batch_size, seq_len, precision: str = "bf16", attention: str = "sdpa",
                         recompute: str = "none", device: str = "cuda") -> Breakdown:
    """What one training step keeps at the end of its forward pass, by block (chapter 03).

    Components (bytes over the whole model): the decoder layers' saved tensors split into
    ``norms``, ``attention``, ``attention S²`` and ``MLP / experts`` (with
    ``recompute="selective"`` the S² part is dropped; with ``"full"`` only each layer's
    input is kept: ``layer inputs (checkpoints)``), ``outside the layers`` (RoPE tables, final
    norm, labels) and ``loss log-softmax (fp32)``, ``4·T·V``.  The total equals
    ``train_memory(...).meta["activations_saved"]``.

    ``meta`` holds the step's peak from :func:`memlib.training.train_memory` (``train``, the
    Breakdown at the peak, and ``peak``, ``peak_phase``, ``peak_at``), the first layer's
    saved tensors (``per_layer``, ``per_layer_total``, ``per_layer_per_token``), the extra
    bytes one layer's recomputation brings back in the backward (``recompute_extra``, for
    scalar inputs) and the model states (``states``: weights + gradients + optimizer state).
    ``batch_size`` and ``seq_len`` may be numpy arrays (components are then arrays).
    """
    spec = load_spec(model)
    seq_len = check_seq_len(spec, seq_len)
    batch_size = positive_int("batch_size", batch_size)
    choice("recompute", recompute, RECOMPUTE)
    sc = Scenario(batch_size, seq_len, precision, attention, device)
    train = train_memory(spec, batch_size, seq_len, precision=precision, recompute=recompute,
                         attention=attention, device=device)
    blocks = saved_by_block(spec, sc)
    T, H, L = sc.tokens, spec.hidden_size, spec.num_layers
    comps: dict = {}
    if recompute == "full":
        comps["layer inputs (checkpoints)"] = L * sc.residual_bytes * T * H + checkpointed_inputs(spec, sc, recompute)
    else:
        comps.update({k: v for k, v in blocks.items() if k != "autocast weight copies" or np.any(v)})
        if recompute == "selective":
            comps["attention S²"] = 0 * blocks["attention S²"]
    ms = model_saved(spec, sc)
    loss = ms.pop("loss.log_softmax_fp32")
    other = 0
    for v in ms.values():
        other = other + v
    comps["outside the layers"] = other
    comps["loss log-softmax (fp32)"] = loss
    first = layer_saved(spec, sc, moe=spec.moe_layers[0])
    per_layer = sum(first.values())
    full = {m: sum(layer_saved(spec, sc, moe=m).values()) for m in set(spec.moe_layers)}
    if recompute == "full":
        extra = max(full[m] - sc.residual_bytes * T * H for m in full) if np.ndim(T) == 0 else None
    elif recompute == "selective":
        extra = max(sum(v for k, v in layer_saved(spec, sc, moe=m).items() if k in QUADRATIC) for m in full) \
            if np.ndim(T) == 0 else None
    else:
        extra = 0
    states = (train.meta.get("optimizer_state", 0) + 2 * count_bytes(spec, precision)
              if np.ndim(T) == 0 else None)
    meta = {"model": spec.name, "spec": spec, "batch_size": batch_size, "seq_len": seq_len, "precision": precision,
            "attention": attention_used(spec, attention), "attention_requested": attention,
            "recompute": recompute, "tokens": T, "num_layers": L, "hidden_size": H,
            "vocab_size": spec.vocab_size, "per_layer": first, "per_layer_total": per_layer,
            "per_layer_per_token": per_layer // T,
            "recompute_extra": extra, "saved_by_block": blocks, "train": train,
            "peak": train.total, "peak_phase": train.meta.get("peak_phase"),
            "peak_at": train.meta.get("peak_at"), "states": states,
            "max_position_embeddings": spec.max_position_embeddings}
    title = (f"{spec.name} activations saved by the forward, b={batch_size} s={seq_len} {precision} "
             f"{meta['attention']} recompute={recompute}")
    return Breakdown(comps, title=title, meta=meta)


def count_bytes(spec, precision: str) -> int:
    """Bytes of the parameters in the step's precision (bf16: 2, mixed: fp32 master, 4)."""
    from ..params import count_params
    return count_params(spec).total * (4 if precision == "mixed" else 2)


def describe_activations(b: Breakdown) -> str:
    """Table of an :func:`activation_breakdown` plus the layer's bytes per token and the step's peak."""
    m = b.meta
    H = m["hidden_size"]
    ppt = m["per_layer_total"] / m["tokens"]
    lines = [b.table(), "",
             f"one layer saves {m['per_layer_total']:,} B = {ppt:,.0f} B per token = {ppt / H:.1f}·h "
             f"(h = {H:,}; Korthikanti's GPT layer: {KORTHIKANTI}·h + its s² term)"]
    if m["recompute"] != "none" and m["recompute_extra"]:
        lines.append(f"recompute={m['recompute']}: the backward brings one layer's "
                     f"{m['recompute_extra'] / GiB:,.3f} GiB back at a time")
    t = m["train"]
    at_peak = {k: v for k, v in t.components.items() if v}
    parts = ", ".join(f"{k} {v / GiB:,.2f}" for k, v in at_peak.items())
    lines.append(f"training step peak: {m['peak'] / GiB:,.2f} GiB = {m['peak'] / 1e9:,.2f} GB in the "
                 f"{m['peak_phase']} ({m['peak_at']}); live then (GiB): {parts}")
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
            ref = t.meta["optimizer_state"] + 2 * count_bytes(spec, precision)
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
        for name, v in layer_saved(spec, sc, moe=spec.moe_layers[-1]).items():
            per_block[block_of(name)] += v
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
    used = {block_of(k) for spec in specs for k in layer_saved(spec, Scenario(batch_size, 1, precision, attention))}
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
    """One horizontal bar per tensor one decoder layer saves (:func:`layer_saved`), coloured
    by block, in ``unit``.  Returns ``ax``."""
    spec = load_spec(model)
    sc = Scenario(batch_size, seq_len, precision, attention)
    d = layer_saved(spec, sc, moe=spec.moe_layers[0] if moe is None else moe)
    names = [k for k, v in d.items() if v]
    vals = [d[k] / UNITS[unit] for k in names]
    ax.barh(range(len(names)), vals, color=[BLOCKS[block_of(k)] for k in names], height=0.75)
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
    used = {block_of(k) for k in names}
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
                   log: bool = False):
    """Grouped bars: the activations saved by the forward (stacked by block) for recompute
    none / selective / full, with SDPA and eager attention; ``log=True`` for a log y axis
    (the smallest segment stays visible).  Returns ``ax``."""
    spec = load_spec(model)
    x = 0
    ticks, labels = [], []
    seen = set()
    smallest = float("inf")
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
            ax.text(x, bottom, f"{bottom:,.1f}", ha="center", va="bottom", fontsize=8)
            smallest = min([v / UNITS[unit] for v in b.components.values() if v > 0] + [smallest])
            ticks.append(x)
            labels.append(f"{rec}\n{attention_used(spec, att)}")
            x += 1
        x += 0.5
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, fontsize=8)
    if log:
        ax.set_yscale("log")
        ax.set_ylim(bottom=smallest / 2)
    ax.set_ylabel(f"{unit} saved by the forward")
    ax.set_title(f"{spec.name}, b={batch_size} s={seq_len:,} {precision}: recompute none / selective / full",
                 fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax


def plot_prediction_errors(measured, predicted, ax, groups=None, unit: str = "GiB", title: str = ""):
    """Relative error ``(predicted - measured) / measured`` in percent against the measured
    bytes (log x), one marker per group, with the median and max |error| in the title.
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
