"""The bridge from the bench to memlib's predictions (chapters 03, 04, 06, 08).

The bench measures transformers on the CPU under fake tensors; memlib predicts a GPU.
Comparing the two takes three settings, and this module is the only place that knows
them (scripts, tests and notebooks all call :func:`predict_like_bench` and
:func:`excluded`):

* the runtime is ``"transformers"`` (sliding caches keep the whole prefill, Falcon's
  new decoder caches every head...);
* a dropout mask on the CPU has the activation's dtype, not CUDA's one byte;
* a point where the CPU ran SDPA's *math* path (the ``S × S`` matrix materialised, which
  a GPU's fused kernel never does), or where the bench failed, is left out, with the
  reason.

The parallel scenarios (kind ``"parallel"``, chapter 05: a point of
``data/bench/parallel.jsonl``) add the distributed bench's settings: AdamW as a loop, and
FSDP2's post-backward hook as the bench instruments it (its wrapper holds the unsharded
gradients through the reduce-scatter); each scenario maps to a :class:`memlib.parallel.Plan`
(:func:`bench_plan`).

The RL scenarios (kind ``"rl"``, chapter 06) add the bench's RL settings: AdamW as a
loop, the policy generating with transformers (a prompt of ``S/4`` tokens, ``3S/4`` new
ones), mixed precision's fp32 KV cache and bf16 weight copies in every generating forward,
PEFT's fp32 adapters for LoRA; every phase is compared, not only the peak.

Importing this module does not import torch.
"""
from __future__ import annotations

from ..breakdown import Breakdown

#: The bench's optimizer names -> memlib's.
BENCH_OPTIMIZERS = {"adamw": "adamw", "sgd": "sgd_momentum"}
KINDS = ("weights", "kv", "prefill", "train", "rl", "parallel")

#: Why the distributed bench could not run a point, by a piece of its error (chapter 05).
PARALLEL_ERRORS = (
    ("Expected inputs of BF16 type", "the CPU's grouped_mm takes bf16 only, and mixed precision keeps the MoE "
                                     "experts in fp32 under autocast"),
    ("is invalid for input of size", "transformers' tp plan cannot split the KV heads over more ranks than there "
                                     "are heads (memlib copies a KV head per rank instead)"),
    ("Attempting to broadcast a dimension", "the MoE block's sequence-parallel layout does not match transformers' "
                                            "tensor-parallel experts"),
)


def excluded(measured: dict) -> str | None:
    """Why a measured point is left out of the accuracy statistics, or None to compare it."""
    if "error" in measured:
        err = " ".join(str(measured.get("error_root") or measured["error"]).split())
        for piece, why in PARALLEL_ERRORS:
            if piece in err or piece in str(measured["error"]):
                return f"bench error: {why} ({err[:60]})"
        return "bench error: " + err[:80]
    if measured.get("math_path"):
        return "CPU math attention path (a GPU runs a fused kernel)"
    return None


def predict_like_bench(point: dict, kind: str = "train") -> Breakdown:
    """memlib's prediction of a bench point, under the bench's settings (chapter 08).

    ``point`` has ``model`` and, by ``kind``: ``dtype`` (weights), ``batch_size`` and
    ``seq_len`` (kv, prefill, train), ``attention`` (prefill, train), ``precision``,
    ``recompute``, ``optimizer`` and ``optimizer_impl`` (train; a point that names no
    implementation is a reference row, ``"loop"``).  Returns the Breakdown of
    :func:`memlib.weight_memory`, :func:`memlib.kv_cache`, :func:`memlib.inference_memory`
    or :func:`memlib.train_memory`; for ``"rl"`` (a point of ``data/bench/rl.jsonl``:
    ``recipe``, ``batch_size``, ``seq_len``, ``group_size``, ``beta``, ``precision``,
    ``reference``, ``ref_order``, ``logprob``, ``lora_rank``; ``recipe="rollout"`` with
    ``prompt_len``/``new_tokens``) the phased Breakdown of :func:`memlib.rl.rl_memory`
    (:func:`memlib.rl.rollout_memory`).
    """
    from ..inference import inference_memory
    from ..kv_cache import kv_cache
    from ..training import train_memory
    from ..validation import choice
    from ..weights import weight_memory
    choice("kind", kind, KINDS)
    m = point["model"]
    if kind == "weights":
        return weight_memory(m, point.get("dtype", "bf16"))
    if kind == "kv":
        return kv_cache(m, point["seq_len"], point["batch_size"], runtime="transformers")
    if kind == "prefill":
        return inference_memory(m, point["batch_size"], point["seq_len"], attention=point.get("attention", "sdpa"),
                                runtime="transformers")
    if kind == "rl":
        return _predict_rl(point)
    if kind == "parallel":
        return _predict_parallel(point)
    return train_memory(m, point["batch_size"], point["seq_len"], precision=point.get("precision", "bf16"),
                        optimizer=BENCH_OPTIMIZERS[point.get("optimizer", "adamw")],
                        optimizer_impl=point.get("optimizer_impl", "loop"),
                        recompute=point.get("recompute", "none"), attention=point.get("attention", "sdpa"),
                        _bench_cpu=True)


