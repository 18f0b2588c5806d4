"""Chapter 08 figures and explorer: the course's accuracy, and one bench point against memlib.

Three layers, as in every explorer (memlib.widgets):

1. compute: :mod:`memlib.measure.accuracy` (rows of every comparison, their summary and
   targets; :func:`~memlib.measure.accuracy.point_comparison` for one bench point);
2. plot functions that draw on matplotlib axes: :func:`plot_signed_errors` (the signed error
   of every row, by group), :func:`accuracy_figure` (predicted vs measured beside the signed
   errors: one figure per kind of comparison) and :func:`plot_point` (one point, measured
   and predicted, by component and phase);
3. the explorer :func:`measure_explorer`.

ipywidgets and matplotlib are imported only inside the functions that need them.
"""
from __future__ import annotations

from ..measure.accuracy import TARGETS, committed_points, compared, point_comparison
from ..plotting import PALETTE, color_for, plot_predicted_vs_measured
from ..units import GiB

#: Colours of the bench's parts (chapter 04's component colours; buffers grey).
PART_COLORS = {"weights": "#4C72B0", "optimizer": "#DD8452", "gradients": "#55A868",
               "activations": "#C44E52", "buffers": "#8C8C8C", "kv_cache": "#64B5CD", "transient": "#CCB974"}
PHASES = ("forward", "backward", "step")


# -- the accuracy of a kind ------------------------------------------------------------------------------
def group_colors(rows) -> dict:
    """``{group: colour}`` in the order the groups first appear: the same figure whatever was
    drawn before it (:func:`memlib.plotting.color_for` depends on history) (chapter 08)."""
    groups = dict.fromkeys(r["group"] for r in compared(rows))
    return {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}


def plot_signed_errors(rows, ax, band: float = TARGETS["max_abs"], under: float | None = TARGETS["worst_under"],
                       title: str = "", colors=None):
    """The signed error ``(predicted - measured) / measured`` of every compared row, in %, one
    line per group (``colors``: ``{group: colour}``, default :func:`group_colors`): the
    ``±band`` target shaded, the ``under`` limit dashed (None: no such limit), a cross where a
    training point's predicted peak phase is wrong.  A symmetric-log axis when an error passes
    10 %.  Returns ``ax`` (chapter 08)."""
    from matplotlib.ticker import FuncFormatter
    ok = compared(rows)
    groups = list(dict.fromkeys(r["group"] for r in ok))
    colors = colors or group_colors(rows)
    ax.axvspan(-100 * band, 100 * band, color="0.9", label=f"±{100 * band:g} % target")
    ax.axvline(0, color="k", lw=0.8)
    if under is not None:
        ax.axvline(100 * under, color="#C44E52", lw=0.9, ls="--",
                   label=f"{100 * under:+g} %: worst under-estimate allowed")
    for r in ok:
        y = groups.index(r["group"])
        wrong = r["phase"] is not None and r["phase"] != r["predicted_phase"]
        ax.plot([100 * r["error"]], [y], "x" if wrong else "o", ms=6 if wrong else 4, alpha=0.7,
                color="k" if wrong else colors[r["group"]], mec="none" if not wrong else None)
    errs = [100 * r["error"] for r in ok] or [0.0]
    lo, hi = min(min(errs), -100 * band), max(max(errs), 100 * band)
    if max(abs(lo), abs(hi)) > 10:
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(min(lo * 1.5, -4), hi * 1.5)
    else:
        pad = 0.1 * (hi - lo)
        ax.set_xlim(lo - pad, hi + pad)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
    ax.set_yticks(range(len(groups)))
    ax.set_yticklabels(groups, fontsize=8)
    ax.set_ylim(len(groups) - 0.5, -0.5)
    ax.set_xlabel("(predicted − measured) / measured, %  (negative: under-estimate)")
    ax.legend(fontsize=7, loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def accuracy_figure(rows, title: str, band: float = TARGETS["max_abs"], under: float | None = TARGETS["worst_under"],
                    measured_label: str = "measured by the bench (GiB)"):
    """One figure for one kind of comparison: predicted against measured (log-log, one colour
    per group, the ``±band`` strip) beside the signed errors (:func:`plot_signed_errors`, with
    the ``under`` limit).  ``measured_label`` is the x axis label.  Returns the figure (chapter 08)."""
    import matplotlib.pyplot as plt
    ok = compared(rows)
    n_groups = len({r["group"] for r in ok})
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, max(4.6, 0.28 * n_groups + 1.6)),
                                 gridspec_kw={"width_ratios": [1, 1.2]}, layout="constrained")
    colors = group_colors(rows)
    plot_predicted_vs_measured([r["measured"] for r in ok], [r["predicted"] for r in ok], a1,
                               groups=[r["group"] for r in ok], band=band, colors=colors)
    a1.set_xlabel(measured_label)
    a1.legend(fontsize=7, loc="upper left", ncol=2 if n_groups > 8 else 1)
    a1.set_title(f"{len(ok)} points compared, {len(rows) - len(ok)} left out", fontsize=10)
    plot_signed_errors(rows, a2, band=band, under=under, title="signed error of every point", colors=colors)
    fig.suptitle(title, fontsize=11)
    return fig


