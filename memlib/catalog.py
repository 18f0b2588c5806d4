"""The model catalog: real Hugging Face ``config.json`` files shipped in ``memlib/models``.

``load_config(model)`` accepts a catalog name (case-insensitive), a path to a
config.json, or a dict, and returns the raw config dict.  Files are parsed as JSON
data only: no remote code ever runs.
"""
from __future__ import annotations

import json
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"


def catalog_names() -> list[str]:
    """Names of every model in the catalog, sorted."""
    return sorted(p.stem for p in MODELS_DIR.glob("*.json"))


def _find(name: str) -> Path | None:
    want = name.lower()
    for p in MODELS_DIR.glob("*.json"):
        if p.stem.lower() == want:
            return p
    return None


def load_config(model) -> tuple[str, dict]:
    """Return ``(name, config_dict)`` for a catalog name, a config.json path, or a dict.

    Raises ``ValueError`` for an unknown name, a missing file or malformed JSON.
    """
    if isinstance(model, dict):
        return str(model.get("_name_or_path") or model.get("name") or "custom"), dict(model)
    if not isinstance(model, (str, Path)):
        raise ValueError(f"model: expected a catalog name, a path to a config.json or a dict, got {type(model).__name__}")
    path = _find(str(model)) if isinstance(model, str) else None
    if path is None:
        candidate = Path(model)
        if candidate.is_dir():
            candidate = candidate / "config.json"
        if candidate.is_file():
            path = candidate
        else:
            raise ValueError(f"model: {str(model)!r} is neither a catalog name nor a config.json file; "
                             f"catalog: {', '.join(catalog_names())}")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"model: {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"model: {path} must hold a JSON object, got {type(cfg).__name__}")
    name = path.stem if path.parent == MODELS_DIR else str(cfg.get("_name_or_path") or path.parent.name or path.stem)
    return name, cfg
