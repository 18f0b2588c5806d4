"""Which library versions a number was measured with, and what to say when they differ (chapter 08).

The same checkpoint costs different bytes in different releases of transformers and torch
(transformers 5.24 keeps DeepSeek's router in fp32, say).  Every bench record stores the
versions it was measured with; the course's environment pins them
(``requirements/pins.in``).  These helpers compare the installed versions with the pinned
and the recorded ones, so a failing comparison says *why* instead of a bare assertion.
Importing this module does not import torch.
"""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

PINS = Path(__file__).resolve().parents[2] / "requirements" / "pins.in"
PACKAGES = ("torch", "transformers")


def installed_versions() -> dict:
    """``{package: version}`` of torch and transformers as installed (None when absent)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def pinned_versions() -> dict:
    """``{package: version}`` from ``requirements/pins.in`` (empty outside a source checkout)."""
    if not PINS.exists():
        return {}
    return dict(line.split("==", 1) for line in PINS.read_text().split() if "==" in line and not line.startswith("#"))


def _public(version: str | None) -> str | None:
    return version.split("+")[0] if version else version


def version_mismatch(recorded: dict | None = None) -> str | None:
    """A one-line explanation when the installed torch/transformers differ from ``recorded``
    (a bench record's versions; default: the pins), else None.  Local build labels
    (``+cpu``) are ignored: the CPU and CUDA builds of one release allocate alike."""
    want = recorded or pinned_versions()
    have = installed_versions()
    diff = [f"{p} {have.get(p)} installed, {want[p]} expected" for p in PACKAGES
            if p in want and _public(have.get(p)) != _public(want[p])]
    if not diff:
        return None
    return ("; ".join(diff) + ". The same checkpoint can cost different bytes in another release (transformers "
            "5.24 keeps DeepSeek's router in fp32, for one): install the pinned versions (`make test`, "
            "requirements/lock.txt) or re-measure the data with the installed ones.")