#: Per kind: the target band and the under-estimate limit drawn, and the x axis label.
KIND_STYLE = {"serving": dict(band=0.05, under=None, measured_label="printed by vLLM at start-up (GiB)")}


def kind_figure(kind: str, rows):
    """:func:`accuracy_figure` for one kind of :data:`memlib.measure.accuracy.COMPARISONS`, with
    its title, chapter and style (chapter 08 and ``scripts/validate_matrix.py`` draw the same)."""
    from ..measure.accuracy import COMPARISONS
    comp = COMPARISONS[kind]
    return accuracy_figure(rows, f"{comp.title} (chapter {comp.chapter})", **KIND_STYLE.get(kind, {}))


# -- one bench point ---------------------------------------------------------------------------------------
def plot_point(result: dict, ax, unit_name: str = "GiB"):
    """One bench point (:func:`memlib.measure.accuracy.point_comparison`): measured (left) and
    predicted (right) bars stacked by part, for each phase of a training step (a phase whose
    measured split was not stored is a hatched total) or for the prefill.  A star marks each
    side's peak phase.  Returns ``ax`` (chapter 08)."""
    scale = GiB
    groups = list(result["phase_parts"]) if result["kind"] == "train" else ["prefill"]
    parts = list(result["parts"])
    seen: dict = {}
    for i, g in enumerate(groups):
        for side, dx in ((0, -0.19), (1, 0.19)):
            if result["kind"] == "train":
                split = {k: v[side] for k, v in result["phase_parts"][g].items()}
                total = result["phases"][g][side]
            else:
                split = {k: v[side] for k, v in result["parts"].items()}
                total = result["total"][side]
            x = i + dx
            if any(v is None for v in split.values()):
                bar = ax.bar([x], [total / scale], width=0.36, color="white", edgecolor="0.4", hatch="//")
                seen.setdefault("measured total (split not stored)", bar)
            else:
                bottom = 0.0
                for k in parts:
                    v = split.get(k, 0) / scale
                    if v <= 0:
                        continue
                    bar = ax.bar([x], [v], bottom=bottom, width=0.36, color=PART_COLORS.get(k, color_for(k)))
                    seen.setdefault(k, bar)
                    bottom += v
            peak = result["peak_phase"][side] if result["kind"] == "train" else "prefill"
            ax.text(x, total / scale, ("★ " if g == peak else "") + f"{total / scale:,.2f}", ha="center",
                    va="bottom", fontsize=7)
    ax.set_xticks([i + d for i in range(len(groups)) for d in (-0.19, 0.19)])
    ax.set_xticklabels([f"{g}\n{side}" for g in groups for side in ("measured", "memlib")], fontsize=8)
    ax.set_ylabel(unit_name)
    top = max(v for pair in (result["phases"].values() if result["phases"] else [result["total"]]) for v in pair)
    ax.set_ylim(0, 1.12 * top / scale)
    m, p = result["total"]
    flag = f"  [left out: {result['excluded']}]" if result["excluded"] else ""
    ax.set_title(f"{result['label']}\npeak: memlib − bench = {p - m:+,} B ({result['error']:+.3%}){flag}", fontsize=9)
    names = [k for k in reversed(parts) if k in seen] + [k for k in seen if k not in parts]
    ax.legend([seen[k] for k in names], names, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False)
    return ax


