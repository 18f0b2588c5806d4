"""What one rank saves for the backward under tensor, sequence and context parallelism (chapter 05).

Chapter 03's :class:`~memlib.activations.Saved` records carry their axes; a plan splits
them by rules over those axes, never by an even split of the total:

* **tensor parallelism** splits the head and MLP-width axes (``q``, ``kv``, ``nh``,
  ``nkv``, ``v``, ``I``, ``I_shared``; eager attention's ``S × S`` scores by head): the
  query, key/value, attention-output and MLP tensors shrink by ``tp``; key/value tensors
  keep one whole head when ``tp > n_kv_heads`` (the head is copied).  Everything on the
  ``T × H`` residual stream stays whole: the norms' fp32 copies, their outputs (the
  projections' inputs), the residual adds.  So do the tensors of a block whose output
  transformers' plan gathers whole (a fused ``qkv`` or ``gate_up`` projection:
  ``colwise_gather_output``) and of MoE experts, which the plan leaves replicated; such a
  block's row-parallel projection then splits its whole input locally and keeps the
  ``T × width / tp`` slice for its weight gradient.  MLA's latent (``r_q``, ``r_kv``) is
  replicated.
* **sequence parallelism** (``sp``) also splits the norms along the tokens: their fp32
  copies, ``rsqrt`` and normalised tensors are ``T / tp``.  Their outputs are
  all-gathered back to ``T`` tokens before the attention and the MLP, and the projections
  keep that gathered ``T × H`` tensor: SP saves the norms' insides, not their outputs.
* **context parallelism** (``cp``) runs the layer on ``S / cp`` of the sequence: the
  scenario is simply evaluated at ``seq_len / cp`` (:func:`memlib.parallel.rank`), and
  ring attention's K/V buffers come on top (:mod:`memlib.parallel.context`).
"""
from __future__ import annotations

from ..activations import Saved
from ..spec import ModelSpec
from .tensors import ceil_div

#: Axes tensor parallelism splits (by heads or by MLP width).
TP_AXES = ("q", "nh", "v", "I", "I_shared", "kv", "nkv")


def kv_heads_local(spec: ModelSpec, tp: int) -> int:
    """Key/value heads one rank holds: ``n_kv / tp``, or one copied head when ``tp > n_kv`` (chapter 05)."""
    return max(spec.num_kv_heads // tp, 1)


def _factor(spec: ModelSpec, axis: str, tp: int) -> tuple[int, int]:
    """``(numerator, denominator)``: a tensor along ``axis`` keeps ``num/den`` of its bytes."""
    if axis in ("kv", "nkv"):
        return kv_heads_local(spec, tp), spec.num_kv_heads
    return 1, tp


def _split(nbytes, num: int, den: int):
    if num == 1:
        return -(-nbytes // den) if isinstance(nbytes, int) else (nbytes + den - 1) // den
    return nbytes * num // den


def _whole_blocks(spec: ModelSpec) -> set:
    """Blocks whose activations tensor parallelism leaves whole (gathered or replicated)."""
    out = set()
    if spec.fused_qkv:
        out.add("attention")
    if spec.fused_gate_up:
        out.add("mlp")
    return out


def tp_records(spec: ModelSpec, records: dict, tp: int, sp: bool = False, moe: bool = False,
               tokens=None, residual_bytes: int = 2) -> dict:
    """One layer's :class:`Saved` records as rank 0 of ``tp`` keeps them (chapter 05).

    ``tokens`` (``T``, needed for the row-parallel input slices of a gathered block) and
    ``residual_bytes`` (the dtype of that slice's source, 2 for bf16).  Rules: module
    docstring.  ``tp=1`` and ``sp=False`` return the records unchanged.
    """
    if tp == 1:
        return dict(records)
    whole = _whole_blocks(spec)
    if moe:
        whole.add("mlp")                     # replicated experts (and router)
    out = {}
    for name, t in records.items():
        nbytes = t.nbytes
        if t.block not in whole:
            split = next((a for a in t.axes if a in TP_AXES), None)
            if split is not None:
                num, den = _factor(spec, split, tp)
                nbytes = _split(nbytes, num, den)
        if sp and t.block == "norms" and "T" in t.axes and not name.endswith(".output"):
            nbytes = _split(nbytes, 1, tp)
        out[name] = t._replace(nbytes=nbytes)
    if tokens is not None:
        # a gathered block's row-parallel projection splits its whole input locally and keeps
        # the T × width/tp slice (bf16) for its weight gradient, instead of the whole input
        T = tokens
        if "attention" in whole and not spec.is_mla:
            q = spec.num_heads * spec.head_dim
            out = {k: t for k, t in out.items() if k != "attn.out_copy" and t.needed_by != ("o",)}
            out["tp.o_input_slice"] = Saved("tp.o_input_slice", 2 * T * ceil_div(q, tp), "attention", "attn",
                                            ("T", "q"), ("o",))
        if "mlp" in whole and not moe:
            out = {k: t for k, t in out.items() if t.needed_by != ("down",)}
            out["tp.down_input_slice"] = Saved("tp.down_input_slice", 2 * T * ceil_div(spec.intermediate_size, tp),
                                               "mlp", "mlp", ("T", "I"), ("down",))
    return out


def sp_model_records(records: dict, tp: int) -> dict:
    """The model-level records (final norm, loss) under sequence parallelism: the final
    norm's insides are ``T / tp``; its output, gathered for ``lm_head``, and the loss's
    tensors stay whole (chapter 05)."""
    out = {}
    for name, t in records.items():
        if name.startswith("final_norm.") and "T" in t.axes and not name.endswith(".output"):
            t = t._replace(nbytes=_split(t.nbytes, 1, tp))
        out[name] = t
    return out
