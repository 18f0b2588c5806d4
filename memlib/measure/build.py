"""Turn a catalog name / config path / dict into a Hugging Face model for the bench.

Only JSON data is read; no remote code ever runs (``auto_map`` is dropped).  The config is
validated by memlib's own reader first, then cleaned, and every change is recorded in
``meta["config_changes"]``:

* ``quantization_config`` is dropped: the bench builds plain-dtype weights (the fp8
  DeepSeek-V3 checkpoint is measured in the dtype asked for);
* ``auto_map`` is dropped (it points to remote code);
* the original Falcon configs (RefinedWeb) are mapped to transformers' ``falcon`` classes
  with their old keys renamed (:func:`memlib.spec.transformers_config`).
"""
from __future__ import annotations

import copy

from ..catalog import load_config

INSTALL_HINT = 'memlib.measure needs torch and transformers: pip install "memlib[measure]"'

# Fields a causal LM config must give (directly or through the config class's
# attribute_map); transformers would silently fill in a default otherwise.
REQUIRED = ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")



def require_torch():
    """Import and return ``(torch, transformers)``; ``ImportError`` with the install hint if absent."""
    try:
        import torch
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"{INSTALL_HINT} ({e})") from None
    return torch, transformers


def clean_config(model) -> tuple[str, dict, list[str]]:
    """Return ``(name, cleaned config dict, notes on what was changed)``.

    The config is first read and validated as memlib reads it (:func:`memlib.load_spec`:
    every field checked, a ``ValueError`` naming the field otherwise), so the bench never
    builds a model from a config memlib would refuse, nor lets transformers fill in a
    default silently.
    """
    from ..spec import load_spec, transformers_config
    name, raw = load_config(model)
    load_spec(model)
    cfg, notes = transformers_config(copy.deepcopy(raw))
    for key in ("quantization_config", "auto_map"):
        if key in cfg:
            cfg.pop(key)
            notes.insert(0, f"dropped {key}")
    return name, cfg, notes


def hf_config(name: str, cfg: dict):
    """A transformers config object for the cleaned dict; ``ValueError`` naming any problem."""
    torch, transformers = require_torch()
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from ..spec import transformers_architecture
    mt = transformers_architecture(cfg)
    if mt not in CONFIG_MAPPING:
        raise ValueError(f"model {name!r}: architecture {mt!r} is not one transformers "
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