def describe_point(result: dict) -> str:
    """The point as text: each part measured, predicted and the difference in bytes; the
    phases and where each side puts the peak; memlib's own split of the non-state bytes (chapter 08)."""
    w = 15
    lines = [result["label"] + (f"   [left out of the statistics: {result['excluded']}]" if result["excluded"] else ""),
             f"{'part':<14}{'measured':>{w}}{'memlib':>{w}}{'memlib − bench':>{w + 2}}"]
    for k, (m, p) in result["parts"].items():
        lines.append(f"{k:<14}{m:>{w},}{p:>{w},}{p - m:>+{w + 2},}")
    m, p = result["total"]
    lines.append(f"{'total':<14}{m:>{w},}{p:>{w},}{p - m:>+{w + 2},}   ({result['error']:+.4%})")
    if result["phases"]:
        lines.append("peak by phase (GiB, measured/memlib): " + ",  ".join(
            f"{ph} {a / GiB:.3f}/{b / GiB:.3f}" for ph, (a, b) in result["phases"].items()))
        mp, pp = result["peak_phase"]
        lines.append(f"peak phase: measured {mp}, memlib {pp}" + ("" if mp == pp else "   ← differ"))
    detail = {k: v for k, v in result["memlib_detail"].items()
              if k not in ("weights", "optimizer", "gradients", "kv_cache", "buffers")}
    if detail:
        lines.append("memlib's split of the rest at its peak: "
                     + ", ".join(f"{k} {v:,}" for k, v in detail.items()))
    lines.append(f"attention kernel the bench ran: {result['attention_kernel']}")
    return "\n".join(lines)


def measure_explorer(kind: str = "train", model: str = "Llama-3.1-8B", point: str | None = None):
    """Pick a committed bench point (kind, model, shape and knobs, from ``data/bench``) and see
    it measured and predicted, part by part and, for training, phase by phase (chapter 08).

    ``ex.result`` is :func:`memlib.measure.accuracy.point_comparison`'s dict.  The point
    dropdown lists the committed points of the chosen model (the default: one whose phase split
    the bench stored); a model without committed points
    (or a point label that is not committed) shows a message.  Set controls headless in the
    order kind, model, point: ``ex.set(kind="prefill", model="gemma-2-9b", point="b=1 s=2048 sdpa")``.
    """
    import ipywidgets as w

    from .base import Explorer

    data = {k: committed_points(k) for k in ("train", "prefill")}

    def model_options(k, current):
        names = list(data[k])
        return ([current] if current not in names else []) + names

    def point_options(k, m, current=None):
        labels = list(data[k].get(m, {}))
        return ([current] if current is not None and current not in labels else []) + labels

    def default_point(k, m):
        # a point whose phase split the bench stored, else the first
        pts = data[k].get(m, {})
        split = [lab for lab, rec in pts.items() if rec["measured"].get("phase_components")]
        return (split or list(pts) or [None])[0]

    kind_w = w.Dropdown(options=["train", "prefill"], value=kind, description="kind")
    model_w = w.Dropdown(options=model_options(kind, model), value=model, description="model")
    opts = point_options(kind, model, point)
    point_w = w.Dropdown(options=opts, value=point if point is not None else default_point(kind, model),
                         description="point", layout=w.Layout(width="420px"))
    holder: dict = {}

    def hold(fn):
        def run(change):
            ex = holder.get("ex")
            prev = ex._hold if ex is not None else False
            if ex is not None:
                ex._hold = True
            try:
                fn(change)
            finally:
                if ex is not None:
                    ex._hold = prev
        return run

    @hold
    def on_kind(change):
        names = list(data[kind_w.value])
        model_w.options = names
        model_w.value = model_w.value if model_w.value in names else names[0]
        on_model(None)

    @hold
    def on_model(change):
        labels = point_options(kind_w.value, model_w.value)
        keep = point_w.value if point_w.value in labels else default_point(kind_w.value, model_w.value)
        point_w.options = labels
        point_w.value = keep

    # registered before the Explorer's own observers, so the options are right when it updates
    kind_w.observe(on_kind, names="value")
    model_w.observe(on_model, names="value")

    def compute(kind, model, point):
        pts = data[kind].get(model)
        if not pts:
            raise ValueError(f"model: no committed {kind} bench point for {model!r}; models with data: "
                             f"{', '.join(data[kind])}")
        if point not in pts:
            raise ValueError(f"point: {point!r} is not a committed {kind} point of {model}; "
                             f"{len(pts)} are, e.g. {next(iter(pts))!r}")
        return point_comparison(pts[point], kind)

    ex = Explorer(compute, {"kind": kind_w, "model": model_w, "point": point_w}, plot=plot_point,
                  describe=describe_point, figsize=(9.5, 4.2),
                  title="A committed bench point: measured vs memlib, by part and phase")
    holder["ex"] = ex
    return ex
