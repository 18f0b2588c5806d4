"""Opening and saving a notebook in Jupyter changes nothing.

JupyterLab saves through Jupyter's contents manager, which writes ``nbformat.write(nb,
version=NO_CONVERT)``; on opening, it stores the kernel's ``kernelspec`` and
``language_info`` in the metadata (a difference marks the notebook modified, and autosave
then rewrites the committed file).  These tests check both without a browser:

* reading each committed notebook with nbformat and writing it back as the contents manager
  does gives the same bytes (key order, indent, line splitting, final newline, version);
* the stored ``kernelspec`` is what this environment's kernel spec says, and the stored
  ``language_info`` what a freshly started kernel reports (its Python patch version aside:
  that is the version of whoever last ran ``make notebooks``; the browser test compares it
  too, byte for byte, on the machine that runs it);
* ``scripts/normalize_notebooks.py`` (run by ``make notebooks``) leaves them unchanged:
  no execution timestamps, no saved widget state, no dead widget views.

The browser test (``make browser-test``) opens and saves each notebook in JupyterLab itself.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("jupyter_client")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _load_normalizer():
    spec = importlib.util.spec_from_file_location("normalize_notebooks", ROOT / "scripts" / "normalize_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


norm = _load_normalizer()


def _first_difference(a: str, b: str) -> str:
    for i, (x, y) in enumerate(zip(a.splitlines(), b.splitlines()), 1):
        if x != y:
            return f"line {i}: stored {x!r}, Jupyter writes {y!r}"
    return f"lengths differ: stored {len(a)} chars, Jupyter writes {len(b)}"


@pytest.fixture(scope="module")
def kernel_meta():
    """What JupyterLab would store for the course's kernel (one kernel start, ~2 s)."""
    return norm.kernel_metadata("python3")


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 5, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_contents_manager_write_is_byte_identical(path):
    text = path.read_text(encoding="utf-8")
    nb = nbformat.reads(text, as_version=nbformat.NO_CONVERT)
    written = norm.dumps(nb)
    assert written == text, f"{path.name}: a Jupyter save would rewrite it ({_first_difference(text, written)})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_metadata_is_what_the_kernel_reports(path, kernel_meta):
    md = json.loads(path.read_text(encoding="utf-8"))["metadata"]
    assert md.get("kernelspec") == kernel_meta["kernelspec"], (
        f"{path.name}: JupyterLab would replace kernelspec {md.get('kernelspec')} by {kernel_meta['kernelspec']} "
        "on opening it and mark it modified; run `make notebooks` (or scripts/normalize_notebooks.py)")
    stored, reported = dict(md.get("language_info", {})), dict(kernel_meta["language_info"])
    version = stored.pop("version", None)
    reported.pop("version")
    assert stored == reported, f"{path.name}: language_info {stored} != the kernel's {reported}"
    assert version is not None and version.count(".") == 2, (
        f"{path.name}: language_info has no Python version ({version!r}); JupyterLab adds one on opening it")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_normalizer_leaves_committed_notebooks_unchanged(path, kernel_meta):
    text = path.read_text(encoding="utf-8")
    nb = nbformat.reads(text, as_version=nbformat.NO_CONVERT)
    meta = json.loads(json.dumps(kernel_meta))
    # keep the stored Python version (see the module docstring)
    meta["language_info"]["version"] = nb.metadata.get("language_info", {}).get("version", "")
    after = norm.dumps(norm.normalize(nb, meta))
    assert after == text, f"{path.name}: `make notebooks` would change it ({_first_difference(text, after)})"


def test_normalize_strips_volatile_parts_and_dead_widget_views():
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"abc": {}}}}
    view = {"model_id": "0123abcd", "version_major": 2, "version_minor": 0}
    cell = nbformat.v4.new_code_cell("ex", metadata={"execution": {"iopub.status.idle": "2026-01-01T00:00:00Z"}})
    cell.outputs = [
        nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": view,
                                                     "text/plain": "[Interactive explorer]", "image/png": "iVBORw0KGgo="}),
        nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": view}),
        nbformat.v4.new_output("stream", name="stdout", text="12.5 GiB\n"),
    ]
    nb.cells = [cell, nbformat.v4.new_markdown_cell("# text")]
    meta = {"kernelspec": {"display_name": "K", "language": "python", "name": "k"},
            "language_info": {"name": "python", "version": "3.11.7"}}
    out = norm.normalize(nb, meta)
    assert "widgets" not in out.metadata
    assert out.metadata.kernelspec == meta["kernelspec"] and out.metadata.language_info == meta["language_info"]
    assert "execution" not in out.cells[0].metadata
    # the view is dropped; its stand-in stays; a view with nothing else goes; other outputs stay
    assert [sorted(o.get("data", {})) for o in out.cells[0].outputs] == [["image/png", "text/plain"], []]
    assert out.cells[0].outputs[1].text == "12.5 GiB\n"
    text = norm.dumps(out)
    assert text.endswith("}\n") and '\n "cells": [' in text     # indent 1, final newline
    assert norm.dumps(nbformat.reads(text, as_version=nbformat.NO_CONVERT)) == text


def test_normalize_upgrades_old_minor_versions_like_jupyterlab():
    nb = nbformat.v4.new_notebook()
    nb.nbformat_minor = 4
    nb.cells = [nbformat.v4.new_code_cell("1 + 1")]
    del nb.cells[0]["id"]
    out = norm.normalize(nb, {"kernelspec": {}, "language_info": {}})
    assert out.nbformat_minor == nbformat.v4.nbformat_minor and out.cells[0].get("id")
