"""Plot helpers (matplotlib is imported lazily, only when a plot is drawn).

``save_fig`` writes PNGs into ``figures/`` under stable names (the README and the book show them).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .units import UNITS

FIGURES_DIR = Path(__file__).resolve().parent.parent / "figures"

#: One stable colour per component name, so every chapter's bars agree.
PALETTE = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860",
           "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD"]
_COLOR_OF: dict[str, str] = {}


def color_for(name: str) -> str:
    """A stable colour for a component name (first come, first served)."""
    if name not in _COLOR_OF:
        _COLOR_OF[name] = PALETTE[len(_COLOR_OF) % len(PALETTE)]
    return _COLOR_OF[name]


def _plt():
    import matplotlib.pyplot as plt
    return plt


def new_ax(figsize=(7, 4)):
    """A fresh (fig, ax) pair."""
    plt = _plt()
    return plt.subplots(figsize=figsize)


def stacked_bar(breakdowns, ax=None, unit: str = "GiB", labels=None, colors=None, legend=True,
                positions=None, width: float = 0.6):
    """Draw one stacked bar per :class:`~memlib.breakdown.Breakdown` at ``positions`` (default
    0, 1, 2...), each ``width`` wide; returns ``ax``."""
    if ax is None:
        _, ax = new_ax()
    labels = labels or [b.title for b in breakdowns]
    xs = list(positions) if positions is not None else list(range(len(breakdowns)))
    names: list[str] = []
    for b in breakdowns:
        names += [k for k in b.components if k not in names]
    bottoms = [0.0] * len(breakdowns)
    for name in names:
        vals = [b.get(name, 0) / UNITS[unit] for b in breakdowns]
        if not any(vals):
            continue
        ax.bar(xs, vals, bottom=bottoms, label=name, color=(colors or {}).get(name, color_for(name)), width=width)
        bottoms = [a + v for a, v in zip(bottoms, vals)]
    for x, top in zip(xs, bottoms):
        ax.text(x, top, f"{top:,.1f}", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=0 if len(breakdowns) < 5 else 30,
                       ha="center" if len(breakdowns) < 5 else "right")
    ax.set_ylabel(unit)
    if legend:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax


def save_fig(fig, name: str, directory: Path | None = None) -> Path:
    """Save ``fig`` as ``figures/<name>.png`` (stable name, fixed dpi, no timestamp metadata)."""
    directory = Path(directory) if directory else FIGURES_DIR
    directory.mkdir(parents=True, exist_ok=True)
    stem = name[:-4] if name.endswith(".png") else name
    path = directory / f"{stem}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    return path


MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">")


def token_ticks(x, _pos=None) -> str:
    """Tick label for a token count: 512, 4K, 128K, 1M (binary multiples)."""
    if x >= 2**20 and x % 2**20 == 0:
        return f"{int(x) // 2**20}M"
    if x >= 1024 and x % 1024 == 0:
        return f"{int(x) // 1024}K"
    return f"{x:g}"


def plot_predicted_vs_measured(measured, predicted, ax, groups=None, band: float = 0.05, unit: str = "GiB",
                               title: str = "", colors=None):
    """Predicted against measured bytes (log-log), one marker colour per group (e.g. model;
    ``colors``: ``{group: colour}``, default :func:`color_for`), the diagonal and a ``±band``
    strip.  Returns ``ax``."""
    meas = np.asarray(measured, dtype=float) / UNITS[unit]
    pred = np.asarray(predicted, dtype=float) / UNITS[unit]
    groups = list(groups) if groups is not None else ["points"] * len(meas)
    lo, hi = min(meas.min(), pred.min()) * 0.8, max(meas.max(), pred.max()) * 1.25
    ax.fill_between([lo, hi], [lo * (1 - band), hi * (1 - band)], [lo * (1 + band), hi * (1 + band)],
                    color="0.88", label=f"±{band:.0%}")
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    for j, g in enumerate(dict.fromkeys(groups)):
        idx = [i for i, x in enumerate(groups) if x == g]
        ax.plot(meas[idx], pred[idx], MARKERS[j % len(MARKERS)], ms=4, alpha=0.8,
                color=(colors or {}).get(g) or color_for(g), label=g)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"measured by the bench ({unit})")
    ax.set_ylabel(f"predicted by memlib ({unit})")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    return ax
