"""The optimizers the bench trains with, and their three implementations (chapter 04).

PyTorch implements AdamW and SGD three ways; the math is the same, the step-phase memory
is not:

* ``"loop"`` (``foreach=False, fused=False``): one parameter at a time.  AdamW builds
  ``denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)``: at parameter ``i``
  the ``sqrt`` and the division of ``i`` are alive together with the previous ``denom``
  (the loop variable still holds it), so the step's temporaries peak at
  ``max_i (n[i-1] + 2 n[i])`` elements of the state dtype, in ``model.parameters()``
  order: two embedding-sized tensors for most LLMs, three MLP matrices when those are
  the largest adjacent pair.
* ``"foreach"`` (``foreach=True``): every parameter of a (device, dtype) group at once,
  with ``torch._foreach_*`` list ops.  AdamW's ``_foreach_sqrt(exp_avg_sqs)`` makes one
  temporary per parameter, all alive together: one more *whole second moment* (the size
  of all parameters, in the state's dtype) during the step.  This is what PyTorch picks
  by default on CUDA (``torch.optim.optimizer._default_to_fused_or_foreach``: foreach
  when every parameter is on a device in ``_get_foreach_kernels_supported_devices()``,
  i.e. cuda/xpu/mtia/privateuse1; never on the CPU).
* ``"fused"`` (``fused=True``): one kernel per group (``torch._fused_adamw_`` /
  ``torch._fused_sgd_``) that updates parameters and state in place; no tensor-sized
  temporary is returned to Python.

SGD with momentum updates its buffer in place in all three implementations
(``buf.mul_(momentum).add_(grad)``); the buffer itself is created on the first step.

The bench passes the flags explicitly, so the fake-tensor CPU run executes the same
implementation a GPU would.  ``transformers`` 5.23.0's ``TrainingArguments.optim``
defaults to ``"adamw_torch_fused"`` when torch >= 2.8 (``training_args.py``, the
``default_optim`` lines before the ``optim`` field), which ``trainer_optimizer.py``
(``_get_adamw_torch``) turns into ``torch.optim.AdamW(..., fused=True)``.
"""
from __future__ import annotations

import torch

from ..validation import choice

__all__ = ["OPTIMIZERS", "OPTIMIZER_IMPLS", "DEFAULT_OPTIMIZER_IMPL", "make_optimizer", "impl_flags"]

from ..scenario import DEFAULT_OPTIMIZER_IMPL, OPTIMIZER_IMPLS  # noqa: E402  (one vocabulary)

#: The optimizers the bench builds (memlib's ``"sgd_momentum"`` is the bench's ``"sgd"``,
#: momentum 0.9; :mod:`memlib.measure.compare` maps the names).
OPTIMIZERS = ("adamw", "sgd")

_FLAGS = {"loop": {"foreach": False, "fused": False},
          "foreach": {"foreach": True, "fused": False},
          "fused": {"foreach": False, "fused": True}}


def impl_flags(impl: str) -> dict:
    """The ``foreach=`` / ``fused=`` keyword arguments of an implementation name."""
    choice("optimizer_impl", impl, OPTIMIZER_IMPLS)
    return dict(_FLAGS[impl])


def make_optimizer(name: str, params, impl: str = DEFAULT_OPTIMIZER_IMPL):
    """``torch.optim.AdamW(params, **flags)`` or ``SGD(params, lr=1e-3, momentum=0.9, **flags)``.

    ``flags`` come from :func:`impl_flags` (``loop``, ``foreach`` or ``fused``), chapter 04.
    """
    choice("optimizer", name, OPTIMIZERS)
    flags = impl_flags(impl)
    if name == "adamw":
        return torch.optim.AdamW(params, **flags)
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9, **flags)
