"""Command line for chapter 06: ``python -m memlib rl CONFIG --recipe ... --batch-size B --seq-len S``.

Prints one RL iteration's peak by phase and by role (:func:`memlib.rl.rl_memory`); with
``--json`` the keys ``peak``, ``peak_phase``, ``phases`` (bytes at each phase's peak) and
``roles`` (each with ``peak``, ``phases`` and ``components`` at the peak) are a contract
other tools rely on.  Registered by ``memlib.cli.EXTRA_COMMANDS``.
"""
from __future__ import annotations

import json

from ..breakdown import Breakdown
from ..cli import _float, _int
from ..units import GiB


def payload(args, r) -> dict:
    """The JSON contract of ``rl`` (module docstring) from a :func:`memlib.rl.rl_memory` result (chapter 06)."""
    m = r.meta
    roles = {}
    for c in r.children:
        roles[c.label] = {"peak": int(c.at(r.peak_phase)), "phases": {k: int(v) for k, v in c.phases.items()},
                          "components": {k.split(".", 1)[1]: int(v) for k, v in c.components.items()},
                          **{k: m["roles"][c.label][k] for k in ("model", "trained", "params")
                             if c.label in m["roles"]}}
    out = {"model": args.model, "recipe": m["recipe"], "peak": int(r.total), "peak_phase": r.peak_phase,
           "peak_at": r.peak_at, "phases": {k: int(v) for k, v in r.phases.items()}, "roles": roles,
           "components": {k: int(v) for k, v in r.components.items()},
           "batch_size": m["batch_size"], "group_size": m["group_size"], "sequences": m["sequences"],
           "seq_len": m["seq_len"], "beta": m["beta"], "precision": m["precision"], "lora_rank": m["lora_rank"],
           "reference": m["reference"], "rollout": m["rollout"], "kv_cache": m.get("kv_cache")}
    if "engine" in m:
        out["engine"] = {"gpu": m["gpu"], "gpu_memory_utilization": m["gpu_memory_utilization"],
                         "sleep": m["sleep"], "weights": m["engine_weights"], "kv_cache_bytes": m["kv_cache"],
                         "kv_needed_bytes": m["kv_needed"], "fits_rollout": m["fits_rollout"],
                         "budget": m["engine"]["budget"]}
    return out


def text(r) -> str:
    """A table of the peak's components, then each role at each phase's peak, in GiB (chapter 06)."""
    at_peak = Breakdown(r.components, title=r.title, kinds=r.kinds)       # the peak's components, phases below
    lines = [at_peak.table(), "", "by role (GiB) at each phase's peak:"]
    phases = list(r.phases)
    head = f"{'role':<12}" + "".join(f"{p:>16}" for p in phases)
    lines += [head, "-" * len(head)]
    for c in r.children:
        lines.append(f"{c.label:<12}" + "".join(f"{c.at(p) / GiB:>16.2f}" for p in phases))
    lines.append(f"{'total':<12}" + "".join(f"{r.phases[p] / GiB:>16.2f}" for p in phases))
    lines.append(f"\npeak: {r.total / GiB:.2f} GiB in {r.peak_phase} ({r.peak_at})")
    return "\n".join(lines)


def run_rl(args) -> int:
    """``rl``: :func:`memlib.rl.rl_memory` as a table or JSON (chapter 06)."""
    from . import rl_memory
    if args.colocate and args.separate:
        raise ValueError("rollout: --colocate and --separate exclude each other")
    rollout = "vllm" if args.colocate else "separate" if args.separate else "hf"
    r = rl_memory(args.model, args.recipe, args.batch_size, args.seq_len, group_size=args.group_size,
                  beta=args.beta, precision=args.precision, reference=args.reference, logprob=args.logprob,
                  logits_to_keep=args.logits_to_keep, prompt_len=args.prompt_len,
                  reward_model="auto" if args.reward_model is None else
                  (None if args.reward_model == "none" else args.reward_model),
                  critic_model=args.critic_model, lora_rank=args.lora_rank, critic_shares_base=args.critic_shares_base,
                  optimizer=args.optimizer, optimizer_impl=args.optimizer_impl, recompute=args.recompute,
                  attention=args.attention, rollout=rollout, gpu=args.gpu,
                  gpu_memory_utilization=args.gpu_memory_utilization, engine_weights=args.engine_weights,
                  sleep=args.sleep, vllm_version=args.vllm_version)
    if args.json:
        print(json.dumps(payload(args, r), indent=2))
    else:
        print(text(r))
    return 0


