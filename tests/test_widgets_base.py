"""The Explorer's drawing machinery: the PNG it encodes and the margins it keeps between updates."""
import io

import numpy as np
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

from memlib.widgets.base import png_bytes  # noqa: E402


def test_png_bytes_decodes_to_the_same_pixels():
    # Pillow's decoder (not ours) reads the PNG back: every pixel and the alpha channel as given
    from PIL import Image
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(7, 5, 4), dtype=np.uint8)
    img = Image.open(io.BytesIO(png_bytes(a)))
    assert img.mode == "RGBA" and img.size == (5, 7)
    assert np.array_equal(np.asarray(img), a)


def _inside_figure(ex):
    """Every artist of the figure (labels, tick labels, titles, legends) lies inside it."""
    fig = ex.fig
    box = fig.get_tightbbox(fig.canvas.get_renderer())       # inches
    w, h = fig.get_size_inches()
    tol = 1.0 / fig.dpi                                         # one pixel
    return box.x0 >= -tol and box.y0 >= -tol and box.x1 <= w + tol and box.y1 <= h + tol


@pytest.mark.parametrize("name, steps", [
    # the y axis' widest drawn label shrinks (0..80, then 0..250 with an off-view tick)
    ("rl_explorer", [dict(lora_rank=8), dict(recompute="none"), dict(recompute="full"), dict(lora_rank=0)]),
    # the last x tick label reaches the end of the axis (Llama-2-13b): it must not stick out
    ("weights_explorer", [dict(model="DeepSeek-V3"), dict(model="Llama-2-13b"), dict(model="Llama-3.1-8B")]),
    # two layouts taken in turn: the one kept for each must fit it
    ("measure_explorer", [dict(kind="prefill"), dict(kind="train"), dict(kind="prefill")]),
    ("kv_explorer", [dict(seq_len=1024), dict(seq_len=131072), dict(batch_size=64), dict(seq_len=128)]),
])
def test_kept_margins_never_cut_a_label(name, steps):
    from memlib import widgets
    ex = getattr(widgets, name)()
    assert _inside_figure(ex)
    for values in steps:
        assert ex.set(**values) is not None, ex.error
        assert _inside_figure(ex), (name, values)


@pytest.mark.parametrize("name, values", [("rl_explorer", dict(seq_len=1024)),
                                          ("which_gpu_explorer", dict(max_model_len=4096)),
                                          ("kv_explorer", dict(seq_len=2048))])
def test_a_pasted_legend_looks_as_drawn(name, values):
    # an update that leaves the legend alone pastes its pixels; drawing it again must agree
    from PIL import Image

    from memlib import widgets
    ex = getattr(widgets, name)()
    ex.set(**values)
    assert ex._legends.saved                       # the legend was kept ...
    pasted = np.asarray(Image.open(io.BytesIO(ex.image.value))).astype(int)
    ex._legends._key = lambda fig, leg: None       # ... now draw it as matplotlib does
    ex.update()
    drawn = np.asarray(Image.open(io.BytesIO(ex.image.value))).astype(int)
    assert pasted.shape == drawn.shape
    assert np.abs(pasted - drawn).max() <= 3       # compositing rounds by a level or two


def test_a_pasted_text_looks_as_drawn():
    # texts of every kind (rotated, translucent, coloured, bold, mathtext, two lines) drawn by
    # matplotlib, then pasted from the pixels kept on the first draw: the same figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from memlib.widgets.base import _TextPixels
    fig = Figure(figsize=(4, 3), dpi=144)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_yscale("log")
    ax.set_ylim(1, 1e5)
    ax.set_title("a title: peak 94.7 GiB", fontweight="bold")
    ax.text(0.2, 10, "rotated, translucent", rotation=33, alpha=0.5, color="#C44E52")
    ax.text(0.5, 1e3, "two\nlines", ha="center", va="center", fontsize=7)
    ax.set_xlabel("$\\alpha$ tokens")
    fig.canvas.draw()
    drawn = np.asarray(fig.canvas.buffer_rgba()).astype(int)
    texts = _TextPixels(fig.canvas.get_renderer())
    fig.canvas.draw()                               # kept ...
    fig.canvas.draw()                               # ... and pasted
    assert len(texts.saved) >= 8
    pasted = np.asarray(fig.canvas.buffer_rgba()).astype(int)
    assert np.abs(pasted - drawn).max() <= 3


def test_an_explorer_draws_plainly_when_matplotlib_internals_are_missing(monkeypatch):
    # the fast path uses private matplotlib helpers of the pinned release; with another release
    # they may be gone: the explorer must still draw, say the same, and keep working
    import memlib.widgets as W
    from PIL import Image
    from memlib.widgets import base

    ex = W.training_explorer()
    before = ex.text.value

    def gone(self):
        raise AttributeError("'XAxis' object has no attribute '_get_tick'")

    monkeypatch.setattr(base.Explorer, "_layout_signature", gone)
    ex.set(seq_len=ex.controls["seq_len"].value)
    assert ex.error is None and ex.text.value == before and not ex._fast
    assert Image.open(io.BytesIO(ex.image.value)).size[0] > 100          # a real picture
    ex.set(seq_len=2 * ex.controls["seq_len"].value)                         # and it keeps updating
    assert ex.error is None and ex.text.value != before and _inside_figure(ex)
