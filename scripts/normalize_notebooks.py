"""Strip what is volatile from executed notebooks so stored outputs diff cleanly.

Removes per-cell execution timestamps and the saved widget state (model ids are random),
and joins consecutive stream outputs (their split depends on timing); keeps outputs and
execution counts, which nbval compares.  Usage:
``python scripts/normalize_notebooks.py notebooks/*.ipynb``
"""
import json
import sys


def coalesce_streams(outputs: list) -> list:
    """Join consecutive stdout (or stderr) outputs: how a kernel splits a stream into
    messages depends on timing, so the stored split would change from run to run."""
    out = []
    for o in outputs:
        if (o.get("output_type") == "stream" and out and out[-1].get("output_type") == "stream"
                and out[-1].get("name") == o.get("name")):
            text = "".join(out[-1]["text"]) + "".join(o["text"])
            out[-1]["text"] = text.splitlines(keepends=True)
        else:
            out.append(o)
    return out


def normalize(path: str) -> None:
    with open(path) as f:
        nb = json.load(f)
    nb.get("metadata", {}).pop("widgets", None)
    nb["metadata"]["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    li = nb["metadata"].get("language_info", {})
    li.pop("version", None)
    for cell in nb["cells"]:
        md = cell.get("metadata", {})
        md.pop("execution", None)
        md.pop("ExecuteTime", None)
        if "outputs" in cell:
            cell["outputs"] = coalesce_streams(cell["outputs"])
    with open(path, "w") as f:
        json.dump(nb, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        normalize(p)
