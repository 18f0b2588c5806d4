"""CPU autocast is not CUDA autocast: the difference, and an emulation of CUDA's policy.

``torch.autocast`` keeps one op list per device (``aten/src/ATen/autocast_mode.{h,cpp}``).
Both lists run matmuls, linear layers and ``scaled_dot_product_attention`` in bfloat16.
They differ on the "numerically sensitive" ops:

* **CUDA only, fp32 policy** (inputs cast to fp32, output fp32): ``exp``, ``log``,
  ``pow``, ``rsqrt``, ``reciprocal``, ``softplus``, ``layer_norm``, ``group_norm``,
  ``rms_norm``, ``logsumexp``, ``cosine_similarity``, the losses ...
* **CUDA only, fp32_set_opt_dtype** (``dtype=float32`` added when the first argument is
  floating point and no dtype was given): ``softmax``, ``log_softmax``, ``sum``,
  ``cumsum``, ``prod``, ``cumprod``, ``linalg_vector_norm`` ...
* **CUDA only, lower precision**: ``einsum``, ``addmv``, ``addr``, ``mv``,
  ``chain_matmul``, ``linalg_multi_dot``.
* **CUDA only, promote**: ``addcdiv``, ``addcmul``, ``atan2``, ``dot``, ``index_put``,
  ``scatter_add``, ``tensordot`` ...
* **CPU only**: ``cross_entropy_loss`` (fp32), ``cat``/``stack``/``index_copy``
  (promote), linear-algebra and FFT ops (fp32), ``_addmm_activation`` (bf16).

So under CPU autocast a bf16 tensor that reaches ``softmax``, ``pow`` or ``layer_norm``
stays bf16, while on a GPU the result is fp32 (twice the bytes, and it changes what
autograd saves).  Examples in transformers: GPT-2's ``gelu_new`` calls ``torch.pow`` on
the bf16 MLP activation, and its eager attention calls ``softmax`` without a dtype.
Llama-style models are not affected: their RMSNorm upcasts by hand and their eager
softmax passes ``dtype=torch.float32``.

:class:`CudaAutocastPolicy` is a ``TorchFunctionMode`` that, while CPU autocast is on,
applies the CUDA-only policies above at the Python level (above autograd, so the
backward sees the same dtypes as on a GPU).  The bench uses it for ``precision="mixed"``
on the CPU unless told otherwise, around the forward only (where autocast is);
``meta["autocast_emulated"]`` counts the calls it changed.

Recomputation: ``torch.utils.checkpoint`` re-enters the forward's autocast state while it
recomputes a checkpointed layer in the backward (``recompute_fn`` in
``torch/utils/checkpoint.py``), so on a GPU the recomputed ops get CUDA's op list again.
A ``TorchFunctionMode`` entered around the forward is not active there (the autograd
engine does not carry Python function modes), so the bench hands a second instance to
the checkpoint as its ``context_fn`` recompute context; it acts only while the restored
autocast is on.  ``meta["autocast_emulated_recompute"]`` counts its changes.
"""
from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["CudaAutocastPolicy", "policy_diff", "CUDA_ONLY_POLICY"]

Tensor = torch.Tensor
_LOW = (torch.float16, torch.bfloat16)


def _fns(*names):
    """Python callables for op names, looked up on torch, Tensor and torch.nn.functional."""
    out = []
    for name in names:
        for owner in (torch, Tensor, F, torch.linalg, torch.special):
            fn = getattr(owner, name, None)
            if callable(fn) and fn not in out:
                out.append(fn)
    return out


