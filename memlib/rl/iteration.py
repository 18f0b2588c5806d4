"""One RL iteration on one GPU, phase by phase and role by role (chapter 06).

:func:`rl_memory` assembles the iteration from its parts:

1. **resident**: every role's weights (and the trained roles' optimizer state) through
   every phase (:mod:`memlib.rl.roles`); a colocated engine's weights and KV pool, as its
   sleep mode allows (:mod:`memlib.rl.engine`);
2. **generate** (online recipes): the rollout of ``B = b·G`` sequences
   (:mod:`memlib.rl.generate`, or the engine's budget);
3. **score**: the reference, reward and critic forwards (:mod:`memlib.rl.score`), each
   keeping a few ``B × K`` fp32 tensors for the loss;
4. **train**: the policy's (and critic's) training step, the vocabulary-wide log-prob
   tensors included (:mod:`memlib.rl.train`).

``peak = max over phases of (resident + what the phase adds)``; the result names the
phase (``peak_phase``) and the moment (``peak_at``), and keeps one child per role.
"""
from __future__ import annotations

from ..scenario import ATTENTIONS, DEFAULT_OPTIMIZER_IMPL, OPTIMIZER_IMPLS, OPTIMIZERS, PRECISIONS, RECOMPUTE
from ..scenario import check_seq_len
from ..spec import load_spec
from ..symbolic import evaluate
from ..validation import choice, positive_int
from .engine import ENGINE_WEIGHTS, ROLLOUTS, SLEEP_MODES, colocated_engine
from .generate import hf_rollout, rollout_kv_dtype
from .logprobs import LOGPROB_FORMS, vocab_bytes
from .recipes import DEFAULT_BETA, get_recipe, group_size_for, needs_reference
from .roles import ROLES, Role
from .score import reference_moments, scalar_head_moments
from .timeline import summarize
from .train import critic_step, joint_step, policy_step, single_step

REFERENCE_MODES = ("live", "precomputed")
REF_ORDERS = ("first", "after_policy")


def _check_beta(beta) -> float:
    try:
        b = float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"beta: must be a number >= 0, got {beta!r}") from None
    if not b >= 0 or b == float("inf"):
        raise ValueError(f"beta: must be a finite number >= 0, got {beta!r}")
    return b


def _idle(parts: dict) -> dict:
    """A trained role between steps: weights, adapters and optimizer state only."""
    return {k: (v if k in ("weights", "adapters", "optimizer") else 0) for k, v in parts.items()}


