"""Chapter 06 explorer and figures: an RL iteration on one GPU, by phase and by role.

Three layers (model and view apart, as in every explorer):

1. compute: :func:`memlib.rl.rl_memory`; :func:`explore_rl` maps the explorer's controls
   onto it (knobs a recipe does not use are left out rather than refused);
2. plot functions that draw on a matplotlib ``ax``: :func:`plot_phases` (one stacked bar
   per phase, by role: the iteration as a timeline of one GPU's memory) and
   :func:`plot_recipes` (one stacked bar per recipe at its peak, by role);
3. the explorer :func:`rl_explorer`.

ipywidgets and matplotlib are imported only inside the functions that need them.
"""
from __future__ import annotations

from ..breakdown import Breakdown
from ..hardware import get_gpu, gpu_names
from ..rl import RECIPES, ROLES, rl_memory
from ..rl.engine import SLEEP_MODES
from ..rl.recipes import get_recipe
from ..scenario import RECOMPUTE
from ..units import GB, UNITS, GiB

#: One colour per role, the same in every chapter 06 figure.
ROLE_COLORS = {"policy": "#4C72B0", "reference": "#DD8452", "reward": "#55A868", "critic": "#C44E52",
               "rollout": "#8172B3"}
PHASE_LABELS = {"generate": "generate", "score": "score", "train.forward": "train:\nforward",
                "train.backward": "train:\nbackward", "train.step": "train:\nstep"}
ROLLOUT_OPTIONS = [("the policy generates (transformers)", "hf"), ("colocated vLLM engine", "vllm"),
                   ("on other GPUs", "separate")]
LORA_OPTIONS = [("full fine-tune", 0), ("LoRA r=8", 8), ("LoRA r=16", 16), ("LoRA r=64", 64)]


# -- compute ---------------------------------------------------------------------------------
def explore_rl(model, recipe: str = "grpo", batch_size: int = 1, seq_len: int = 2048, group_size: int = 8,
               beta: float = 0.04, lora_rank: int = 0, precision: str = "bf16", recompute: str = "none",
               rollout: str = "hf", sleep: str = "none", gpu_memory_utilization: float = 0.3,
               gpu: str = "H100-80GB") -> Breakdown:
    """:func:`memlib.rl.rl_memory` for the explorer's controls (chapter 06): the group size
    only for recipes with groups, ``beta`` not for SFT, the rollout, sleep mode and
    utilisation only for recipes that generate; ``lora_rank=0`` is a full fine-tune.
    ``meta["gpu"]`` and ``meta["gpu_memory"]`` name the GPU the result is drawn against."""
    rec = get_recipe(recipe)
    kw = {}
    if rec.groups:
        kw["group_size"] = group_size
    if rec.name != "sft":
        kw["beta"] = beta
    if rec.generates:
        kw.update(rollout=rollout, sleep=sleep, gpu_memory_utilization=gpu_memory_utilization, gpu=gpu)
    r = rl_memory(model, recipe, batch_size, seq_len, precision=precision, lora_rank=lora_rank or None,
                  recompute=recompute, **kw)
    return Breakdown(r.components, title=r.title, kinds=r.kinds, phases=r.phases, peak_phase=r.peak_phase,
                     peak_at=r.peak_at, phase_components=r.phase_components, children=r.children,
                     meta={**r.meta, "gpu_name": get_gpu(gpu).name, "gpu_memory": get_gpu(gpu).usable_bytes})


def describe_rl(r: Breakdown) -> str:
    """The peak's components, each role at each phase's peak, and whether it fits the GPU (chapter 06)."""
    m = r.meta
    at_peak = Breakdown(r.components, title=r.title, kinds=r.kinds)
    lines = [at_peak.table(), "", "by role (GiB) at each phase's peak:"]
    head = f"{'role':<11}" + "".join(f"{p:>16}" for p in r.phases)
    lines += [head, "-" * len(head)]
    for c in r.children:
        lines.append(f"{c.label:<11}" + "".join(f"{c.at(p) / GiB:>16.2f}" for p in r.phases))
    lines.append(f"{'total':<11}" + "".join(f"{v / GiB:>16.2f}" for v in r.phases.values()))
    lines.append(f"\n{m['sequences']} sequences of {m['seq_len']} tokens; reference: {m['reference']}; "
                 f"peak {r.total / GiB:,.2f} GiB = {r.total / GB:,.2f} GB in {r.peak_phase} ({r.peak_at})")
    if m.get("rollout") == "vllm":
        lines.append(f"colocated engine: KV pool {m['kv_cache'] / GiB:,.2f} GiB for a rollout that needs "
                     f"{m['kv_needed'] / GiB:,.2f} GiB" + ("" if m["fits_rollout"] else
                                                           " (it runs fewer sequences at once)"))
    if "gpu_memory" in m:
        g = m["gpu_memory"]
        verdict = (f"fits on one {m['gpu_name']} ({g / GiB:,.2f} GiB): {(g - r.total) / GiB:,.2f} GiB to spare"
                   if r.total <= g else
                   f"does NOT fit on one {m['gpu_name']} ({g / GiB:,.2f} GiB): {(r.total - g) / GiB:,.2f} GiB short")
        lines.append(verdict + " (before the CUDA context and the allocator's slack, chapter 07)")
    return "\n".join(lines)


# -- plot functions --------------------------------------------------------------------------
_LABEL_BOX = {"facecolor": "white", "edgecolor": "none", "pad": 0.6, "alpha": 0.85}


def _gpu_line(ax, gpu_memory, gpu_name, unit, top):
    """The GPU's memory as a dashed line, named in the legend; returns the y the axis must reach."""
    if not gpu_memory:
        return top
    g = gpu_memory / UNITS[unit]
    ax.axhline(g, color="k", ls="--", lw=1, zorder=1, label=f"one {gpu_name or 'GPU'}: {g:,.1f} {unit}")
    return max(top, g)


