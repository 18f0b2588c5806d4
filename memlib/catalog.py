"""The model catalog: real Hugging Face ``config.json`` files shipped in ``memlib/models``.

``load_config(model)`` accepts a catalog name (case-insensitive), a path to a config.json
(or to a directory holding one), or a dict, and returns ``(name, config_dict)``.  Files
are parsed as JSON data only: no remote code ever runs.  A file that cannot be read
(missing, unreadable, not UTF-8, not JSON, nested absurdly deep) gives a one-line
``ValueError`` naming the file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .validation import safe_text

MODELS_DIR = Path(__file__).resolve().parent / "models"
#: Larger files are not configs (a real config.json is a few KiB).
MAX_CONFIG_BYTES = 16 * 2**20


def catalog_names() -> list[str]:
    """Names of every model in the catalog, sorted (chapter 01)."""
    return sorted(p.stem for p in MODELS_DIR.glob("*.json"))


def _find(name: str) -> Path | None:
    want = name.lower()
    for p in MODELS_DIR.glob("*.json"):
        if p.stem.lower() == want:
            return p
    return None


def looks_like_path(text: str) -> bool:
    """True for text the user typed as a path (a separator, or a ``.json`` name); chapter 01."""
    return os.sep in text or "/" in text or text.endswith(".json") or text.startswith(".")


def _local_config(model) -> Path | None:
    """The config.json that ``model`` names on disk, or None.  OS errors (a name too long,
    no permission) become ``ValueError`` naming the path."""
    try:
        candidate = Path(model)
        if candidate.is_dir():
            candidate = candidate / "config.json"
        return candidate if candidate.is_file() else None
    except OSError as e:
        raise ValueError(f"model: cannot open {safe_text(str(model))!s}: {e.strerror or e}") from None
    except ValueError as e:   # embedded NUL bytes
        raise ValueError(f"model: {safe_text(repr(str(model)))} is not a usable path ({e})") from None


def shadowed_catalog_name(model) -> str | None:
    """If ``model`` is a catalog name that is also a local directory or file, the local path
    that was *not* read (the catalog wins for a bare name; type ``./name`` for the file); chapter 01."""
    if isinstance(model, str) and not looks_like_path(model) and _find(model) is not None:
        local = _local_config(model)
        return str(local) if local is not None else None
    return None


def _read(path: Path) -> dict:
    shown = safe_text(str(path))
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ValueError(f"model: {shown} is {size:,} bytes: too large for a config.json")
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"model: cannot read {shown}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"model: {shown} is not UTF-8 text (config.json files are UTF-8 JSON)") from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"model: {shown} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise ValueError(f"model: {shown} is nested too deeply to be a config.json") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"model: {shown} must hold a JSON object, got {type(cfg).__name__}")
    return cfg


def load_config(model) -> tuple[str, dict]:
    """Return ``(name, config_dict)`` for a catalog name, a config.json path, or a dict (chapter 01).

    A bare catalog name reads the catalog even when a directory of that name exists
    (:func:`shadowed_catalog_name` tells; type ``./gpt2`` for the directory).  A file is
    named by its path; a dict by its ``_name_or_path``, else ``"custom config"``.
    Raises ``ValueError`` for an unknown name, a missing or unreadable file, or malformed JSON.
    """
    if isinstance(model, dict):
        name = model.get("_name_or_path") or model.get("name") or "custom config"
        return safe_text(name if isinstance(name, str) else repr(name)), dict(model)
    if not isinstance(model, (str, Path)):
        raise ValueError(f"model: expected a catalog name, a path to a config.json or a dict, "
                         f"got {type(model).__name__}")
    text = str(model)
    path = _find(text) if isinstance(model, str) and not looks_like_path(text) else None
    if path is not None:
        return path.stem, _read(path)
    path = _local_config(model)
    if path is None:
        raise ValueError(f"model: {safe_text(repr(text))} is neither a catalog name nor a config.json file; "
                         f"catalog: {', '.join(catalog_names())}")
    name = path.stem if path.resolve().parent == MODELS_DIR else str(path)
    return safe_text(name), _read(path)
