"""Chapter 07 explorers and figures: vLLM's per-GPU budget, which GPUs fit, and the logs.

Three layers, as in every explorer (memlib.widgets):

1. compute: :func:`memlib.vllm.vllm_budget`, :func:`memlib.vllm.which_gpus` and
   :func:`memlib.measure.vllm_logs.predict_vllm_log`;
2. plot functions that draw on a matplotlib ``ax``: :func:`plot_gpu_budgets` (one stacked
   bar per card), :func:`plot_logged_vs_predicted` (KV tokens over every stored log) and
   :func:`plot_log_errors` (the KV error of every log);
3. the explorer :func:`which_gpu_explorer`.
"""
from __future__ import annotations

from ..breakdown import Breakdown
from ..serving import QUANTIZATIONS
from ..units import GiB
from ..vllm import which_gpus

#: The order and colours of a budget's parts on the stacked bars.
BUDGET_PARTS = {"weights": "#4C72B0", "lora_slots": "#64B5CD", "draft_weights": "#8172B3",
                "activation_peak": "#DD8452", "non_torch": "#937860", "cuda_context": "#B07AA1",
                "cuda_graphs": "#DA8BC3", "kv_cache: your requests": "#55A868",
                "kv_cache: spare": "#A6D8A8", "unallocated": "#CCCCCC",
                "cuda_context (outside budget)": "#B07AA1", "cuda_graphs (outside budget)": "#DA8BC3"}
#: Quantisations offered by the explorer (None: the checkpoint's dtype).
QUANT_OPTIONS = [("bf16", None)] + [(q, q) for q in QUANTIZATIONS if q]


def budget_parts(b: Breakdown) -> dict:
    """The bytes of one :func:`memlib.vllm.vllm_budget` result as drawn: its components, the
    KV cache split into what ``meta["concurrency"]`` requests use and the spare, and the
    memory vLLM uses on top of the budget (``meta["outside_budget"]``)."""
    m = b.meta
    parts = {k: v for k, v in b.components.items() if k != "kv_cache"}
    need = min(m.get("concurrency", 0) * m["kv_needed_bytes"], b["kv_cache"])
    parts["kv_cache: your requests"] = need
    parts["kv_cache: spare"] = b["kv_cache"] - need
    parts["unallocated"] = parts.pop("unallocated")
    for k, v in m["outside_budget"].items():
        parts[f"{k} (outside budget)"] = v
    return {k: parts[k] for k in BUDGET_PARTS if k in parts}


def plot_gpu_budgets(results: dict, ax, unit_name: str = "GiB"):
    """One horizontal stacked bar per GPU: the per-GPU budget of the smallest count of that
    card that serves the requests (``×N`` on the label), or "does not fit" (``results`` from
    :func:`memlib.vllm.which_gpus`).  A tick marks ``utilisation × total``; the bar ends at
    what the process uses.  Returns ``ax``."""
    names = list(results)
    segments = {part: ([], [], []) for part in BUDGET_PARTS}     # part -> rows, lefts, widths
    ticks = ([], [], [])                                          # rows, budgets, totals
    for i, name in enumerate(names):
        b = results[name]
        if b is None:
            ax.text(0.5, i, "does not fit on 8", va="center", fontsize=8, color="0.4")
            continue
        left = 0.0
        for part, v in budget_parts(b).items():
            if v > 0:
                for lst, x in zip(segments[part], (i, left, v / GiB)):
                    lst.append(x)
                left += v / GiB
        for lst, x in zip(ticks, (i, b.meta["budget"] / GiB, b.meta["total_gpu_memory"] / GiB)):
            lst.append(x)
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch
    handles = []
    for part, (rows, lefts, widths) in segments.items():     # one artist per part: fast to redraw
        if rows:
            style = dict(facecolor=BUDGET_PARTS[part], hatch="//" if "outside" in part else None,
                         edgecolor="white", lw=0.3)
            ax.add_collection(PolyCollection(
                [[(x, r - 0.35), (x + w, r - 0.35), (x + w, r + 0.35), (x, r + 0.35)]
                 for r, x, w in zip(rows, lefts, widths)], **style))
            handles.append(Patch(label=part, **style))
    rows, budgets, totals = ticks
    if rows:
        ax.vlines(budgets, [r - 0.42 for r in rows], [r + 0.42 for r in rows], color="k", lw=1)
        ax.vlines(totals, [r - 0.42 for r in rows], [r + 0.42 for r in rows], color="k", lw=1, linestyles=":")
    labels = [f"{n} ×{results[n].meta['gpus']}" if results[n] is not None else n for n in names]
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_ylim(len(names) - 0.5, -0.5)                      # first GPU on top
    ax.set_xlim(0, 1.03 * max(totals + [1.0]))
    ax.set_xlabel(f"{unit_name} per GPU (solid tick: utilisation × total; dotted: the runtime total)")
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return ax


