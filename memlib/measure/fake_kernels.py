"""Where a fake-tensor kernel refuses what the real kernels run, and the bench's fix (chapter 08).

The bench runs on ``FakeTensor``s, whose ops are computed by PyTorch's *meta* kernels
(``torch/_meta_registrations.py``): shapes, dtypes and strides, no data.  A meta kernel
is meant to accept exactly what the real kernels accept.  One does not, in torch 2.13:

* ``aten._grouped_mm`` (``torch.nn.functional.grouped_mm``, the grouped GEMM behind
  transformers' default ``experts_implementation="grouped_mm"`` for MoE layers).  Its
  meta kernel (``_meta_grouped_mm_common``) demands bf16 inputs.  The real kernels take
  fp32, bf16 and fp16 (``_grouped_mm_validate_inputs`` in
  ``aten/src/ATen/native/GroupedMMUtils.h``): on CUDA, bf16 on sm90/sm100 takes the
  CUTLASS fast path and everything else ``_grouped_mm_fallback``, one ``mm_out`` per
  expert into a preallocated output of the input's dtype
  (``aten/src/ATen/native/cuda/GroupedBlas.cpp``, ``_grouped_mm_cuda``); the CPU kernel
  does the same.

This matters in mixed precision: the master weights are fp32, and transformers 5.23.0
casts the experts' input to the weight dtype before the call
(``integrations/moe.py``, ``_grouped_mm``: ``grouped_mm(input.to(weight.dtype), ...)``,
because ``grouped_mm`` has no autocast rule).  On a GPU the experts then run in fp32
through the fallback: fp32 expert activations, no bf16 copies of the expert weights.
On fake tensors the same call raised ``Expected inputs of BF16 type``.

:func:`grouped_mm_meta_accepts_real_dtypes` makes the meta kernel accept what the real
ones accept (fp32/fp16 inputs of one dtype, output in that dtype, shaped by the same
``_create_grouped_mm_output_tensor`` the meta kernel uses for bf16).  Nothing else
changes: bf16 and fp8 calls go to the original meta kernel.
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["grouped_mm_meta_accepts_real_dtypes", "PATCHES"]

#: What :func:`grouped_mm_meta_accepts_real_dtypes` changes (recorded in a measurement's meta).
PATCHES = ("aten._grouped_mm meta kernel accepts fp32/fp16 inputs, as the CPU and CUDA kernels do",)

_REAL_DTYPES = (torch.float32, torch.float16)


@contextlib.contextmanager
def grouped_mm_meta_accepts_real_dtypes():
    """While active, the fake (meta) ``_grouped_mm`` accepts fp32/fp16 like the real kernels.

    Output: ``_create_grouped_mm_output_tensor(mat_a, mat_b, offs, out_dtype or mat_a.dtype)``;
    ``out_dtype`` must equal ``mat_a``'s dtype (``_resolve_grouped_mm_out_dtype``).
    """
    from torch import _meta_registrations as mr
    original = getattr(mr, "_meta_grouped_mm_common", None)
    create = getattr(mr, "_create_grouped_mm_output_tensor", None)
    if original is None or create is None:  # pragma: no cover - another torch version
        yield
        return

    def common(mat_a, mat_b, scale_a, scale_b, offs=None, bias=None, scale_result=None,
               out_dtype=None, use_fast_accum=False):
        if scale_a is None and scale_b is None and mat_a.dtype in _REAL_DTYPES and mat_b.dtype == mat_a.dtype:
            torch._check(mat_a.dim() in (2, 3) and mat_b.dim() in (2, 3),
                         lambda: "grouped_mm: mat_a and mat_b have to be 2d or 3d")
            if mat_a.dim() == 3 or mat_b.dim() == 3:
                torch._check(mat_a.size(-1) == mat_b.size(-2),
                             lambda: "contraction dimension of mat_a and mat_b must match")
            torch._check((offs is not None) == (mat_a.dim() == 2 or mat_b.dim() == 2),
                         lambda: "Have to provide offsets if there is a 2d matrix")
            torch._check(bias is None, lambda: "Bias not supported yet")
            torch._check(out_dtype is None or out_dtype == mat_a.dtype,
                         lambda: "Grouped gemm output dtype must match `mat_a` dtype")
            return create(mat_a, mat_b, offs, out_dtype or mat_a.dtype)
        return original(mat_a, mat_b, scale_a, scale_b, offs=offs, bias=bias, scale_result=scale_result,
                        out_dtype=out_dtype, use_fast_accum=use_fast_accum)

    mr._meta_grouped_mm_common = common
    try:
        yield
    finally:
        mr._meta_grouped_mm_common = original
