"""Where the rollout runs: the policy itself, a colocated vLLM engine, or other GPUs (chapter 06).

* ``"hf"``: the policy generates with transformers' ``generate`` (:mod:`memlib.rl.generate`);
  no second copy of the weights, a cache exactly as large as the rollout.
* ``"vllm"``: a vLLM engine inside the trainer's process on the same GPU, as TRL's
  ``vllm_mode="colocate"``, verl and OpenRLHF run it.  It takes its share of the GPU at
  start-up, ``gpu_memory_utilization × total`` (chapter 07's budget,
  :func:`memlib.vllm.vllm_budget`): its own bf16 copy of the weights (``weights="own"``)
  or none (``"shared"``: it reads the trainer's), its activation reserve, non-torch
  memory, and a paged KV pool that fills the rest, whatever the rollout needs.  CUDA
  graphs sit on top of the budget.  TRL's colocated engine: ``max_model_len`` =
  prompt + completion, ``max_num_seqs`` = the step's sequences, ``max_num_batched_tokens
  = 4096``, which this module uses.
* ``"separate"``: generation on other GPUs (TRL's ``vllm_mode="server"``); this GPU holds
  only the trainer, and waits while they generate.

Between generations a colocated engine may sleep (``sleep``):

* ``"none"``: it keeps its weights and its whole KV pool through scoring and training;
* ``"kv"``: the KV pool is freed, the weights stay (waking only vLLM's ``weights`` tag,
  verl's ``free_cache_engine``);
* ``"all"``: vLLM's sleep level 1 (weights offloaded to CPU memory) or 2 (discarded),
  both freeing the KV pool too.  CUDA-graph pools and non-torch memory stay resident
  (vLLM's cuMem allocator only tags weights and KV cache; vllm-project/vllm PR #56373).

The engine's activation reserve is used only while it generates: its tensors return to
the caching allocator of the same process, where training reuses them.  The CUDA context
is the trainer's process's own, as for every estimate of a training step, and is left out.
"""
from __future__ import annotations

from ..spec import ModelSpec
from ..validation import choice, fraction

ROLLOUTS = ("hf", "vllm", "separate")
SLEEP_MODES = ("none", "kv", "all")
ENGINE_WEIGHTS = ("own", "shared")
#: TRL's colocated engine: ``max_num_batched_tokens=4096`` (GRPOTrainer, ``_init_vllm``).
COLOCATE_BATCHED_TOKENS = 4096


def colocated_engine(spec: ModelSpec, sequences: int, seq_len: int, gpu="H100-80GB",
                     gpu_memory_utilization: float = 0.3, weights: str = "own", sleep: str = "none",
                     vllm_version=None, max_num_batched_tokens: int = COLOCATE_BATCHED_TOKENS,
                     tp: int = 1) -> dict:
    """A colocated vLLM engine's bytes on the GPU, while generating and between generations (chapter 06).

    Returns ``{"generate": {part: bytes}, "idle": {part: bytes}, "budget": Breakdown,
    "kv_needed": bytes, "fits_rollout": bool}``.  While generating it holds its budget
    (``weights``, ``kv_cache``, ``activation_peak``, ``non_torch``; :func:`memlib.vllm.vllm_budget`)
    plus the CUDA graphs; idle it holds what ``sleep`` keeps (module docstring).
    ``kv_needed`` is what the rollout's ``sequences × seq_len`` tokens take in whole blocks;
    when the pool is smaller, vLLM runs fewer sequences at once (slower, not larger).
    ``tp``: the engine's tensor-parallel size (TRL's ``vllm_tensor_parallel_size``), every
    number per GPU (chapter 07's sharding); the rollout's sequences are then shared by the
    ``tp`` GPUs' common pool, so each GPU needs ``1/tp`` of their cache.
    """
    from ..serving import kv_bytes_per_request
    from ..vllm import DEFAULT_VERSION, vllm_budget
    choice("sleep", sleep, SLEEP_MODES)
    choice("engine_weights", weights, ENGINE_WEIGHTS)
    util = fraction("gpu_memory_utilization", gpu_memory_utilization)
    b = vllm_budget(spec, gpu, tp=tp, gpu_memory_utilization=util, max_model_len=seq_len, max_num_seqs=sequences,
                    max_num_batched_tokens=max_num_batched_tokens, vllm_version=vllm_version or DEFAULT_VERSION,
                    weights=0 if weights == "shared" else None)
    if b.meta["available_kv_bytes"] <= 0:
        raise ValueError(f"gpu_memory_utilization: {util} of {b.meta['gpu']} leaves no KV cache for "
                         f"{spec.name}'s colocated engine (its weights and reserves take "
                         f"{(b.meta['budget'] - b.meta['available_kv_bytes']) / 2**30:.1f} GiB); raise it")
    graphs = b.components.get("cuda_graphs", 0) + b.meta["outside_budget"].get("cuda_graphs", 0)
    generate = {"weights": b["weights"], "kv_cache": b["kv_cache"], "activations": b["activation_peak"],
                "non_torch": b["non_torch"], "cuda_graphs": graphs}
    idle = {"weights": b["weights"] if sleep != "all" else 0, "kv_cache": b["kv_cache"] if sleep == "none" else 0,
            "non_torch": b["non_torch"], "cuda_graphs": graphs}
    need = -(-sequences * kv_bytes_per_request(spec, seq_len, tp, kv_dtype="bf16") // tp)
    return {"generate": generate, "idle": idle, "budget": b, "kv_needed": need,
            "fits_rollout": bool(need <= b["kv_cache"])}
