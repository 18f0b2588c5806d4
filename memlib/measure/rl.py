"""The RL scenarios of the bench (chapter 06): sft, dpo, grpo, ppo and the rollout.

Everything runs on one device (fake tensors on the CPU by default), in one session that
holds every model the recipe needs (:class:`memlib.measure.rl_models.RLSession`), and one
:class:`memlib.measure.rl_counter.RoleCounter` that counts every live storage and knows
which role allocated it.

**Roles.**

* *policy*: ``AutoModelForCausalLM``, trained; ``precision="bf16"`` (bf16 weights,
  gradients, AdamW state) or ``"mixed"`` (fp32 weights, gradients and state; the
  forward and the loss inside ``torch.autocast(bfloat16)``, the backward outside it;
  on the CPU CUDA's autocast op list is emulated, :mod:`memlib.measure.autocast`).
  ``train()`` mode.  AdamW (``optimizer_impl``: ``"loop"`` = ``foreach=False``, the
  bench's reference rows, ``"foreach"``, ``"fused"``); one optimizer over every trained
  parameter (with PPO: the policy's and the critic's, as TRL's ``PolicyAndValueWrapper``).
* *reference*: a frozen bf16 ``AutoModelForCausalLM`` of the policy's architecture, in
  ``eval()``, run under ``no_grad``.  With ``lora_rank`` there is no reference model: the
  reference is the policy with its adapters disabled (no second copy).
* *reward*: a frozen bf16 ``AutoModelForSequenceClassification(num_labels=1)`` in
  ``eval()`` under ``no_grad`` (any catalog model: it may be another size); the reward is
  its ``score`` head on the last position (TRL's ``get_reward``).
* *critic* (PPO): an ``AutoModelForSequenceClassification(num_labels=1)`` trained like
  the policy (same precision); values = ``score(backbone(ids).last_hidden_state)`` at
  every position, as TRL v1.9.0's ``PolicyAndValueWrapper`` computes them.
* *rollout*: the policy generating (``eval()``, ``no_grad``, ``use_cache=True``).

**One iteration** has up to three phases, each a ``counter`` phase:

1. ``generate`` (grpo, ppo; ``generate=True``): the rollout, see :func:`rollout`.
2. ``score`` (``no_grad``): the reference forward (kept: its per-token log-probs, ``B x S``
   fp32; DPO keeps only their sums), the reward forward (kept: ``B`` scores) and, for
   PPO, the critic forward (kept: ``B x S`` old values, advantages and returns).  A recipe
   with none of these (sft, dpo with precomputed reference log-probs, grpo with
   ``beta=0`` and no reward model, dpo with ``ref_order="after_policy"``) has no score phase.
3. ``train.forward`` (forward and loss), ``train.backward``, ``train.step``
   (``opt.step()`` and ``opt.zero_grad(set_to_none=True)``).

Two iterations run; the second is measured after ``gc.collect()`` (the optimizer state
then exists).  The batch (token ids, shifted labels, loss mask, advantages; DPO's
precomputed reference log-probs) is made before counting starts, as in every bench scenario,
and is not part of any peak.

**Recipes** (``B`` = sequences in one step, ``S`` = ``seq_len``; ``lp`` = the policy's
per-token log-probs (:func:`memlib.measure.rl_logprobs.token_logprobs`), ``m`` = loss mask):

* ``sft`` (baseline): ``B = b``; ``loss = model(ids, labels=ids).loss`` (transformers'
  own cross-entropy); no reference.
* ``dpo``: b preference pairs, ``B = 2b`` (chosen then rejected, one concatenated
  forward); the reference forward first (``ref_order="first"``, the reference order) keeps only the
  summed log-probs ``rc, rr``; then ``pc, pr = (lp * m).sum(-1).chunk(2)``,
  ``loss = -logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()``.
  ``reference="precomputed"``: no reference model; ``rc, rr`` are inputs.
  ``ref_order="after_policy"``: TRL v1.9.0's order (``DPOTrainer._compute_loss`` runs the
  reference forward after the policy forward, while the policy's graph is alive).
* ``grpo``: b prompts x G completions, ``B = bG``; reference forward first unless
  ``beta == 0`` (then there is no reference model at all); per-token
  ``-(exp(lp - lp.detach()) * A) + beta * (exp(r - lp) - (r - lp) - 1)`` (k3 KL, r = the
  reference log-probs), averaged over each sequence's mask, then over sequences.
  ``A`` comes from the reward model's scores, group-normalised, when ``reward_model`` is
  given; otherwise (a rule-based reward) it is an input.
* ``ppo``: grpo's policy loss plus a critic: score phase = reference, reward, critic
  forwards; train = policy forward, critic forward, ``loss = pg + 0.1 * vf`` with the
  clipped value loss ``0.5 * max((v - R)^2, (clip(v, v_old +- 0.2) - R)^2)``, one backward,
  one step.  (TRL puts the KL into the reward instead of the loss: the bytes are the
  same ``B x S`` tensors.)

``logprob="selective"`` uses TRL v1.9.0's row-by-row log-softmax instead of the full
form; ``logits_to_keep=k`` computes the logits of the last k positions only (TRL's GRPO
passes the completion length).

**Result.** A :class:`memlib.Breakdown`: ``components`` = what is live at the peak by
role (``policy.weights``, ``policy.gradients``, ``policy.optimizer``, ``policy.activations``,
``policy.logits`` -- vocabulary-wide tensors --, ``reference.weights``, ``reference.logps``,
``reward.weights``, ``critic.*``, ``rollout.kv_cache``, ``backward.*`` -- temporaries of the
backward --, ``step.*``...); ``phases`` = the peak of each phase, ``peak_phase`` where the
peak falls; ``meta["phase_components"]`` the components at each phase's peak,
``meta["roles"]`` the peak's components grouped by role, ``meta["kv_cache"]`` the cache
bytes at the end of the rollout, ``meta["largest_at_peak"]`` the biggest storages.
"""
from __future__ import annotations