def add_parser(subparsers):
    """Register ``rl`` on an argparse ``subparsers`` object (chapter 06)."""
    from ..scenario import ATTENTIONS, DEFAULT_OPTIMIZER_IMPL, OPTIMIZER_IMPLS, OPTIMIZERS, PRECISIONS, RECOMPUTE
    from .engine import ENGINE_WEIGHTS, SLEEP_MODES
    from .logprobs import LOGPROB_FORMS
    from .recipes import RECIPES

    sp = subparsers.add_parser("rl", help="one RL iteration (sft, dpo, grpo, ppo...): peak by phase and by role",
                               description="Peak GPU memory of one RL post-training iteration on one GPU: the "
                                           "generate, score and train phases, and what each role holds.")
    sp.add_argument("model", help="catalog name (python -m memlib catalog) or path to a config.json")
    sp.add_argument("--recipe", required=True, choices=RECIPES)
    sp.add_argument("--batch-size", type=_int, required=True,
                    help="sequences (sft), preference pairs (dpo) or prompts (grpo, rloo, ppo, online_dpo)")
    sp.add_argument("--seq-len", type=_int, required=True, help="tokens per sequence (prompt + completion)")
    sp.add_argument("--group-size", type=_int, default=None, help="completions per prompt (grpo default 8)")
    sp.add_argument("--beta", type=_float, default=None, help="KL / DPO coefficient; 0 drops the reference")
    sp.add_argument("--precision", default="bf16", choices=PRECISIONS)
    sp.add_argument("--lora-rank", type=_int, default=None, help="LoRA policy (PEFT: fp32 adapters, bf16 base)")
    sp.add_argument("--critic-shares-base", action="store_true", help="a LoRA critic on the policy's base")
    sp.add_argument("--reference", default="live", choices=("live", "precomputed"))
    sp.add_argument("--logprob", default="full", choices=LOGPROB_FORMS,
                    help="full: log_softmax(logits.float()); selective: TRL's row-by-row form")
    sp.add_argument("--logits-to-keep", type=_int, default=None, help="positions scored (default: all)")
    sp.add_argument("--prompt-len", type=_int, default=None, help="prompt tokens of a rollout (default S/4)")
    sp.add_argument("--reward-model", default=None, help="catalog name or config.json, or 'none'")
    sp.add_argument("--critic-model", default=None, help="PPO's critic (default: the policy's architecture)")
    sp.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS)
    sp.add_argument("--optimizer-impl", default=DEFAULT_OPTIMIZER_IMPL, choices=OPTIMIZER_IMPLS)
    sp.add_argument("--recompute", default="none", choices=RECOMPUTE)
    sp.add_argument("--attention", default="sdpa", choices=ATTENTIONS)
    sp.add_argument("--colocate", action="store_true", help="generate with a vLLM engine on the same GPU")
    sp.add_argument("--separate", action="store_true", help="generate on other GPUs")
    sp.add_argument("--gpu", default="H100-80GB", help="the colocated engine's GPU (python -m memlib gpus)")
    sp.add_argument("--gpu-memory-utilization", type=_float, default=0.3, help="the colocated engine's share")
    sp.add_argument("--sleep", default="none", choices=SLEEP_MODES,
                    help="what the engine frees between generations: nothing, its KV cache, or all")
    sp.add_argument("--engine-weights", default="own", choices=ENGINE_WEIGHTS)
    sp.add_argument("--vllm-version", default=None, help="release whose accounting to follow")
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sp.set_defaults(func=run_rl)
    return sp
