"""The generate phase of an RL step: the rollout and its KV cache (chapter 06).

The online recipes first generate their training data: ``B = b·G`` completions, each a
prompt of ``P`` tokens plus ``S − P`` new ones.  Generation is inference (chapters 02 and
03): one prefill of the prompts, then one decode step per new token, each appending one
position to the KV cache.  The last sampled token is never fed back, so the cache ends
with ``S − 1`` positions::

    kv_cache = 2 · layers · B · (S − 1) · n_kv · head_dim · bytes      (chapter 02)

which is ``G`` times what ``b`` prompts with one completion each would hold: the group
multiplies the rollout's KV cache.

:func:`hf_rollout` is transformers' ``generate`` run by the policy itself (what the bench
measures): the cache is a ``DynamicCache`` that grows by ``torch.cat``, so while the last
layer appends its last position the old and the new key tensor of that layer exist at
once (one layer's ``K`` of ``S − 2`` positions on top of the cache).  Sampling copies the
last logits to fp32 and takes their softmax: ``8·B·V`` bytes.  Under mixed precision
every forward runs in its own autocast region, which caches a bf16 copy of every matmul
weight (lm_head included, chapter 04) until the forward returns, and the cache is fp32
for a RoPE model (the fp32 ``cos``/``sin`` promote ``K``, and transformers' cache layer
stores ``V`` in ``K``'s dtype).  The generate phase's peak is the largest of these
moments; the prefill never wins for ``P ≤ S/2``, but it is computed too.

A vLLM engine instead holds a paged KV pool sized by ``gpu_memory_utilization``
(:mod:`memlib.rl.engine`).
"""
from __future__ import annotations

from ..activations import prefill_transients
from ..kv_cache import kv_cache, layer_bytes_per_token
from ..scenario import Scenario
from ..spec import ModelSpec
from ..training import _cache_parts, matmul_weight_params


def rollout_kv_dtype(spec: ModelSpec, precision: str) -> str:
    """The KV cache's dtype in transformers' ``generate`` (chapter 06): bf16, or fp32 under
    mixed precision for a model with rotary positions (fp32 ``cos``/``sin`` promote ``K``;
    the cache layer allocates ``V`` in ``K``'s dtype)."""
    return "fp32" if precision == "mixed" and not spec.learned_positions else "bf16"


def hf_rollout(spec: ModelSpec, sequences: int, prompt_len: int, new_tokens: int, precision: str = "bf16",
               attention: str = "sdpa") -> list:
    """The moments of transformers' ``generate`` for ``sequences`` rows (chapter 06).

    Returns ``[(label, {part: bytes})]`` with parts ``kv_cache``, ``autocast_cache``,
    ``activations`` and ``logits``:

    * ``prefill``: ``kv(P)`` + the prefill's largest transient (chapter 03) [+ every autocast
      copy]; then its sampling, ``kv(P) + 8·B·V``;
    * ``decode: last layer``: ``kv(S − 1)`` + one layer's ``K`` at ``S − 2`` positions
      (the ``torch.cat`` of the last step) [+ every layer's autocast copy];
    * ``decode: lm_head`` (mixed only): ``kv(S − 1)`` + every autocast copy + the step's
      bf16 logits, ``2·B·V``;
    * ``sampling``: ``kv(S − 1)`` + fp32 logits and their softmax, ``8·B·V``.
    """
    B, P, V = sequences, prompt_len, spec.vocab_size
    S = P + new_tokens
    kv_dtype = rollout_kv_dtype(spec, precision)
    mixed = precision == "mixed"
    cache_all = 2 * matmul_weight_params(spec) if mixed else 0
    cache_layers = cache_all - (_cache_parts(spec)[2] if mixed else 0)
    prefill_sc = Scenario(B, P, "bf16", attention)
    prefill = max(prefill_transients(spec, prefill_sc, 2, 4 if mixed else 2).values())
    kv_prompt = kv_cache(spec, P, B, kv_dtype, runtime="transformers").total
    out = [("prefill", {"kv_cache": kv_prompt, "autocast_cache": cache_all, "activations": prefill}),
           ("prefill: sampling", {"kv_cache": kv_prompt, "logits": 8 * B * V})]
    if new_tokens < 2:            # no decode step: the prefill's sampling is the last moment
        return out
    kv_end = kv_cache(spec, S - 1, B, kv_dtype, runtime="transformers").total
    one_k = layer_bytes_per_token(spec, kv_dtype, runtime="transformers") // 2 * B * (S - 2)
    out.append(("decode: last layer", {"kv_cache": kv_end, "autocast_cache": cache_layers, "activations": one_k}))
    if mixed:
        out.append(("decode: lm_head", {"kv_cache": kv_end, "autocast_cache": cache_all, "logits": 2 * B * V}))
    out.append(("sampling", {"kv_cache": kv_end, "logits": 8 * B * V}))
    return out