import contextlib
import gc
import time

import torch
import torch.nn.functional as F

from ..breakdown import Breakdown
from ..validation import choice, positive_int
from .counter import unique_storage_bytes
from .rl_counter import RoleCounter
from .rl_logprobs import LOGPROB_FORMS, token_logprobs
from .rl_models import RLSession, add_lora, lora_disabled, lora_params, scalar_head_forward, vocab_size
from .scenarios import attention_kernel, tensors_in

__all__ = ["measure_rl", "measure_rollout", "rollout", "RECIPES", "PHASES"]

RECIPES = ("sft", "dpo", "grpo", "ppo")
PHASES = ("generate", "score", "train.forward", "train.backward", "train.step")
PRECISIONS = ("bf16", "mixed")
OPTIMIZER_IMPLS = ("loop", "foreach", "fused")
DEFAULT_BETA = {"sft": 0.0, "dpo": 0.1, "grpo": 0.04, "ppo": 0.04}
VF_COEF, CLIP = 0.1, 0.2


def _adamw(params, impl):
    kw = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[impl]
    return torch.optim.AdamW(params, **kw)


def _opt_state(opt, param):
    st = opt.state.get(param)
    return list(tensors_in(st)) if st else []


# -- the rollout ------------------------------------------------------------------------------
def rollout(model, prompt_ids, new_tokens: int, autocast=None, counter=None, exact_steps=None):
    """Generate ``new_tokens`` tokens per row of ``prompt_ids`` with a KV cache; returns ``(ids, cache)``.

    One prefill of the prompt (``use_cache=True, logits_to_keep=1``), then
    ``new_tokens - 1`` decode steps of one token each (the last sampled token is never
    fed back, as in ``generate``), so the cache ends with ``prompt_len + new_tokens - 1``
    positions.  Each step samples as transformers' ``generate`` does: the last logits
    copied to fp32, softmax, ``torch.multinomial``; the ids grow by ``torch.cat``.
    The cache is transformers' default (``DynamicCache``).  Call under ``no_grad``;
    ``autocast`` (a context-manager factory) wraps each forward in its own region, as
    accelerate's wrapped forward does.

    **Fast-forward** (``counter`` given and ``exact_steps=E`` with ``new_tokens - 1 > 2E``):
    a decode step under fake tensors costs as much CPU time as a prefill, so only the
    first ``E`` and the last ``E`` decode steps run counted.  In between, with the counter
    paused, the cache is rebuilt at the length it has before the last ``E`` steps (a
    prefill of that many positions, every cache tensor then copied to its own contiguous
    storage, as ``torch.cat`` leaves it after a decode step) and the cache and the ids
    are registered as live.  Skipped steps hold a shorter cache than the last ones and
    the same per-step temporaries, so they cannot raise the peak; the tests check that
    the fast-forward gives the same peak, cache bytes and final live bytes as the full
    loop, byte for byte.
    """
    ctx = autocast or contextlib.nullcontext
    B, p = prompt_ids.shape
    skip = None
    if counter is not None and exact_steps is not None and new_tokens - 1 > 2 * exact_steps:
        skip = (exact_steps + 1, new_tokens - exact_steps)   # decode steps [skip[0], skip[1]) are skipped
    ids, cache = prompt_ids, None
    step = 0
    while step < new_tokens:
        if skip is not None and step == skip[0]:
            del cache
            with counter.paused():
                length = p + skip[1] - 1                        # the cache length before step skip[1]
                vocab = int(model.config.get_text_config().vocab_size)
                ids = torch.randint(0, vocab, (B, length + 1), dtype=torch.long)
                with ctx():
                    cache = model(input_ids=ids[:, :-1], use_cache=True, logits_to_keep=1).past_key_values
                _own_storages(cache)
            counter.register(list(tensors_in(cache)) + [ids], "other")
            step = skip[1]
            continue
        with ctx():
            if cache is None:
                out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            else:
                out = model(input_ids=ids[:, -1:], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        scores = out.logits[:, -1, :].float()
        del out
        nxt = torch.multinomial(torch.softmax(scores, -1), 1)
        del scores
        ids = torch.cat([ids, nxt], -1)
        del nxt
        step += 1
    return ids, cache


def _own_storages(cache):
    """Give every tensor attribute of the cache's layers its own contiguous storage (what a decode step's cat does)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise ValueError(f"rollout: cannot fast-forward a {type(cache).__name__} (no .layers); "
                         f"use exact_steps=None")
    for layer in layers:
        for name, val in list(vars(layer).items()):
            if isinstance(val, torch.Tensor) and val.dim() >= 2:
                setattr(layer, name, val.clone(memory_format=torch.contiguous_format))


# -- the measurement ------------------------------------------------------------------------
class _Roles:
    """The models of one scenario and the parameters each role trains."""

    def __init__(self):
        self.policy = self.reference = self.reward = self.critic = None
        self.trained: dict[str, list] = {}


def _check(recipe, batch_size, seq_len, group_size, precision, reference, logprob, optimizer_impl,
           attention, lora_rank, prompt_len, logits_to_keep, ref_order):
    choice("recipe", recipe, RECIPES)
    positive_int("batch_size", batch_size)
    positive_int("seq_len", seq_len, minimum=2)
    positive_int("group_size", group_size)
    choice("precision", precision, PRECISIONS)
    choice("reference", reference, ("live", "precomputed"))
    choice("logprob", logprob, LOGPROB_FORMS)
    choice("optimizer_impl", optimizer_impl, OPTIMIZER_IMPLS)
    choice("attention", attention, ("sdpa", "eager"))
    choice("ref_order", ref_order, ("first", "after_policy"))
    if lora_rank is not None:
        positive_int("lora_rank", lora_rank)
    if prompt_len is not None:
        positive_int("prompt_len", prompt_len)
        if prompt_len >= seq_len:
            raise ValueError(f"prompt_len: must be < seq_len ({seq_len}), got {prompt_len}")
    if logits_to_keep is not None:
        positive_int("logits_to_keep", logits_to_keep)
        if logits_to_keep > seq_len:
            raise ValueError(f"logits_to_keep: must be <= seq_len ({seq_len}), got {logits_to_keep}")
    if group_size != 1 and recipe in ("sft", "dpo"):
        raise ValueError(f"group_size: {recipe} has no groups (use 1), got {group_size}")
    if reference == "precomputed" and recipe != "dpo":
        raise ValueError(f"reference: 'precomputed' is a dpo option, not {recipe}'s")


def measure_rl(recipe, model, batch_size, seq_len, *, group_size=1, beta=None, precision="bf16",
               reference="live", reward_model=None, critic_model=None, generate=None, prompt_len=None,
               lora_rank=None, lora_alpha=None, lora_dtype="fp32", lora_targets="all-linear",
               logprob="full", logits_to_keep=None, ref_order="first", optimizer_impl="loop",
               exact_steps=2, attention="sdpa", fake=True, verbose=False,
               timeline_points=200) -> Breakdown:
    """Measured memory of one RL iteration by phase and by role (chapter 06).

    ``peak = max over phases (generate, score, train.forward/backward/step) of the live bytes``;
    the components are the live bytes at the peak by role (see the module docstring for
    every definition).  ``batch_size`` is b: pairs (dpo), prompts (grpo, ppo) or sequences
    (sft); a step trains ``2b`` (dpo), ``b * group_size`` (grpo, ppo) or ``b`` sequences of
    ``seq_len`` tokens.  ``generate`` (default: True for grpo/ppo) adds the rollout phase:
    a prompt of ``prompt_len`` (default ``seq_len // 4``) tokens, ``seq_len - prompt_len``
    new tokens.  ``reward_model`` (default: the policy's config for ppo, none for grpo)
    and ``critic_model`` (ppo; default: the policy's config) are catalog names, paths or
    config dicts.  ``lora_rank``: a LoRA policy (and critic), see
    :mod:`memlib.measure.rl_models`.  ``exact_steps``: the rollout's fast-forward
    (:func:`rollout`; ``None`` runs every decode step counted).
    """
    _check(recipe, batch_size, seq_len, group_size, precision, reference, logprob, optimizer_impl,
           attention, lora_rank, prompt_len, logits_to_keep, ref_order)
    beta = DEFAULT_BETA[recipe] if beta is None else float(beta)
    if beta < 0:
        raise ValueError(f"beta: must be >= 0, got {beta}")
    if generate is None:
        generate = recipe in ("grpo", "ppo")
    if generate and recipe not in ("grpo", "ppo"):
        raise ValueError(f"generate: {recipe} trains on a fixed dataset; only grpo and ppo generate")
    if prompt_len is None:
        prompt_len = max(1, seq_len // 4)
    if recipe == "ppo" and reward_model is None:
        reward_model = model
    if recipe == "ppo" and critic_model is None:
        critic_model = model
    if recipe != "ppo" and critic_model is not None:
        raise ValueError(f"critic_model: only ppo has a critic, not {recipe}")
    lora = lora_rank is not None
    bf16 = torch.bfloat16
    train_dtype = bf16 if (precision == "bf16" or lora) else torch.float32
    from .build import torch_dtype
    lora_tdt = torch_dtype(lora_dtype)
    needs_ref = (recipe == "dpo" and reference == "live") or (recipe in ("grpo", "ppo") and beta > 0)
    ref_model_resident = needs_ref and not lora
    B = {"sft": batch_size, "dpo": 2 * batch_size}.get(recipe, batch_size * group_size)
    S = seq_len
    K = logits_to_keep or S

    t_start = time.perf_counter()
    with RLSession(fake=fake, verbose=verbose) as sess:
        R = _Roles()
        R.policy = sess.causal_lm(model, train_dtype, attention, "policy")
        if lora:
            wrapped = add_lora(R.policy, lora_rank, lora_alpha, lora_tdt, lora_targets)
            R.trained["policy"] = lora_params(R.policy)
        else:
            wrapped = None
            R.policy.requires_grad_(True)
            R.trained["policy"] = [p for p in R.policy.parameters() if p.requires_grad]
        R.policy.train()
        if ref_model_resident:
            R.reference = sess.causal_lm(model, bf16, attention, "reference").eval().requires_grad_(False)
        if reward_model is not None:
            R.reward = sess.scalar_head(reward_model, bf16, attention, "reward").eval().requires_grad_(False)
        if recipe == "ppo":
            R.critic = sess.scalar_head(critic_model, train_dtype, attention, "critic")
            if lora:
                add_lora(R.critic, lora_rank, lora_alpha, lora_tdt, lora_targets)
                R.critic.score.requires_grad_(True)
                R.trained["critic"] = lora_params(R.critic) + list(R.critic.score.parameters())
            else:
                R.critic.requires_grad_(True)
                R.trained["critic"] = [p for p in R.critic.parameters() if p.requires_grad]
            R.critic.train()
        all_trained = [p for ps in R.trained.values() for p in ps]
        opt = _adamw(all_trained, optimizer_impl)

        V = vocab_size(R.policy)
        # -- the batch, made before counting ----------------------------------------------
        ids = torch.randint(0, V, (B, S), dtype=torch.long)
        labels = torch.roll(ids, -1, 1)[:, S - K:].contiguous()
        mask = torch.ones(B, K)
        mask[:, -1] = 0
        adv_in = torch.randn(B)
        prompts = ids[:, :prompt_len].contiguous() if generate else None
        ref_sums_in = torch.randn(B) if (recipe == "dpo" and reference == "precomputed") else None

        counter = RoleCounter(wide_dims={V}, device_type="cpu")
        role_of_model = [("policy", R.policy), ("reference", R.reference), ("reward", R.reward),
                         ("critic", R.critic)]
        for role, m in role_of_model:
            if m is None:
                continue
            counter.register(m.parameters(), f"{role}.weights")
            counter.register(m.buffers(), f"{role}.buffers")
            if lora and role in ("policy", "critic"):
                counter.register(lora_params(m), f"{role}.adapters")   # known storages: recategorised
        param_role = {}
        for role, ps in R.trained.items():
            for p in ps:
                param_role[id(p)] = role

        emulate = precision == "mixed"
        policy_obj = None
        if emulate:
            from .autocast import CudaAutocastPolicy
            policy_obj = CudaAutocastPolicy("cpu")

        @contextlib.contextmanager
        def autocast():
            if precision != "mixed":
                yield
                return
            with torch.autocast("cpu", dtype=bf16), policy_obj:
                yield

        def ref_forward(keep_sum: bool):
            """The reference's log-probs (no_grad): per token (B, K) or summed (B,)."""
            counter.owner("reference")
            with torch.no_grad():
                if lora:
                    R.policy.eval()
                    with lora_disabled(R.policy):
                        lp = token_logprobs(R.policy(input_ids=ids, use_cache=False,
                                                     logits_to_keep=K).logits, labels, logprob)
                    R.policy.train()
                else:
                    lp = token_logprobs(R.reference(input_ids=ids, use_cache=False, logits_to_keep=K).logits,
                                        labels, logprob)
                lp = lp.float()
                if keep_sum:
                    lp = (lp * mask).sum(-1)
            counter.categorize([lp], "reference.logps")
            return lp

        def iteration(measured: bool):
            out = {}
            if generate and measured:
                counter.set_phase("generate")
                counter.owner("rollout")
                R.policy.eval()
                with torch.no_grad():
                    gen_ids, cache = rollout(R.policy, prompts, S - prompt_len,
                                             autocast if precision == "mixed" else None,
                                             counter=counter, exact_steps=exact_steps)
                    cache_tensors = list(tensors_in(cache))
                    out["kv_cache"] = unique_storage_bytes(cache_tensors)
                    out["kv_cache_class"] = type(cache).__name__
                    counter.categorize(cache_tensors, "rollout.kv_cache")
                    out["generate_end_live"] = counter.live_bytes
                    del gen_ids, cache, cache_tensors
                R.policy.train()
            # -- score ---------------------------------------------------------------------
            ref_lp = scores = old_v = None
            if (needs_ref and ref_order == "first") or R.reward is not None or R.critic is not None:
                counter.set_phase("score")
            adv = adv_in
            if needs_ref and ref_order == "first":
                ref_lp = ref_forward(keep_sum=(recipe == "dpo"))
            if R.reward is not None:
                counter.owner("reward")
                with torch.no_grad():
                    scores = scalar_head_forward(R.reward, ids)[:, -1, 0].float()
                    if recipe == "grpo":
                        g = scores.view(-1, group_size)
                        adv = ((g - g.mean(-1, keepdim=True)) / (g.std(-1, keepdim=True) + 1e-4)).view(-1)
                counter.categorize([scores, adv], "reward.scores")
            if recipe == "ppo":
                counter.owner("critic")
                with torch.no_grad():
                    with autocast():
                        old_v = scalar_head_forward(R.critic, ids)[:, S - K:, 0].float()
                    adv = scores[:, None] - old_v
                    ret = adv + old_v
                counter.categorize([old_v, adv, ret], "critic.values")
            # -- train ---------------------------------------------------------------------
            counter.set_phase("train.forward")
            counter.owner("policy")
            with autocast():
                if recipe == "sft":
                    loss = R.policy(input_ids=ids, labels=ids, use_cache=False).loss
                else:
                    lp = token_logprobs(R.policy(input_ids=ids, use_cache=False, logits_to_keep=K).logits,
                                        labels, logprob)
                    if needs_ref and ref_order == "after_policy":
                        ref_lp = ref_forward(keep_sum=(recipe == "dpo"))
                    counter.owner("loss")
                    if recipe == "dpo":
                        seq = (lp * mask).sum(-1)
                        pc, pr = seq.chunk(2)
                        rc, rr = (ref_lp if ref_lp is not None else ref_sums_in).chunk(2)
                        loss = -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()
                    else:
                        a = adv if adv.dim() == 2 else adv[:, None]
                        ratio = torch.exp(lp - lp.detach())
                        per_tok = torch.max(-a * ratio, -a * torch.clamp(ratio, 1 - CLIP, 1 + CLIP))
                        if ref_lp is not None:
                            d = ref_lp - lp
                            per_tok = per_tok + beta * (torch.exp(d) - d - 1)
                        loss = ((per_tok * mask).sum(-1) / mask.sum(-1)).mean()
                        if recipe == "ppo":
                            counter.owner("critic")
                            v = scalar_head_forward(R.critic, ids)[:, S - K:, 0].float()
                            counter.owner("loss")
                            vc = torch.clamp(v, old_v - CLIP, old_v + CLIP)
                            vf = 0.5 * torch.max((v - ret) ** 2, (vc - ret) ** 2)
                            loss = loss + VF_COEF * (vf * mask).sum() / mask.sum()
                    del lp
                if measured:
                    out["end_of_forward"] = counter.live_bytes
                    out["end_of_forward_t"] = counter.t
            counter.set_phase("train.backward")
            counter.owner("backward")
            loss.backward()
            del loss
            _categorize_training(counter, opt, R, param_role)
            counter.set_phase("train.step")
            counter.owner("step")
            opt.step()
            _categorize_training(counter, opt, R, param_role)
            opt.zero_grad(set_to_none=True)
            counter.owner("end")
            return out

        t0 = time.perf_counter()
        with counter:
            iteration(False)
            gc.collect()
            counter.reset_peak()
            counter.set_phase("resident")
            resident_t = counter.t
            info = iteration(True)
            counter.set_phase("end")
        counter.close()
        run_s = time.perf_counter() - t0

        phases = {p: counter.phase_peaks[p] for p in PHASES if p in counter.phase_peaks}
        phase_components = {p: _sorted(counter.components_at(counter.phase_peak_t[p])) for p in phases}
        comps = _sorted(counter.components_at(counter.peak_t))
        resident = _sorted(counter.components_at(resident_t))
        kernel, math_path, calls = attention_kernel(counter.ops, sess.built[0]["attention"])
        n_trained = {role: sum(p.numel() for p in ps) for role, ps in R.trained.items()}
        meta = sess.meta()
        meta.update({
            "scenario": f"rl.{recipe}", "recipe": recipe, "batch_size": batch_size, "group_size": group_size,
            "sequences": B, "seq_len": S, "vocab_size": V, "logits_to_keep": K, "beta": beta,
            "precision": precision, "reference": ("precomputed" if ref_sums_in is not None else
                                                  "adapter-disabled policy" if (needs_ref and lora) else
                                                  "model" if needs_ref else "none"),
            "ref_order": ref_order if recipe == "dpo" else None,
            "generate": bool(generate), "prompt_len": prompt_len if generate else None,
            "new_tokens": S - prompt_len if generate else None,
            "decode_steps": S - prompt_len - 1 if generate else None,
            "decode_steps_counted": _counted_steps(S - prompt_len, exact_steps) if generate else None,
            "logprob": logprob, "optimizer": f"AdamW ({optimizer_impl})", "optimizer_impl": optimizer_impl,
            "lora_rank": lora_rank, "lora_alpha": (lora_alpha or lora_rank) if lora else None,
            "lora_dtype": lora_dtype if lora else None, "lora_wrapped": len(wrapped) if wrapped else 0,
            "trained_params": n_trained,
            "peak": counter.peak, "peak_phase": counter.peak_phase, "phase_peak": phases,
            "phase_components": phase_components, "resident_components": resident,
            "roles": _by_role(comps),
            "kv_cache": info.get("kv_cache"), "kv_cache_class": info.get("kv_cache_class"),
            "end_of_forward": info.get("end_of_forward"),
            "end_of_forward_components": _sorted(counter.components_at(info["end_of_forward_t"])),
            "largest_at_peak": counter.largest_at(counter.peak_t),
            "attention_kernel": kernel, "math_path": math_path, "attention_calls": calls,
            "autocast": "torch.autocast('cpu', bfloat16) around forward + loss, CUDA op list emulated"
                        if precision == "mixed" else None,
            "autocast_emulated": dict(policy_obj.changed) if policy_obj is not None else {},
            "timeline": counter.timeline(timeline_points),
            "build_s": round(sess.build_s, 3), "run_s": round(run_s, 3),
            "total_s": round(time.perf_counter() - t_start, 3),
        })
        title = (f"{meta['models'][0]['model']}, {recipe} b={batch_size}"
                 + (f" G={group_size}" if recipe in ("grpo", "ppo") else "")
                 + f" s={S} {precision}" + (f" lora r={lora_rank}" if lora else "") + " (measured)")
        return Breakdown(comps, title=title, phases=phases, peak_phase=counter.peak_phase, meta=meta)


def _categorize_training(counter, opt, R, param_role):
    """Name the live gradients and optimizer state of every trained parameter by role."""
    for role, ps in R.trained.items():
        counter.categorize([p.grad for p in ps if p.grad is not None], f"{role}.gradients")
        state = []
        for p in ps:
            state.extend(_opt_state(opt, p))
        counter.categorize(state, f"{role}.optimizer")


def _sorted(d):
    return dict(sorted(d.items(), key=lambda kv: (-kv[1], kv[0])))


def _by_role(comps):
    """``{"policy": {"weights": ..., ...}, ...}`` from flat ``{"policy.weights": ...}``."""
    out: dict[str, dict[str, int]] = {}
    for k, v in comps.items():
        role, _, part = k.partition(".")
        out.setdefault(role, {})[part or "total"] = v
    return out


def _counted_steps(new_tokens, exact_steps):
    steps = new_tokens - 1
    return steps if exact_steps is None or steps <= 2 * exact_steps else 2 * exact_steps


def measure_rollout(model, batch_size, prompt_len, new_tokens, *, group_size=1, dtype="bf16",
                    exact_steps=2, attention="sdpa", fake=True, verbose=False,
                    timeline_points=200) -> Breakdown:
    """Measured rollout alone: ``batch_size x group_size`` sequences, prefill + ``new_tokens - 1`` decode steps.

    ``eval()``, ``no_grad``, frozen weights in ``dtype``; see :func:`rollout`.
    ``kv_cache = 2 x layers x (b G) x (prompt_len + new_tokens - 1) x kv_heads x head_dim x bytes``
    for a standard attention cache (chapter 02).  Components at the peak: ``rollout.weights``
    (+ ``buffers``), ``rollout.kv_cache`` (cache storages that survive to the end),
    ``rollout.logits`` (vocabulary-wide tensors) and ``rollout.activations``.
    ``exact_steps``: the fast-forward of :func:`rollout` (``None``: every step counted).
    """
    b = positive_int("batch_size", batch_size)
    g = positive_int("group_size", group_size)
    p = positive_int("prompt_len", prompt_len)
    n = positive_int("new_tokens", new_tokens)
    choice("attention", attention, ("sdpa", "eager"))
    from .build import torch_dtype
    tdt = torch_dtype(dtype)
    with RLSession(fake=fake, verbose=verbose) as sess:
        m = sess.causal_lm(model, tdt, attention, "rollout").eval().requires_grad_(False)
        V = vocab_size(m)
        prompts = torch.randint(0, V, (b * g, p), dtype=torch.long)
        counter = RoleCounter(wide_dims={V}, device_type="cpu")
        counter.register(m.parameters(), "rollout.weights")
        counter.register(m.buffers(), "rollout.buffers")
        t0 = time.perf_counter()
        with counter, torch.no_grad():
            counter.reset_peak()
            counter.set_phase("generate")
            counter.owner("rollout")
            ids, cache = rollout(m, prompts, n, counter=counter, exact_steps=exact_steps)
            cache_tensors = list(tensors_in(cache))
            kv = unique_storage_bytes(cache_tensors)
            counter.categorize(cache_tensors, "rollout.kv_cache")
            end_live = counter.live_bytes
            cls = type(cache).__name__
            del ids, cache, cache_tensors
        counter.close()
        run_s = time.perf_counter() - t0
        comps = _sorted(counter.components_at(counter.peak_t))
        kernel, math_path, calls = attention_kernel(counter.ops, sess.built[0]["attention"])
        meta = sess.meta()
        meta.update({"scenario": "rl.rollout", "batch_size": b, "group_size": g, "sequences": b * g,
                     "prompt_len": p, "new_tokens": n, "decode_steps": n - 1,
                     "decode_steps_counted": _counted_steps(n, exact_steps), "dtype": str(dtype),
                     "vocab_size": V, "kv_cache": kv, "kv_cache_class": cls, "kv_positions": p + n - 1,
                     "peak": counter.peak, "end_live": end_live,
                     "largest_at_peak": counter.largest_at(counter.peak_t),
                     "attention_kernel": kernel, "math_path": math_path, "attention_calls": calls,
                     "timeline": counter.timeline(timeline_points),
                     "build_s": round(sess.build_s, 3), "run_s": round(run_s, 3)})
        title = f"{meta['models'][0]['model']}, rollout {b}x{g} prompt={p} new={n} {dtype} (measured)"
        return Breakdown(comps, title=title, phases={"generate": counter.peak}, peak_phase="generate", meta=meta)