def rl_memory(model, recipe: str = "grpo", batch_size: int = 1, seq_len: int = 1024, *, group_size=None,
              beta=None, precision: str = "bf16", reference: str = "live", ref_order: str = "first",
              reward_model="auto", critic_model=None, lora_rank=None, lora_targets="all-linear",
              critic_shares_base: bool = False, logprob: str = "full", logits_to_keep=None, prompt_len=None,
              optimizer: str = "adamw", optimizer_impl: str = DEFAULT_OPTIMIZER_IMPL, recompute: str = "none",
              attention: str = "sdpa", rollout: str = "hf", gpu="H100-80GB", gpu_memory_utilization: float = 0.3,
              engine_weights: str = "own", sleep: str = "none", vllm_version=None, engine_tp: int = 1,
              _bench_cpu: bool = False):
    """Peak GPU memory of one RL iteration, by phase and by role (chapter 06).

    ``recipe``: sft, dpo, grpo, rloo, ppo or online_dpo (:mod:`memlib.rl.recipes`);
    ``batch_size`` b is sequences (sft), preference pairs (dpo) or prompts (the online
    recipes), ``group_size`` G completions per prompt, ``seq_len`` S = prompt + completion.
    ``beta`` (the KL or DPO coefficient; default :data:`memlib.rl.recipes.DEFAULT_BETA`):
    ``0`` drops the reference of the online recipes.  ``reference="precomputed"`` (DPO):
    reference log-probs computed beforehand, no reference model; ``ref_order="after_policy"``
    (DPO): the reference forward runs while the policy's graph is alive (TRL v1.9.0's order).
    ``reward_model``: ``"auto"`` (the policy's architecture for rloo, ppo and online_dpo;
    none for grpo: a rule-based reward), ``None``, or any model; ``critic_model`` (PPO,
    default the policy's).  ``lora_rank``: a LoRA policy (PEFT's fp32 adapters on a frozen
    bf16 base; its reference is the base with the adapters off) and critic
    (``critic_shares_base``: on the policy's base).  ``logprob``: ``"full"`` or TRL's
    ``"selective"``; ``logits_to_keep`` K: positions scored (default S).  ``prompt_len``
    (default S/4).  ``rollout``: ``"hf"`` (the policy generates, transformers),
    ``"vllm"`` (a colocated engine: ``gpu``, ``gpu_memory_utilization``,
    ``engine_weights`` own|shared, ``sleep`` none|kv|all, ``vllm_version``, ``engine_tp``: the
    engine's tensor-parallel size, its numbers per GPU) or
    ``"separate"`` (other GPUs).  ``precision``, ``optimizer``, ``optimizer_impl``,
    ``recompute`` and ``attention`` are the training step's (chapter 04).

    ``peak = max over phases (generate, score, train.forward, train.backward, train.step)
    of Σ roles``; ``children`` are the roles (policy, reference, reward, critic, rollout)
    with their bytes at each phase's peak; ``meta`` has the knobs, the sequences, the
    rollout's KV cache, the engine's budget and every moment (``timeline``).
    """
    spec = load_spec(model)
    rec = get_recipe(recipe)
    b = positive_int("batch_size", batch_size)
    S = check_seq_len(spec, positive_int("seq_len", seq_len, minimum=2))
    G = group_size_for(rec, group_size)
    beta = _check_beta(DEFAULT_BETA[rec.name] if beta is None else beta)
    choice("precision", precision, PRECISIONS)
    choice("reference", reference, REFERENCE_MODES)
    choice("ref_order", ref_order, REF_ORDERS)
    choice("logprob", logprob, LOGPROB_FORMS)
    choice("optimizer", optimizer, OPTIMIZERS)
    choice("optimizer_impl", optimizer_impl, OPTIMIZER_IMPLS)
    choice("recompute", recompute, RECOMPUTE)
    choice("attention", attention, ATTENTIONS)
    choice("rollout", rollout, ROLLOUTS)
    choice("sleep", sleep, SLEEP_MODES)
    choice("engine_weights", engine_weights, ENGINE_WEIGHTS)
    if reference == "precomputed" and rec.name != "dpo":
        raise ValueError(f"reference: 'precomputed' is for dpo (an online recipe scores what it just generated), "
                         f"not {rec.name}")
    if ref_order == "after_policy" and rec.loss != "dpo":
        raise ValueError(f"ref_order: 'after_policy' is TRL's DPO order; {rec.name} scores first")
    lora = lora_rank is not None
    if lora:
        lora_rank = positive_int("lora_rank", lora_rank)
        if precision != "bf16":
            raise ValueError("precision: a LoRA policy is modelled as PEFT trains it, a bf16 base with fp32 "
                             "adapters and no autocast; use precision 'bf16'")
    if critic_shares_base and not (lora and rec.critic):
        raise ValueError("critic_shares_base: only a LoRA critic (ppo with lora_rank) can share the policy's base")
    if critic_model is not None and not rec.critic:
        raise ValueError(f"critic_model: only ppo has a critic, not {rec.name}")
    if not rec.generates and (rollout != "hf" or prompt_len is not None):
        raise ValueError(f"rollout: {rec.name} trains on a fixed dataset and does not generate"
                         if rollout != "hf" else f"prompt_len: {rec.name} does not generate")
    K = S if logits_to_keep is None else positive_int("logits_to_keep", logits_to_keep)
    if K > S:
        raise ValueError(f"logits_to_keep: must be <= seq_len ({S}), got {K}")
    P = S // 4 if prompt_len is None else positive_int("prompt_len", prompt_len)
    if rec.generates and P >= S:
        raise ValueError(f"prompt_len: must be < seq_len ({S}), got {P}")
    if reward_model == "auto":
        reward_model = model if rec.reward else None
    rspec = load_spec(reward_model) if reward_model is not None else None
    cspec = load_spec(critic_model if critic_model is not None else model) if rec.critic else None
    if critic_shares_base and cspec != spec:
        raise ValueError("critic_shares_base: the critic must have the policy's architecture to share its base")
    if rec.generates and rollout == "vllm":
        positive_int("engine_tp", engine_tp)
    if not isinstance(lora_targets, str):
        lora_targets = tuple(lora_targets)
    return evaluate(_rl_result, (b, S), spec, rec, G, beta, precision, reference, ref_order, rspec, cspec, lora_rank,
                    lora_targets, critic_shares_base, logprob, logits_to_keep, prompt_len, optimizer, optimizer_impl,
                    recompute, attention, rollout, gpu, gpu_memory_utilization, engine_weights, sleep, vllm_version,
                    engine_tp, _bench_cpu)


