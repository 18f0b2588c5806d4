"""An explorer's output carries a static stand-in for renderers without a kernel.

JupyterLab draws the widget view; GitHub, nbconvert, the book and a notebook opened before
it runs show the ``image/png`` (the explorer's current figure) and read the ``text/plain``
note, never the widget's repr (``VBox(children=...``).  The browser test checks the live
side; these tests the bundle itself, headless.
"""
import base64

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

from memlib.widgets import kv_explorer  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_bundle_has_the_view_the_figure_and_a_note():
    ex = kv_explorer("Llama-3.1-8B", seq_len=8192)
    bundle = ex._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == ex.widget.model_id
    png = base64.b64decode(bundle["image/png"])
    assert png.startswith(PNG_MAGIC) and png == ex.image.value     # the figure the widget shows
    note = bundle["text/plain"]
    assert note.startswith("[Interactive explorer") and "run the notebook" in note
    assert "children=" not in note and ex.widget.model_id not in note   # no volatile repr for nbval


def test_bundle_follows_the_explorer_state():
    ex = kv_explorer("Llama-3.1-8B", seq_len=8192)
    first = ex._repr_mimebundle_()["image/png"]
    ex.set(seq_len=16384)
    assert ex._repr_mimebundle_()["image/png"] != first           # the picture of the new state
    ex.set(seq_len=-1)                                             # an invalid value: no picture, the message
    bundle = ex._repr_mimebundle_()
    assert "image/png" not in bundle
    assert "⚠ " + ex.error in bundle["text/plain"]


def test_explorer_carries_the_browser_test_hooks():
    ex = kv_explorer("Llama-3.1-8B", seq_len=8192)
    assert "memlib-explorer" in ex.widget._dom_classes
    assert "memlib-explorer-message" in ex.message._dom_classes
