"""Turn a catalog name / config path / dict into a Hugging Face model for the bench.

Only JSON data is read; no remote code ever runs (``auto_map`` is dropped).  The raw
config is cleaned first, and every change is recorded in ``meta["config_changes"]``:

* ``quantization_config`` is dropped: the bench builds plain-dtype weights (the fp8
  DeepSeek-V3 checkpoint is measured in the dtype asked for);
* ``auto_map`` is dropped (it points to remote code);
* the original Falcon configs (``model_type`` ``"RefinedWebModel"`` / ``"RefinedWeb"``)
  are mapped to ``"falcon"`` with their old keys renamed (``n_layer`` ->
  ``num_hidden_layers``, ``n_head`` -> ``num_attention_heads``, ``n_head_kv`` ->
  ``num_kv_heads``, ``n_embed`` -> ``hidden_size``); ``"RefinedWeb"`` (Falcon-40B style)
  sets ``new_decoder_architecture``.  transformers' ``FalconConfig`` has no alias for
  these keys and would otherwise silently use its defaults.
"""
from __future__ import annotations

import copy

from ..catalog import load_config

INSTALL_HINT = 'memlib.measure needs torch and transformers: pip install "memlib[measure]"'

# Fields a causal LM config must give (directly or through the config class's
# attribute_map); transformers would silently fill in a default otherwise.
REQUIRED = ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")

_FALCON_RENAMES = {"n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
                   "n_head_kv": "num_kv_heads", "n_embed": "hidden_size"}


def require_torch():
    """Import and return ``(torch, transformers)``; ``ImportError`` with the install hint if absent."""
    try:
        import torch
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"{INSTALL_HINT} ({e})") from None
    return torch, transformers


def clean_config(model) -> tuple[str, dict, list[str]]:
    """Return ``(name, cleaned config dict, notes on what was changed)``."""
    name, raw = load_config(model)
    cfg = copy.deepcopy(raw)
    notes = []
    if "model_type" not in cfg:
        raise ValueError(f"model {name!r}: config has no 'model_type'; cannot tell which architecture to build")
    for key in ("quantization_config", "auto_map"):
        if key in cfg:
            cfg.pop(key)
            notes.append(f"dropped {key}")
    mt = cfg["model_type"]
    if mt in ("RefinedWebModel", "RefinedWeb"):
        for old, new in _FALCON_RENAMES.items():
            if old in cfg:
                if new not in cfg:
                    cfg[new] = cfg[old]
                cfg.pop(old)
                notes.append(f"renamed {old} -> {new}")
        if mt == "RefinedWeb" and "new_decoder_architecture" not in cfg:
            cfg["new_decoder_architecture"] = True
            notes.append("set new_decoder_architecture=True (RefinedWeb)")
        cfg["model_type"] = "falcon"
        notes.append(f"model_type {mt} -> falcon")
    return name, cfg, notes


def hf_config(name: str, cfg: dict):
    """A transformers config object for the cleaned dict; ``ValueError`` naming any problem."""
    torch, transformers = require_torch()
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    mt = cfg["model_type"]
    if mt not in CONFIG_MAPPING:
        raise ValueError(f"model {name!r}: model_type {mt!r} is not an architecture transformers "
                         f"{transformers.__version__} knows")
    cls = CONFIG_MAPPING[mt]
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    amap = getattr(cls, "attribute_map", {}) or {}
    for field in REQUIRED:
        keys = {field, amap.get(field, field)}
        if not any(k in text or k in cfg for k in keys):
            alias = f" (or {amap[field]!r})" if field in amap else ""
            raise ValueError(f"model {name!r}: config is missing {field!r}{alias}; "
                             f"the bench will not guess it")
    try:
        return cls.from_dict(cfg)
    except Exception as e:  # transformers raises many kinds here
        raise ValueError(f"model {name!r}: transformers cannot read this {mt} config: "
                         f"{type(e).__name__}: {e}") from None


TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def torch_dtype(dtype: str):
    from ..units import canonical_dtype
    torch, _ = require_torch()
    return getattr(torch, TORCH_DTYPES[canonical_dtype(dtype, "dtype", allowed=tuple(TORCH_DTYPES))])


def build_model(name: str, config, dtype, attention: str):
    """``AutoModelForCausalLM.from_config`` with ``attention``, falling back to eager.

    Call it under the device / fake mode the model should live in.  Returns
    ``(model, attention_used, sdpa_fallback)``.
    """
    torch, transformers = require_torch()
    from transformers import AutoModelForCausalLM

    def make(attn):
        cfg = copy.deepcopy(config)
        return AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn)

    fallback = False
    try:
        model = make(attention)
    except (ValueError, ImportError) as e:
        if attention != "sdpa" or "sdpa" not in str(e).lower() and "scaled_dot_product" not in str(e):
            raise ValueError(f"model {name!r}: transformers cannot build it: {e}") from None
        model = make("eager")
        fallback = True
    except (KeyError, TypeError, AttributeError, IndexError, RuntimeError) as e:
        raise ValueError(f"model {name!r}: transformers cannot build it: {type(e).__name__}: {e}") from None
    used = getattr(model.config, "_attn_implementation", None) or ("eager" if fallback else attention)
    return model, used, fallback
