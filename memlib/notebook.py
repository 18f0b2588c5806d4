"""One-line notebook setup: ``from memlib.notebook import setup_notebook; setup_notebook()``."""
from __future__ import annotations


def setup_notebook(dpi: int = 90):
    """Make figures PNG (not SVG, which nbval would compare as text), at a fixed size,
    and print numpy without noise.  Returns the ``memlib`` module for convenience."""
    import matplotlib
    import numpy as np

    import memlib
    try:
        from IPython import get_ipython
        ip = get_ipython()
        if ip is not None:       # figures inline, whatever MPLBACKEND says
            ip.run_line_magic("matplotlib", "inline")
        from matplotlib_inline.backend_inline import set_matplotlib_formats
        set_matplotlib_formats("png")
    except Exception:  # pragma: no cover - outside IPython
        pass
    matplotlib.rcParams.update({"figure.dpi": dpi, "figure.figsize": (7, 4), "axes.grid": True,
                                "grid.alpha": 0.3, "svg.hashsalt": "memlib"})
    np.set_printoptions(linewidth=100)
    return memlib