def _rl_result(b, S, spec, rec, G, beta, precision, reference, ref_order, rspec, cspec, lora_rank, lora_targets,
               critic_shares_base, logprob, logits_to_keep, prompt_len, optimizer, optimizer_impl, recompute,
               attention, rollout, gpu, gpu_memory_utilization, engine_weights, sleep, vllm_version, engine_tp,
               _bench_cpu):
    """:func:`rl_memory` for checked knobs (evaluated through :mod:`memlib.symbolic`:
    compiled once per model and knobs)."""
    lora = lora_rank is not None
    B = rec.sequences(b, G)
    K = S if logits_to_keep is None else logits_to_keep
    P = S // 4 if prompt_len is None else prompt_len
    knobs = dict(optimizer=optimizer, optimizer_impl=optimizer_impl, recompute=recompute, attention=attention,
                 lora_targets=lora_targets, _bench_cpu=_bench_cpu)

    # -- the roles ------------------------------------------------------------------------------
    roles = {"policy": Role("policy", spec, "lm", True, precision, lora_rank)}
    with_ref = needs_reference(rec, beta, reference)
    if with_ref:
        roles["reference"] = Role("reference", spec, "lm", shares_base="policy" if lora else None)
    if rspec is not None:
        roles["reward"] = Role("reward", rspec, "value")
    if rec.critic:
        roles["critic"] = Role("critic", cspec, "value", True, precision, lora_rank,
                               shares_base="policy" if critic_shares_base else None)

    # -- train ------------------------------------------------------------------------------------
    form = "sft" if rec.loss == "sft" else logprob
    pol = policy_step(roles["policy"], B, S, positions=K, logprob=form, **knobs)
    if rec.critic:
        crit = critic_step(roles["critic"], B, S, **knobs)
        train = joint_step(pol, crit)
    else:
        crit = None
        train = single_step(pol)
    resident = {"policy": _idle(pol.moments[0][2])}
    if crit is not None:
        resident["critic"] = _idle(crit.moments[0][2])
    for name in ("reference", "reward"):
        if name in roles:
            resident[name] = {"weights": roles[name].weight_bytes}
    if with_ref and ref_order == "after_policy":       # TRL's DPO order: the reference runs inside the train step
        end = next(i for i, m in enumerate(train) if m[0] == "train.forward" and m[1] == "end")
        extra = [("train.forward", f"reference forward ({label.split(': ')[1]})",
                  {**train[end][2], "reference": {**resident["reference"], **parts}})
                 for label, parts in reference_moments(spec, B, S, K, logprob, attention)]
        train[end + 1:end + 1] = extra

    # -- score ------------------------------------------------------------------------------------
    kept: dict = {}
    score = []
    if with_ref and ref_order == "first":
        for label, parts in reference_moments(spec, B, S, K, logprob, attention):
            score.append((label, {"reference": parts}))
        kept["reference"] = {"logps": 4 * B if rec.loss == "dpo" else 4 * B * K}
    if "reward" in roles:
        rspec = roles["reward"].spec
        for label, parts in scalar_head_moments(rspec, B, S, attention):
            score.append((f"reward {label}", {"reward": parts, **_kept(kept)}))
        kept["reward"] = {"scores": 8 * B}
    if crit is not None:
        for label, parts in scalar_head_moments(roles["critic"].spec, B, S, attention, precision == "mixed"):
            score.append((f"critic {label}", {"critic": parts, **_kept(kept)}))
        kept["critic"] = {"values": 3 * 4 * B * K}

    # -- generate ---------------------------------------------------------------------------------
    generate = []
    engine = None
    if rec.generates:
        if rollout == "hf":
            gen_precision = "bf16" if lora else precision
            generate = [(label, {"rollout": parts})
                        for label, parts in hf_rollout(spec, B, P, S - P, gen_precision, attention)]
        elif rollout == "vllm":
            engine = colocated_engine(spec, B, S, gpu, gpu_memory_utilization, engine_weights, sleep, vllm_version,
                                      tp=engine_tp)
            generate = [("vLLM engine generating", {"rollout": engine["generate"]})]
        else:
            generate = [("waiting for the rollout GPUs", {})]

    # -- the moments, resident memory added --------------------------------------------------------
    idle_engine = {"rollout": engine["idle"]} if engine is not None else {}
    moments = []
    for label, parts in generate:
        moments.append(("generate", label, _merge(resident, parts)))
    for label, parts in score:
        moments.append(("score", label, _merge(resident, idle_engine, parts)))
    after_score = _kept(kept)
    for ph, label, parts in train:
        others = {k: v for k, v in resident.items() if k not in parts}
        moments.append((ph, label, _merge(others, idle_engine, after_score, parts)))

    order = [r for r in ROLES if r in roles or (r == "rollout" and rec.generates and rollout != "separate")]
    meta = {"model": spec.name, "recipe": rec.name, "batch_size": b, "group_size": G, "sequences": B, "seq_len": S,
            "positions": K, "beta": beta, "precision": precision, "optimizer": optimizer,
            "optimizer_impl": optimizer_impl, "recompute": recompute, "attention": attention, "logprob": logprob,
            "lora_rank": lora_rank, "reference": _reference_kind(rec, with_ref, reference, lora),
            "ref_order": ref_order if with_ref else None,
            "roles": {n: {"model": r.spec.name, "head": r.head, "trained": r.trained, "params": r.params,
                          "precision": r.precision if r.trained else "bf16", "shares_base": r.shares_base,
                          "lora_rank": r.lora_rank if r.trained else None} for n, r in roles.items()},
            "rollout": rollout if rec.generates else None,
            "prompt_len": P if rec.generates else None, "new_tokens": S - P if rec.generates else None,
            "vocab_bytes": vocab_bytes(form, B, K, spec.vocab_size)._asdict()}
    if rec.generates and rollout == "hf":
        meta["kv_cache"] = max(parts["rollout"]["kv_cache"] for _, parts in generate)
        meta["kv_dtype"] = rollout_kv_dtype(spec, "bf16" if lora else precision)
    if engine is not None:
        meta.update(engine=engine["budget"].meta | {"components": dict(engine["budget"].components)},
                    kv_cache=engine["generate"]["kv_cache"], kv_needed=engine["kv_needed"],
                    fits_rollout=engine["fits_rollout"], sleep=sleep, engine_weights=engine_weights,
                    gpu=engine["budget"].meta["gpu"], gpu_memory_utilization=gpu_memory_utilization,
                    engine_tp=engine_tp)
    title = (f"{spec.name} {rec.name}, b={b}" + (f" G={G}" if rec.groups else "") + f" s={S} {precision}"
             + (f" LoRA r={lora_rank}" if lora else "") + (f", beta={beta:g}" if rec.name != "sft" else ""))
    return summarize(moments, order, title, meta)