def plot_logged_vs_predicted(predictions, ax, band: float = 0.05):
    """memlib's KV-cache tokens against what every stored vLLM log printed (blocks of 16 count
    as tokens), log-log, with a ±``band`` strip (:func:`memlib.plotting.plot_predicted_vs_measured`),
    one colour for the logs whose inputs are fully known and one for the others.
    ``predictions`` are ``(predict_vllm_log result, fully_known)`` pairs; logs that printed only
    GiB, or have no end-to-end prediction, are left out.  Returns ``ax``."""
    from ..measure.vllm_logs import kv_pair
    from ..plotting import plot_predicted_vs_measured
    pts = []
    for p, fully in predictions:
        key, pv, lv = kv_pair(p)
        if key in ("kv_cache_tokens", "num_blocks"):
            scale = 16 if key == "num_blocks" else 1          # V0 prints blocks of 16 tokens
            pts.append((lv * scale, pv * scale, "inputs fully known" if fully else "inputs partly assumed",
                        p["id"][:2]))
    plot_predicted_vs_measured([t[0] for t in pts], [t[1] for t in pts], ax, groups=[t[2] for t in pts],
                               band=band, unit="B")
    for lv, pv, _, tag in pts:
        ax.annotate(tag, (lv, pv), textcoords="offset points", xytext=(4, -3), fontsize=7)
    ax.set_xlabel("KV-cache tokens vLLM printed at start-up")
    ax.set_ylabel("KV-cache tokens memlib predicts")
    return ax


def plot_log_errors(predictions, ax, band: float = 0.05):
    """The error of memlib's end-to-end KV-cache prediction for every stored log that has one,
    ``(predicted − logged) / logged`` in %, of the most specific number printed (tokens, else
    blocks, else GiB), with the ±``band`` target; fully known logs are circles, the others
    squares (the colours of :func:`plot_logged_vs_predicted`).
    ``predictions`` are ``(predict_vllm_log result, fully_known)`` pairs.  Returns ``ax``."""
    from ..measure.vllm_logs import kv_pair, relative_error
    rows = [(p["id"], relative_error(*kv_pair(p)[1:]), fully) for p, fully in predictions
            if kv_pair(p)[0] is not None]
    ax.axvspan(-100 * band, 100 * band, color="0.88", label=f"±{band:.0%} target")
    ax.axvline(0, color="k", lw=0.8)
    from ..plotting import color_for
    for i, (rid, err, fully) in enumerate(rows):
        ax.plot([100 * err], [i], "o" if fully else "s", ms=5,
                color=color_for("inputs fully known" if fully else "inputs partly assumed"))
    errs = [100 * r[1] for r in rows]
    ax.set_xlim(min(-10.0, min(errs) - 3), max(errs) + 5)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r[0][:34] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("KV cache: (predicted − logged) / logged, %")
    ax.legend(fontsize=8, loc="upper right")
    return ax


def describe_gpus(results: dict) -> str:
    """One line per GPU: how many serve the requests, and each one's KV pool."""
    first = next((b for b in results.values() if b is not None), None)
    lines = []
    if first is not None:
        m = first.meta
        lines.append(f"{m['model']}: {m['concurrency']} requests of {m['max_model_len']:,} tokens, "
                     f"{m['quantization'] or m['dtype']} weights, {m['kv_dtype']} KV, vLLM {m['vllm_version']}")
    for name, b in results.items():
        if b is None:
            lines.append(f"  {name:<10} does not fit on 8 GPUs")
            continue
        m = b.meta
        lines.append(f"  {name:<10} x{m['gpus']}: weights {b['weights'] / GiB:6.2f} GiB/GPU, KV pool "
                     f"{m['kv_cache_tokens']:>9,} tokens, {m['max_concurrency']:7.2f} requests at full length")
    return "\n".join(lines)


def which_gpu_explorer(model="Llama-3.1-70B", max_model_len: int = 8192, concurrency: int = 16,
                       quantization=None, kv_dtype: str = "auto", vllm_version: str = "0.19"):
    """Model × context × concurrent requests × quantisation × KV dtype → which cards serve
    them, how many of each, and each card's per-GPU budget as a stacked bar (chapter 07).

    ``ex.result`` is :func:`memlib.vllm.which_gpus`'s ``{gpu: Breakdown | None}``.  A
    context beyond the model's, or a count below 1, shows a message."""
    import ipywidgets as w

    from .base import Explorer, model_dropdown

    controls = {
        "model": model_dropdown(model),
        "max_model_len": w.IntText(value=max_model_len, description="context"),
        "concurrency": w.IntText(value=concurrency, description="requests"),
        "quantization": w.Dropdown(options=QUANT_OPTIONS, value=quantization, description="weights"),
        "kv_dtype": w.Dropdown(options=["auto", "fp8"], value=kv_dtype, description="KV dtype"),
    }

    def compute(model, max_model_len, concurrency, quantization, kv_dtype):
        from ..scenario import check_seq_len
        from ..spec import load_spec
        check_seq_len(load_spec(model), max_model_len, "max_model_len")
        return which_gpus(model, max_model_len, concurrency, quantization, kv_dtype, vllm_version=vllm_version)

    return Explorer(compute, controls, plot=plot_gpu_budgets, describe=describe_gpus, figsize=(10, 5.2),
                    title="Which GPU? The smallest count of each card that serves your requests (vLLM)")
