"""Regenerate ``requirements/lock.txt``: exact versions of everything the course installs.

    python scripts/make_lock.py          # or: make lock

Resolves pyproject.toml's extras ``course``, ``measure`` and ``test`` (transitive
dependencies included) under the constraints in ``requirements/pins.in`` (the torch and
transformers versions the committed measurements were made with), using pip-tools'
``pip-compile`` (installed at a fixed version into a throwaway virtual environment).

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
PINS = ROOT / "requirements" / "pins.in"
PIP_TOOLS = "pip-tools==7.6.2"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="memlib-lock-") as tmp:
        venv.create(tmp, with_pip=True)
        py = str(Path(tmp) / "bin" / "python")
        subprocess.run([py, "-m", "pip", "install", "-q", PIP_TOOLS], check=True)
        cmd = [py, "-m", "piptools", "compile", "--quiet", "--allow-unsafe", "--strip-extras",
               "--no-emit-find-links", "--no-emit-index-url", "--no-emit-trusted-host",
               "--extra", "course", "--extra", "measure", "--extra", "test",
               "--constraint", str(PINS.relative_to(ROOT)),
               "--output-file", str(LOCK.relative_to(ROOT)), "pyproject.toml"]
        subprocess.run(cmd, check=True, cwd=ROOT)
    text = LOCK.read_text()
    text = re.sub(r"^(torch==[0-9.]+)\+[A-Za-z0-9.]+$", r"\1", text, flags=re.M)
    # pip-compile writes the command it ran, with the throwaway interpreter's module name
    text = text.replace("#    pip-compile ", "#    python scripts/make_lock.py  (pip-compile ", 1)
    text = re.sub(r"(#    python scripts/make_lock.py  \(pip-compile [^\n]*)", r"\1)", text, count=1)
    LOCK.write_text(text)
    pins = dict(line.split("==") for line in PINS.read_text().split()
                if "==" in line and not line.startswith("#"))
    locked = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", text, flags=re.M))
    for name, version in pins.items():
        if locked.get(name) != version:
            print(f"make_lock: {name} is {locked.get(name)} in the lock, pinned {version}", file=sys.stderr)
            return 1
    print(f"wrote {LOCK.relative_to(ROOT)}: {len(locked)} packages "
          + ", ".join(f"{n}=={v}" for n, v in pins.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