# The CUDA-only policies, from AT_FORALL_FP32 / AT_FORALL_FP32_SET_OPT_DTYPE /
# AT_FORALL_LOWER_PRECISION_FP / AT_FORALL_PROMOTE minus what AutocastCPU also registers
# (checked against torch's dispatcher registrations by policy_diff()).
CUDA_ONLY_POLICY = {
    "fp32": ["acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p",
             "reciprocal", "rsqrt", "sinh", "tan", "pow", "softplus", "layer_norm", "group_norm",
             "rms_norm", "frobenius_norm", "nuclear_norm", "cosine_similarity", "poisson_nll_loss",
             "cosine_embedding_loss", "hinge_embedding_loss", "kl_div", "l1_loss", "smooth_l1_loss",
             "huber_loss", "margin_ranking_loss", "soft_margin_loss", "triplet_margin_loss",
             "multi_margin_loss", "multilabel_margin_loss", "dist", "pdist", "renorm", "logsumexp"],
    "fp32_set_opt_dtype": ["softmax", "log_softmax", "sum", "cumsum", "prod", "cumprod",
                           "vector_norm", "matrix_norm"],
    "lower_precision_fp": ["einsum", "addmv", "addr", "mv", "chain_matmul", "multi_dot"],
    "promote": ["addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "vdot", "tensordot",
                "scatter_add", "index_put"],
}
# ``x ** 2`` reaches torch function as Tensor.__pow__ / __rpow__.
_EXTRA = {"fp32": [Tensor.__pow__, Tensor.__rpow__]}

# F.cross_entropy: CPU autocast casts it to fp32 as a whole (cross_entropy_loss); CUDA
# reaches the same fp32 result through log_softmax(dtype=float32) + nll_loss(fp32).


def _build_table():
    table = {}
    for policy, names in CUDA_ONLY_POLICY.items():
        for fn in _fns(*names) + _EXTRA.get(policy, []):
            table[fn] = policy
    return table


def _is_low(t):
    return isinstance(t, Tensor) and t.dtype in _LOW


def _cast(obj, dtype):
    if isinstance(obj, Tensor) and obj.is_floating_point() and obj.dtype != torch.float64 and obj.dtype != dtype:
        return obj.to(dtype)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast(o, dtype) for o in obj)
    return obj


class CudaAutocastPolicy(TorchFunctionMode):
    """Apply CUDA autocast's CUDA-only op policies while CPU autocast is enabled.

    ``changed`` counts, by op name, the calls whose dtypes this mode changed.
    """

    def __init__(self, device_type: str = "cpu"):
        super().__init__()
        self.device_type = device_type
        self.table = _build_table()
        self.changed: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        policy = self.table.get(func)
        if policy is None or not torch.is_autocast_enabled(self.device_type):
            return func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        flat = list(args) + list(kwargs.values())
        if policy == "fp32":
            if any(_is_low(a) or (isinstance(a, (list, tuple)) and any(_is_low(x) for x in a)) for a in flat):
                self.changed[name] += 1
                args, kwargs = _cast(args, torch.float32), {k: _cast(v, torch.float32) for k, v in kwargs.items()}
        elif policy == "fp32_set_opt_dtype":
            first = args[0] if args else kwargs.get("input")
            if (isinstance(first, Tensor) and first.is_floating_point() and kwargs.get("dtype") is None
                    and first.dtype != torch.float64):
                if first.dtype != torch.float32:
                    self.changed[name] += 1
                kwargs = {**kwargs, "dtype": torch.float32}
        elif policy == "lower_precision_fp":
            low = torch.get_autocast_dtype(self.device_type)
            if any(isinstance(a, Tensor) and a.is_floating_point() and a.dtype == torch.float32 for a in flat):
                self.changed[name] += 1
                args, kwargs = _cast(args, low), {k: _cast(v, low) for k, v in kwargs.items()}
        elif policy == "promote":
            fl = [a for a in flat if isinstance(a, Tensor) and a.is_floating_point()]
            if len({a.dtype for a in fl}) > 1:
                wide = torch.float32 if any(a.dtype == torch.float32 for a in fl) else fl[0].dtype
                self.changed[name] += 1
                args, kwargs = _cast(args, wide), {k: _cast(v, wide) for k, v in kwargs.items()}
        return func(*args, **kwargs)


def policy_diff() -> dict:
    """Which aten ops have an autocast kernel on CUDA but not on CPU, and the other way round.

    Read from the dispatcher of the installed torch (``AutocastCPU`` / ``AutocastCUDA``
    registrations; a CPU-only build registers both).  Returns
    ``{"cuda_only": [...], "cpu_only": [...], "both": [...]}``.
    """
    get = torch._C._dispatch_get_registrations_for_dispatch_key
    cpu, cuda = set(get("AutocastCPU")), set(get("AutocastCUDA"))
    return {"cuda_only": sorted(cuda - cpu), "cpu_only": sorted(cpu - cuda), "both": sorted(cpu & cuda)}