def bench_plan(point: dict):
    """The :class:`memlib.parallel.Plan` of a distributed-bench point (chapter 05): ``ddp``
    (``dp=W``), ``zero1``/``zero2``/``zero3`` (``dp=W, zero=1..3``), ``tp`` (``tp=W``),
    ``tp_sp`` (``tp=W, sp``), ``pp`` (``pp=W`` with its micro-batches and schedule; the
    point's ``rank`` is the stage), ``ep`` (``dp=ep=W``, FSDP2 as in zero3)."""
    from ..parallel import Plan
    from ..validation import choice
    sc, W = choice("scenario", point["scenario"], PARALLEL_SCENARIOS), point["world_size"]
    if sc == "ddp":
        return Plan(dp=W)
    if sc.startswith("zero"):
        return Plan(dp=W, zero=int(sc[-1]))
    if sc in ("tp", "tp_sp"):
        return Plan(tp=W, sp=sc == "tp_sp")
    if sc == "pp":
        return Plan(pp=W, microbatches=point["microbatches"], schedule=point["schedule"])
    return Plan(dp=W, ep=W, zero=3)


PARALLEL_SCENARIOS = ("ddp", "zero1", "zero2", "zero3", "tp", "tp_sp", "pp", "ep")


def _predict_parallel(point: dict) -> Breakdown:
    """A distributed-bench point under the bench's settings (module docstring; chapter 05):
    the peak of the measured rank (rank 0; for ``pp`` the stage the point names)."""
    from ..parallel.rank import BenchSettings, rank_memory
    plan = bench_plan(point)
    return rank_memory(point["model"], point["batch_size"], point["seq_len"], plan,
                       precision=point.get("precision", "bf16"), attention=point.get("attention", "sdpa"),
                       optimizer_impl="loop", stage=point.get("rank", 0) if point["scenario"] == "pp" else 0,
                       _bench=BenchSettings(cpu=True, holds_unsharded_grads=plan.fsdp))


def _predict_rl(point: dict) -> Breakdown:
    """An RL bench point under the bench's settings (module docstring; chapter 06)."""
    from ..rl import rl_memory, rollout_memory
    m, attention = point["model"], point.get("attention", "sdpa")
    if point["recipe"] == "rollout":
        return rollout_memory(m, point["batch_size"], point["prompt_len"], point["new_tokens"],
                              group_size=point.get("group_size", 1), attention=attention)
    online = point["recipe"] in ("grpo", "ppo")
    return rl_memory(m, point["recipe"], point["batch_size"], point["seq_len"],
                     group_size=point.get("group_size", 1) if online else None, beta=point.get("beta"),
                     precision=point.get("precision", "bf16"), reference=point.get("reference", "live"),
                     ref_order=point.get("ref_order", "first"), logprob=point.get("logprob", "full"),
                     lora_rank=point.get("lora_rank"), logits_to_keep=point.get("logits_to_keep"),
                     prompt_len=point.get("prompt_len") if online else None,
                     optimizer_impl=point.get("optimizer_impl", "loop"), attention=attention, rollout="hf",
                     _bench_cpu=True)


def measured_total(measured: dict, kind: str = "train") -> int:
    """The bench's number that :func:`predict_like_bench`'s ``total`` predicts."""
    if kind == "rl":
        return measured["peak"]
    if kind in ("train", "parallel"):
        return measured["train_peak"]
    if kind == "prefill":
        return measured["weights"] + measured["prefill_peak"]
    if kind == "kv":
        return measured["kv_cache"]
    return measured["weights"]


def compare(record: dict, kind: str = "train") -> dict:
    """One stored bench record (``{"point", "measured"}``) against memlib: ``predicted``,
    ``measured``, signed ``error`` (predicted / measured − 1), ``phase`` and
    ``predicted_phase`` (train, rl), or ``excluded`` with the reason.  For ``"rl"``,
    ``phases`` compares every phase (``{phase: {predicted, measured, error}}``) and
    ``phase_mismatch`` lists phases only one side has."""
    p, m = record["point"], record["measured"]
    why = excluded(m)
    if why:
        return {"point": p, "excluded": why}
    pred = predict_like_bench(p, kind)
    meas = measured_total(m, kind)
    out = {"point": p, "predicted": int(pred.total), "measured": int(meas),
           "error": (int(pred.total) - meas) / meas}
    if kind in ("train", "rl", "parallel"):
        out.update(phase=m["peak_phase"], predicted_phase=pred.peak_phase)
    if kind == "rl":
        measured_phases = m.get("phase_peak") or {"generate": m["peak"]}
        out["phases"] = {ph: {"predicted": int(pred.phases[ph]), "measured": int(v),
                              "error": (int(pred.phases[ph]) - v) / v}
                         for ph, v in measured_phases.items()}
        missing = set(pred.phases) ^ set(measured_phases)
        if missing:
            out["phase_mismatch"] = sorted(missing)
    if kind == "prefill":
        out["kv_error"] = int(pred["kv_cache"]) - m["kv_cache"]
    return out
