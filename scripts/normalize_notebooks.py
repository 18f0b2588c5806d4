"""Normalise executed notebooks: stable diffs, and byte-identical to what JupyterLab saves.

    python scripts/normalize_notebooks.py notebooks/*.ipynb      # run by `make notebooks`
    python scripts/normalize_notebooks.py --check notebooks/*.ipynb   # exit 1 if one would change

What it does to each notebook:

* drops what is volatile: per-cell execution timestamps and the saved widget state
  (``metadata.widgets``: random model ids), and joins consecutive stream outputs (how a
  kernel splits a stream into messages depends on timing);
* drops the widget *views* from outputs (``application/vnd.jupyter.widget-view+json``):
  without the saved state their model is gone once the kernel stops, so JupyterLab would
  show "Error displaying widget" where the output's static stand-in (an explorer's figure
  as ``image/png`` and a ``text/plain`` note, see ``memlib.widgets.base.Explorer``) reads
  well; a kernel that runs the cell brings the live view back;
* stores the metadata JupyterLab writes when it opens a notebook, so opening one does not
  mark it modified and saving it changes nothing: ``kernelspec`` as the kernel spec of
  this environment describes it (name, display name, language) and ``language_info`` as the
  kernel reports it in its ``kernel_info`` reply (this needs one kernel start, ~2 s;
  ``language_info.version`` is the Python of the environment that ran this);
* writes the file as Jupyter's contents manager does (``nbformat.write``: keys sorted,
  indent 1, multi-line strings split into lines, non-ASCII kept, a final newline), so the
  bytes are those of a JupyterLab save.  Notebooks older than nbformat 4.5 are upgraded
  (cell ids), as JupyterLab does on save.

tests/test_notebook_roundtrip.py checks the committed notebooks against this; the
browser test (make browser-test) opens and saves each one in JupyterLab and compares bytes.
"""
from __future__ import annotations

import argparse
import sys

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def kernel_metadata(kernel_name: str = "python3", timeout: float = 60) -> dict:
    """``{"kernelspec": ..., "language_info": ...}`` as JupyterLab would store them for
    ``kernel_name`` in this environment: the spec's name, display name and language, and
    the ``language_info`` of a ``kernel_info`` reply from a freshly started kernel."""
    import tempfile

    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec = KernelSpecManager().get_kernel_spec(kernel_name)
    with tempfile.TemporaryDirectory(prefix="memlib-kernel-") as tmp:
        # local sockets in a private folder (a TCP kernel warns that it is unencrypted)
        km = KernelManager(kernel_name=kernel_name, transport="ipc", ip=f"{tmp}/kernel")
        km.start_kernel()
        kc = km.client()
        try:
            kc.start_channels()
            kc.wait_for_ready(timeout=timeout)
            msg_id = kc.kernel_info()
            while True:
                reply = kc.get_shell_msg(timeout=timeout)
                if reply["parent_header"].get("msg_id") == msg_id:
                    break
            language_info = reply["content"]["language_info"]
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    return {"kernelspec": {"display_name": spec.display_name, "language": spec.language, "name": kernel_name},
            "language_info": language_info}


def coalesce_streams(outputs: list) -> list:
    """Join consecutive stdout (or stderr) outputs: how a kernel splits a stream into
    messages depends on timing, so the stored split would change from run to run."""
    import nbformat

    out = []
    for o in outputs:
        if (o.get("output_type") == "stream" and out and out[-1].get("output_type") == "stream"
                and out[-1].get("name") == o.get("name")):
            out[-1] = nbformat.from_dict({**out[-1], "text": "".join(out[-1]["text"]) + "".join(o["text"])})
        else:
            out.append(o)
    return out


def normalize(nb, meta: dict):
    """Return ``nb`` (a NotebookNode, changed in place) normalised with ``meta`` from
    :func:`kernel_metadata`."""
    import nbformat

    if nb.nbformat == 4 and nb.nbformat_minor < nbformat.v4.nbformat_minor:
        nb = nbformat.v4.upgrade(nb, from_version=4, from_minor=nb.nbformat_minor)
    nb.metadata.pop("widgets", None)
    nb.metadata["kernelspec"] = nbformat.from_dict(meta["kernelspec"])
    nb.metadata["language_info"] = nbformat.from_dict(meta["language_info"])
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)
        if cell.cell_type != "code":
            continue
        kept = []
        for out in coalesce_streams(cell.outputs):
            data = out.get("data")
            if data is not None and WIDGET_VIEW in data:
                data.pop(WIDGET_VIEW)
                if not data:
                    continue
            kept.append(out)
        cell.outputs = kept
    return nb


def dumps(nb) -> str:
    """The text ``nbformat.write`` (Jupyter's contents manager) writes for ``nb``."""
    import nbformat

    s = nbformat.writes(nb, version=nbformat.NO_CONVERT)
    return s if s.endswith("\n") else s + "\n"


def main(argv=None) -> int:
    import nbformat

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="+")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook would change")
    ap.add_argument("--kernel", default=None, help="kernel name (default: each notebook's own, else python3)")
    args = ap.parse_args(argv)
    metas: dict[str, dict] = {}
    changed = []
    for path in args.notebooks:
        with open(path, encoding="utf-8") as f:
            before = f.read()
        nb = nbformat.reads(before, as_version=nbformat.NO_CONVERT)
        name = args.kernel or nb.metadata.get("kernelspec", {}).get("name") or "python3"
        if name not in metas:
            metas[name] = kernel_metadata(name)
        after = dumps(normalize(nb, metas[name]))
        if after != before:
            changed.append(path)
            if not args.check:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(after)
    verb = "would change" if args.check else "normalised"
    print(f"{verb} {len(changed)} of {len(args.notebooks)} notebooks" + (": " + " ".join(changed) if changed else ""))
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