def plot_phases(r: Breakdown, ax, gpu_memory: int | None = None, gpu_name: str | None = None,
                unit: str = "GiB", legend: bool = True):
    """The iteration as a timeline of one GPU's memory (chapter 06): one bar per phase at that phase's
    peak, stacked by role; the peak phase's total in bold; the GPU's memory as a dashed
    line (``gpu_memory`` defaults to ``r.meta["gpu_memory"]``).  Returns ``ax``."""
    gpu_memory = gpu_memory if gpu_memory is not None else r.meta.get("gpu_memory")
    gpu_name = gpu_name or r.meta.get("gpu_name")
    phases = list(r.phases)
    xs = range(len(phases))
    bottom = [0.0] * len(phases)
    for c in r.children:
        vals = [c.at(ph) / UNITS[unit] for ph in phases]
        if any(vals):
            ax.bar(xs, vals, bottom=bottom, width=0.65, color=ROLE_COLORS[c.label], label=c.label)
            bottom = [a + b for a, b in zip(bottom, vals)]
    for x, ph, top in zip(xs, phases, bottom):
        ax.text(x, top, f"{top:,.1f}", ha="center", va="bottom", fontsize=8, bbox=_LABEL_BOX,
                fontweight="bold" if ph == r.peak_phase else "normal")
    top = _gpu_line(ax, gpu_memory, gpu_name, unit, max(bottom))
    ax.set_ylim(0, top * 1.15)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([PHASE_LABELS.get(p, p) for p in phases], fontsize=8)
    ax.set_ylabel(f"{unit} at the phase's peak")
    ax.set_title(r.title, fontsize=9)
    if legend:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return ax


def plot_recipes(results: dict, ax, gpu_memory: int | None = None, gpu_name: str | None = None,
                 unit: str = "GiB", legend: bool = True):
    """One bar per recipe (chapter 06; ``results``: ``{label: rl_memory result}``) at its peak, stacked by
    role, with the phase where it peaks under the total; the GPU's memory as a dashed
    line.  Returns ``ax``."""
    labels = list(results)
    xs = range(len(labels))
    bottom = [0.0] * len(labels)
    for role in ROLES:
        vals = []
        for lab in labels:
            r = results[lab]
            part = next((c for c in r.children if c.label == role), None)
            vals.append(part.at(r.peak_phase) / UNITS[unit] if part is not None else 0.0)
        if any(vals):
            ax.bar(xs, vals, bottom=bottom, width=0.65, color=ROLE_COLORS[role], label=role)
            bottom = [a + b for a, b in zip(bottom, vals)]
    for x, lab, top in zip(xs, labels, bottom):
        ph = results[lab].peak_phase.replace("train.", "")
        ax.text(x, top, f"{top:,.0f}\n({ph})", ha="center", va="bottom", fontsize=7, bbox=_LABEL_BOX)
    top = _gpu_line(ax, gpu_memory, gpu_name, unit, max(bottom))
    ax.set_ylim(0, top * 1.2)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=8, rotation=25, ha="right")
    ax.set_ylabel(f"peak ({unit})")
    if legend:
        ax.legend(fontsize=7, loc="upper left", frameon=False, ncol=2)
    return ax


# -- explorer --------------------------------------------------------------------------------
def rl_explorer(model="Qwen3-8B", recipe: str = "grpo", batch_size: int = 1, seq_len: int = 2048,
                group_size: int = 8, beta: float = 0.04, lora_rank: int = 16, precision: str = "bf16",
                recompute: str = "full", rollout: str = "vllm", sleep: str = "all",
                gpu_memory_utilization: float = 0.3, gpu: str = "H100-80GB"):
    """Recipe × model × G × β × LoRA × precision × recompute × rollout placement × sleep mode → one RL
    iteration's memory on one GPU, phase by phase and role by role (chapter 06).

    ``ex.result`` is :func:`explore_rl`'s Breakdown (``phases``, ``peak_phase``, ``children``
    = the roles).  An invalid combination (a batch below 1, a context beyond the model's,
    LoRA with mixed precision, a utilisation that leaves the engine no KV cache) shows a
    message instead.
    """
    import ipywidgets as w

    from .base import Explorer, model_dropdown

    controls = {
        "recipe": w.Dropdown(options=list(RECIPES), value=recipe, description="recipe"),
        "model": model_dropdown(model),
        "batch_size": w.IntText(value=batch_size, description="batch b"),
        "seq_len": w.IntText(value=seq_len, description="seq_len S"),
        "group_size": w.IntText(value=group_size, description="group G"),
        "beta": w.FloatText(value=beta, description="beta", step=0.01),
        "lora_rank": w.Dropdown(options=LORA_OPTIONS, value=lora_rank, description="policy"),
        "precision": w.Dropdown(options=["bf16", "mixed"], value=precision, description="precision"),
        "recompute": w.Dropdown(options=list(RECOMPUTE), value=recompute, description="recompute"),
        "rollout": w.Dropdown(options=ROLLOUT_OPTIONS, value=rollout, description="rollout"),
        "sleep": w.Dropdown(options=list(SLEEP_MODES), value=sleep, description="engine sleep"),
        "gpu_memory_utilization": w.FloatText(value=gpu_memory_utilization, description="vLLM share", step=0.05),
        "gpu": w.Dropdown(options=gpu_names(), value=gpu, description="GPU"),
    }

    def plot(r, ax):
        plot_phases(r, ax)

    return Explorer(explore_rl, controls, plot=plot, describe=describe_rl, figsize=(8, 3.6),
                    title="One RL iteration on one GPU: phases and roles")
