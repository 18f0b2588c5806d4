"""Several models in one bench session, and what the RL scenarios need of them (chapter 06).

An RL step holds up to four models on one device: the trained policy, a frozen
reference, a frozen reward model and a trained critic.  :class:`RLSession` builds them
all inside *one* ``FakeTensorMode`` on the CPU (or with real tensors, ``fake=False``),
with the same transformers settings as :class:`memlib.measure.scenarios.Session`.

* :meth:`RLSession.causal_lm` -- ``AutoModelForCausalLM.from_config`` (policy, reference).
* :meth:`RLSession.scalar_head` -- ``AutoModelForSequenceClassification.from_config`` with
  ``num_labels=1`` (reward model, critic): the backbone plus a ``score`` Linear(H, 1,
  bias=False).  It is run the way TRL (v1.9.0, ``trl/experimental/ppo/ppo_trainer.py``,
  ``PolicyAndValueWrapper`` and ``get_reward``) runs its value and reward models: the
  backbone's last hidden state goes through ``score`` at every position, giving a
  ``(B, S, 1)`` output; the reward is the last position's value, the critic's values are
  all positions.
* :func:`add_lora` -- a minimal LoRA written for the bench (peft is not a dependency).
  It follows the forward of PEFT v0.20.0's ``lora.Linear`` with its defaults
  (``lora_dropout=0``, ``autocast_adapter_dtype=True``): ``y = base(x)``, then
  ``y = (y + B(A(x.to(A.dtype))) * alpha / r).to(y.dtype)``.  ``A`` is Linear(in, r),
  ``B`` is Linear(r, out), both without bias, in fp32 by default (PEFT upcasts bf16
  adapters to fp32); the base layer is frozen.  ``targets="all-linear"`` wraps every
  ``nn.Linear`` / transformers ``Conv1D`` inside the decoder (PEFT's "all-linear": every
  linear layer but the output head).  With the adapters disabled (:func:`lora_disabled`)
  the model *is* the base model, which is how a LoRA policy's reference is computed with
  no second copy of the weights.
"""
from __future__ import annotations

import contextlib
import copy
import sys
import time

import torch
from torch import nn

from .build import build_model, clean_config, hf_config
from .scenarios import _eager_mask_path, _quiet_transformers, _versions

__all__ = ["RLSession", "LoRALinear", "add_lora", "lora_disabled", "lora_params", "scalar_head_forward"]


def _progress(msg, verbose):
    if verbose:
        print(msg, file=sys.stderr, flush=True)


class RLSession:
    """One fake-tensor (or real) CPU session in which several models are built.

    Use as a context manager; models built with :meth:`causal_lm` / :meth:`scalar_head`
    live in the same ``FakeTensorMode``, so tensors of different models mix freely.
    """

    def __init__(self, device: str = "cpu", fake: bool = True, verbose: bool = False, seed: int = 0):
        if device != "cpu":
            raise ValueError(f"device: the RL bench runs on 'cpu' only (fake or real tensors), got {device!r}")
        self.device = "cpu"
        self.fake = bool(fake)
        self.verbose = verbose
        self.stack = contextlib.ExitStack()
        self.stack.enter_context(_quiet_transformers())
        if self.fake:
            from torch._subclasses.fake_tensor import FakeTensorMode
            self.stack.enter_context(_eager_mask_path())
            self.stack.enter_context(FakeTensorMode())
        torch.manual_seed(seed)
        self.build_s = 0.0
        self.built: list[dict] = []

    def close(self):
        self.stack.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False

    def _config(self, model):
        name, cfg, notes = clean_config(model)
        return name, hf_config(name, cfg), notes

    def causal_lm(self, model, dtype, attention: str, role: str):
        """Build ``AutoModelForCausalLM`` for ``role``; returns the model (info in :attr:`built`)."""
        name, config, notes = self._config(model)
        _progress(f"building {role}: {name} ({str(dtype).replace('torch.', '')}, {attention})...", self.verbose)
        t0 = time.perf_counter()
        with torch.device(self.device):
            m, used, fallback = build_model(name, config, dtype, attention)
        self.build_s += time.perf_counter() - t0
        self.built.append({"role": role, "model": name, "class": type(m).__name__, "attention": used,
                           "sdpa_fallback": fallback, "config_changes": notes,
                           "dtype": str(dtype).replace("torch.", "")})
        return m

    def scalar_head(self, model, dtype, attention: str, role: str):
        """Build ``AutoModelForSequenceClassification(num_labels=1)`` for ``role`` (reward model, critic)."""
        from transformers import AutoModelForSequenceClassification
        name, config, notes = self._config(model)
        config = copy.deepcopy(config)
        config.num_labels = 1
        _progress(f"building {role}: {name} scalar head ({str(dtype).replace('torch.', '')}, {attention})...",
                  self.verbose)
        t0 = time.perf_counter()
        used = attention
        fallback = False
        with torch.device(self.device):
            try:
                m = AutoModelForSequenceClassification.from_config(copy.deepcopy(config), dtype=dtype,
                                                                   attn_implementation=attention)
            except (ValueError, ImportError) as e:
                if attention != "sdpa":
                    raise ValueError(f"model {name!r}: transformers cannot build a scalar head: {e}") from None
                m = AutoModelForSequenceClassification.from_config(copy.deepcopy(config), dtype=dtype,
                                                                   attn_implementation="eager")
                used, fallback = "eager", True
        if not isinstance(getattr(m, "score", None), nn.Linear):
            raise ValueError(f"model {name!r}: {type(m).__name__} has no 'score' Linear head; "
                             f"the RL bench needs one for a reward model or critic")
        self.build_s += time.perf_counter() - t0
        used = getattr(m.config, "_attn_implementation", None) or used
        self.built.append({"role": role, "model": name, "class": type(m).__name__, "attention": used,
                           "sdpa_fallback": fallback, "config_changes": notes,
                           "dtype": str(dtype).replace("torch.", "")})
        return m

    def meta(self):
        return {"models": self.built, "fake": self.fake,
                "device": "cpu (fake tensors)" if self.fake else "cpu", **_versions()}


