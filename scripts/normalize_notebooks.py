"""Strip what is volatile from executed notebooks so stored outputs diff cleanly.

Removes per-cell execution timestamps and the saved widget state (model ids are random);
keeps outputs and execution counts, which nbval compares.  Usage:
``python scripts/normalize_notebooks.py notebooks/*.ipynb``
"""
import json
import sys


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
    with open(path, "w") as f:
        json.dump(nb, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        normalize(p)