def _kept(kept: dict) -> dict:
    return {role: dict(parts) for role, parts in kept.items()}


def _merge(*layers) -> dict:
    """Role-wise sum of several ``{role: {part: bytes}}``."""
    out: dict = {}
    for layer in layers:
        for role, parts in layer.items():
            mine = out.get(role)
            if mine is None:                 # the role's first parts: a copy
                out[role] = dict(parts)
                continue
            for k, v in parts.items():
                mine[k] = mine.get(k, 0) + v
    return out


def _reference_kind(rec, with_ref, reference, lora) -> str:
    if rec.name == "dpo" and reference == "precomputed":
        return "precomputed log-probs"
    if not with_ref:
        return "none"
    return "the policy with its adapters disabled" if lora else "a frozen bf16 copy"


def rollout_memory(model, batch_size: int, prompt_len: int, new_tokens: int, *, group_size: int = 1,
                   attention: str = "sdpa"):
    """A frozen bf16 model generating ``batch_size × group_size`` completions alone (chapter 06):
    its weights plus the largest moment of :func:`memlib.rl.generate.hf_rollout` (the bench's
    ``rollout`` scenario).  One phase, ``generate``; one role, ``rollout``."""
    spec = load_spec(model)
    B = positive_int("batch_size", batch_size) * positive_int("group_size", group_size)
    P = positive_int("prompt_len", prompt_len)
    n = positive_int("new_tokens", new_tokens)
    check_seq_len(spec, P + n)
    choice("attention", attention, ATTENTIONS)
    return evaluate(_rollout_result, (B, P, n), spec, attention)


def _rollout_result(B, P, n, spec, attention):
    """:func:`rollout_memory` for checked inputs (evaluated through :mod:`memlib.symbolic`)."""
    w = Role("rollout", spec).weight_bytes
    moments = [("generate", label, {"rollout": {"weights": w, **parts}})
               for label, parts in hf_rollout(spec, B, P, n, "bf16", attention)]
    meta = {"model": spec.name, "sequences": B, "prompt_len": P, "new_tokens": n,
            "kv_cache": max(p["rollout"]["kv_cache"] for _, _, p in moments)}
    return summarize(moments, ["rollout"], f"{spec.name} rollout {B} x ({P} + {n}) tokens, bf16", meta)