def vocab_size(model) -> int:
    """The width of the model's output head (``lm_head.out_features``, else the config's vocab_size)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


def scalar_head_forward(model, input_ids):
    """``score(backbone(input_ids).last_hidden_state)``: a ``(B, S, 1)`` output (reward / values)."""
    hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state
    return model.score(hidden)


# -- LoRA -----------------------------------------------------------------------------------
def _linear_shape(mod):
    """``(in_features, out_features)`` of an ``nn.Linear`` or a transformers ``Conv1D``; None otherwise."""
    if isinstance(mod, nn.Linear):
        return mod.in_features, mod.out_features
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        Conv1D = ()
    if Conv1D and isinstance(mod, Conv1D):
        n_in, n_out = mod.weight.shape            # Conv1D stores (in, out)
        return int(n_in), int(n_out)
    return None


class LoRALinear(nn.Module):
    """A frozen linear layer plus a LoRA adapter (see the module docstring for the exact forward)."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, dtype):
        super().__init__()
        shape = _linear_shape(base)
        if shape is None:
            raise ValueError(f"lora target: {type(base).__name__} is not a Linear or Conv1D layer")
        n_in, n_out = shape
        self.base_layer = base
        base.requires_grad_(False)
        self.lora_A = nn.Linear(n_in, rank, bias=False, dtype=dtype)
        self.lora_B = nn.Linear(rank, n_out, bias=False, dtype=dtype)
        self.scaling = float(alpha) / rank
        self.enabled = True

    def forward(self, x):
        y = self.base_layer(x)
        if not self.enabled:
            return y
        dtype = y.dtype
        xa = x if x.dtype == self.lora_A.weight.dtype else x.to(self.lora_A.weight.dtype)
        return (y + self.lora_B(self.lora_A(xa)) * self.scaling).to(dtype)


def _decoder_root(model):
    """The module holding the decoder layers (the backbone), so the output head is never wrapped."""
    return model.base_model if getattr(model, "base_model", None) is not None else model


def add_lora(model, rank: int, alpha: float | None = None, dtype=torch.float32, targets="all-linear"):
    """Freeze ``model`` and wrap its target linear layers with :class:`LoRALinear`; returns the wrapped names.

    Trainable parameters are then ``sum over targets of rank x (in + out)`` per layer
    (chapter 04's LoRA count).  ``targets``: ``"all-linear"`` (every Linear / Conv1D of
    the backbone) or a collection of module-name suffixes (``("q_proj", "v_proj")``).
    ``alpha`` defaults to ``rank`` (scaling 1; the scaling changes no byte).
    """
    if alpha is None:
        alpha = rank
    model.requires_grad_(False)
    root = _decoder_root(model)
    wrapped = []
    for name, mod in list(root.named_modules()):
        if _linear_shape(mod) is None or isinstance(mod, LoRALinear) or ".lora_" in f".{name}":
            continue
        if targets != "all-linear" and not any(name == t or name.endswith("." + t) for t in targets):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        if isinstance(parent, LoRALinear):
            continue
        with torch.device(mod.weight.device):
            setattr(parent, child, LoRALinear(mod, rank, alpha, dtype))
        wrapped.append(name)
    if not wrapped:
        raise ValueError(f"lora targets: no layer of {type(model).__name__} matches {targets!r}")
    return wrapped


def lora_params(model):
    """The adapter parameters (``lora_A`` / ``lora_B`` weights) of a model built with :func:`add_lora`."""
    return [p for m in model.modules() if isinstance(m, LoRALinear)
            for p in (m.lora_A.weight, m.lora_B.weight)]


@contextlib.contextmanager
def lora_disabled(model):
    """Run the base model: every :class:`LoRALinear` of ``model`` skips its adapter inside the block."""
    mods = [m for m in model.modules() if isinstance(m, LoRALinear)]
    for m in mods:
        m.enabled = False
    try:
        yield
    finally:
        for m in mods:
            m.enabled = True

