"""Regenerate the locks: exact versions of everything the course installs.

    python scripts/make_lock.py                # or: make lock   (both locks)
    python scripts/make_lock.py --only book    # one of them: course | book

* ``requirements/lock.txt`` (``make lab``, ``make test``): pyproject.toml's extras ``course``,
  ``measure`` and ``test`` (transitive dependencies included) under the constraints in
  ``requirements/pins.in`` (the torch and transformers versions the committed measurements
  were made with);
* ``requirements/book-lock.txt`` (``make book``, its own environment ``.venv-book``): the
  extra ``book`` (Jupyter Book 1.x) and memlib's own dependencies.  It cannot share the
  course's environment: Jupyter Book 1's myst-parser needs markdown-it-py 3, the course's
  JupyterLab stack has 4 (pip-compile finds no solution under lock.txt as constraints).

Both use pip-tools' ``pip-compile`` (installed at a fixed version into a throwaway virtual
environment), which keeps the versions already in a lock unless they no longer fit.

One normalisation follows the tool's output, and only this one: torch is written as its
public version (``torch==2.13.0``, not ``2.13.0+cpu``).  The local label names the build
(CPU or a CUDA version), which comes from the index the Makefile installs torch from, not
from the lock; ``==2.13.0`` accepts every build of that release (PEP 440).
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "lock.txt"
BOOK_LOCK = ROOT / "requirements" / "book-lock.txt"
PINS = ROOT / "requirements" / "pins.in"
PIP_TOOLS = "pip-tools==7.6.2"
# lock -> (extras, constraint files)
LOCKS = {"course": (LOCK, ["course", "measure", "test"], [PINS]),
         "book": (BOOK_LOCK, ["book"], [])}


def compile_lock(py: str, lock: Path, extras: list[str], constraints: list[Path]) -> str:
    """Run pip-compile for ``extras`` into ``lock``; return the normalised text (also written)."""
    cmd = [py, "-m", "piptools", "compile", "--quiet", "--allow-unsafe", "--strip-extras",
           "--no-emit-find-links", "--no-emit-index-url", "--no-emit-trusted-host"]
    for extra in extras:
        cmd += ["--extra", extra]
    for c in constraints:
        cmd += ["--constraint", str(c.relative_to(ROOT))]
    cmd += ["--output-file", str(lock.relative_to(ROOT)), "pyproject.toml"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    text = lock.read_text()
    text = re.sub(r"^(torch==[0-9.]+)\+[A-Za-z0-9.]+$", r"\1", text, flags=re.M)
    # pip-compile writes the command it ran, with the throwaway interpreter's module name
    text = text.replace("#    pip-compile ", "#    python scripts/make_lock.py  (pip-compile ", 1)
    text = re.sub(r"(#    python scripts/make_lock.py  \(pip-compile [^\n]*)", r"\1)", text, count=1)
    lock.write_text(text)
    return text


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Regenerate requirements/lock.txt and requirements/book-lock.txt.")
    ap.add_argument("--only", choices=sorted(LOCKS), help="regenerate one lock only")
    args = ap.parse_args(argv)
    names = [args.only] if args.only else ["course", "book"]
    with tempfile.TemporaryDirectory(prefix="memlib-lock-") as tmp:
        venv.create(tmp, with_pip=True)
        py = str(Path(tmp) / "bin" / "python")
        subprocess.run([py, "-m", "pip", "install", "-q", PIP_TOOLS], check=True)
        texts = {name: compile_lock(py, *LOCKS[name]) for name in names}
    pins = dict(line.split("==") for line in PINS.read_text().split()
                if "==" in line and not line.startswith("#"))
    for name, text in texts.items():
        locked = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", text, flags=re.M))
        lock = LOCKS[name][0]
        if name == "course":
            for pkg, version in pins.items():
                if locked.get(pkg) != version:
                    print(f"make_lock: {pkg} is {locked.get(pkg)} in the lock, pinned {version}", file=sys.stderr)
                    return 1
            print(f"wrote {lock.relative_to(ROOT)}: {len(locked)} packages "
                  + ", ".join(f"{n}=={v}" for n, v in pins.items()))
        else:
            print(f"wrote {lock.relative_to(ROOT)}: {len(locked)} packages, jupyter-book=={locked.get('jupyter-book')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
