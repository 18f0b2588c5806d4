"""The train phase of an RL step: a training step with its loss's extra tensors (chapter 06).

The policy's update *is* a training step (chapter 04): :func:`memlib.training.prepare_step`
(or :func:`memlib.lora.lora_step` for a LoRA policy) builds its inputs and
:func:`memlib.training.step_timeline` walks it through forward, backward and step.  An RL
loss changes only what happens at the head, the vocabulary-wide tensors of its
log-probabilities (:mod:`memlib.rl.logprobs`): ``10N`` at the forward's peak and ``12N``
at the backward's start for the full form, ``4N`` and ``4N`` for TRL's selective one,
``N = B·K·V``.  :func:`policy_step` replaces the step's head terms by the form's and names
them ``logits`` (transient) and ``logprobs`` (saved).

A critic (PPO) is a scalar-head model trained in the same step: its timeline runs on
:func:`memlib.rl.roles.value_spec` (a vocabulary one token wide), its weights, gradients
and optimizer state come from the real model without lm_head.  PPO's step interleaves the
two (:func:`joint_step`): the policy's forward, the critic's forward (the policy's saved
tensors still alive), one backward that runs the critic's graph first (created last),
then the policy's, and one optimizer step over both.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..activations import model_tensors
from ..lora import first_layer_unsaved, lora_step
from ..optimizers import tensor_state_bytes
from ..params import count_params, param_sizes
from ..training import _cache_parts, final_output_at_loss, prepare_step, step_temporaries, step_timeline
from .logprobs import vocab_bytes
from .roles import Role, value_optimizer_bytes, value_param_sizes, value_spec

#: The train phase's sub-phases, named as the bench names them.
TRAIN_PHASES = ("train.forward", "train.backward", "train.step")
#: A step's components as an RL result names them (``role.<name>``).
STEP_PARTS = ("weights", "adapters", "optimizer", "gradients", "autocast_cache", "activations", "logprobs",
              "logits", "transient")


@dataclass
class StepPart:
    """One trained role's step as moments: ``moments`` are ``(phase, label, {part: bytes})``
    in order; ``sizes`` its parameter tensor sizes (for a joint optimizer step),
    ``state_bytes`` bytes per optimizer-state value, ``optimizer``/``optimizer_impl``."""

    role: str
    moments: list
    sizes: tuple
    state_bytes: int
    optimizer: str
    optimizer_impl: str

    def at(self, phase: str, label: str) -> dict:
        """The parts at the moment ``label`` of ``phase``."""
        for ph, lab, parts in self.moments:
            if ph == phase and lab == label:
                return dict(parts)
        raise KeyError(f"{self.role}: no moment {phase}/{label}")

    def phase(self, phase: str) -> list:
        """The moments of ``phase``, in order."""
        return [m for m in self.moments if m[0] == phase]

    @property
    def end_of_forward(self) -> dict:
        """What the role holds once its forward (and loss) are done."""
        return self.at("train.forward", "end")

    @property
    def before_backward(self) -> dict:
        """What the role holds at the start of the backward, before its own loss's backward runs."""
        first = dict(self.phase("train.backward")[0][2])
        first["logits"] = first["transient"] = 0
        return first

    @property
    def after_backward(self) -> dict:
        """What the role holds once its backward is done (gradients complete, activations freed)."""
        step = dict(self.phase("train.step")[0][2])
        step["transient"] = 0
        return step


def _parts(mark, adapters: int) -> dict:
    return {"weights": mark.weights - adapters, "adapters": adapters, "optimizer": mark.optimizer,
            "gradients": mark.gradients, "autocast_cache": mark.autocast_cache, "activations": mark.activations,
            "logprobs": 0, "logits": 0, "transient": mark.transient}


def _phase(name: str) -> str:
    return f"train.{name}"


#: The moments at which the tensors saved outside the layers (final norm, loss) are alive.
_HEAD_MOMENTS = {("forward", "loss"), ("forward", "end"), ("backward", "loss")}


def _unsaved(spec, sc, inputs, recompute: str, lora_chosen=None, rl_loss: bool = True) -> tuple[int, int]:
    """``(first layer, outside the layers)``: bytes chapter 04's timeline counts that an RL
    step does not keep.  An RL loss reads labels made with the batch (no shifted copy,
    ``8·T``); a LoRA model's frozen embedding makes its output, and everything of the
    first layer before its first adapter, need no gradient
    (:func:`memlib.lora.first_layer_unsaved`), the embedding's dropout mask included."""
    level = model_tensors(spec, sc)
    outside = level["loss.shifted_labels"].nbytes if rl_loss else 0
    first = 0
    if lora_chosen is not None and recompute == "none":
        first = first_layer_unsaved(spec, inputs.layers[spec.moe_layers[0]], lora_chosen)
        if "embedding.dropout_mask" in level:
            outside += level["embedding.dropout_mask"].nbytes
    return first, outside


def _adjusted(marks, adapters: int, first: int, outside: int) -> list:
    """The marks as parts, less the bytes :func:`_unsaved` says are not kept: ``first`` until
    the first layer's backward is done, ``outside`` while the head's tensors are alive."""
    out = []
    first_done = False
    for mk in marks:
        p = _parts(mk, adapters)
        if not first_done and mk.phase in ("forward", "backward"):
            p["activations"] -= first
        if (mk.phase, mk.label) in _HEAD_MOMENTS:
            p["activations"] -= outside
        if mk.phase == "backward" and mk.label == "layer 0 attention":
            first_done = True
        out.append((mk, p))
    return out


def policy_step(role: Role, sequences: int, seq_len: int, *, positions: int | None = None, logprob: str = "full",
                optimizer: str = "adamw", optimizer_impl: str = "foreach", recompute: str = "none",
                attention: str = "sdpa", lora_targets="all-linear", _bench_cpu: bool = False) -> StepPart:
    """The policy's training step as moments (chapter 06): :func:`memlib.training.step_timeline`
    with the head's vocabulary-wide terms replaced by ``logprob``'s over ``positions`` (``K``,
    default ``seq_len``) scored positions.

    Forward ``loss`` moment: ``activations + logits (forward) + logprobs (saved)``; ``end``:
    ``activations + logprobs``; backward ``loss``: ``activations + logprobs (backward_saved) +
    logits (backward)`` (:func:`memlib.rl.logprobs.vocab_bytes`).  A LoRA policy is PEFT's:
    bf16 base, fp32 adapters, no autocast (:func:`memlib.lora.lora_step`).
    """
    B, S = sequences, seq_len
    K = S if positions is None else positions
    if role.lora_rank:
        spec, sc, inputs, info = lora_step(role.spec, B, S, role.lora_rank, lora_targets, "bf16", False, "fp32",
                                           optimizer, recompute, attention, 0.0, optimizer_impl, autocast=False,
                                           _bench_cpu=_bench_cpu)
        adapters = info["adapter_bytes"]
        sizes = tuple(r * c for r, c, n in _adapter_mats(role, lora_targets) for _ in range(n))
        state = 4
        chosen = info["chosen"]
    else:
        spec, sc, inputs = prepare_step(role.spec, B, S, role.precision, optimizer, recompute, attention, 1, None,
                                        _bench_cpu, optimizer_impl)
        adapters = 0
        sizes = param_sizes(spec)
        state = 4 if sc.mixed else 2
        chosen = None
    marks, _ = step_timeline(spec, sc, inputs, recompute)
    first, outside = _unsaved(spec, sc, inputs, recompute, chosen, rl_loss=logprob != "sft")
    T, V = sc.tokens, spec.vocab_size
    old_forward, old_saved, old_backward = 6 * T * V, 4 * T * V, 8 * T * V     # step_timeline's head terms
    new = vocab_bytes("full" if logprob == "sft" else logprob, B, K, V)
    moments = []
    after_loss = False
    for mk, p in _adjusted(marks, adapters, first, outside):
        if mk.phase == "forward" and mk.label == "loss":
            p["transient"] -= old_forward + old_saved
            if logprob != "sft":      # log-probabilities come from the returned logits: the model's
                p["transient"] -= final_output_at_loss(spec, sc)   # forward, and its fp32 output, are done
            p["logits"], p["logprobs"] = new.forward, new.saved
            after_loss = True
        elif mk.phase == "forward" and mk.label == "end" and after_loss:
            p["activations"] -= old_saved
            p["logprobs"] = new.saved
        elif mk.phase == "backward" and mk.label == "loss":
            p["activations"] -= old_saved
            p["transient"] -= old_backward
            p["logprobs"], p["logits"] = new.backward_saved, new.backward
        moments.append((_phase(mk.phase), mk.label, p))
    return StepPart(role.name, moments, sizes, state, optimizer, optimizer_impl)


def _adapter_mats(role: Role, targets):
    from ..lora import adapter_matrices
    return adapter_matrices(role.spec, role.lora_rank, targets)


def critic_step(role: Role, sequences: int, seq_len: int, *, optimizer: str = "adamw",
                optimizer_impl: str = "foreach", recompute: str = "none", attention: str = "sdpa",
                lora_targets="all-linear", _bench_cpu: bool = False) -> StepPart:
    """A scalar-head model's training step as moments (chapter 06): the causal LM's step
    inputs with lm_head replaced by the ``1 × H`` score head (weights, gradients, optimizer
    state, autocast copies, step temporaries), run on :func:`memlib.rl.roles.value_spec`.

    Gradients appear as in chapter 04: the head's (``(H + final norm)·p``) first, then each
    layer's, then the embedding's (``embeddings·p``: a scalar head has no lm_head to share
    it with).  A LoRA critic (PEFT's fp32 adapters on a frozen bf16 base) also trains its
    bf16 score head; with ``role.shares_base`` the base is the policy's (counted there)."""
    spec, H = role.spec, role.spec.hidden_size
    if role.lora_rank:
        _, sc, inputs, info = lora_step(spec, sequences, seq_len, role.lora_rank, lora_targets, "bf16", False,
                                        "fp32", optimizer, recompute, attention, 0.0, optimizer_impl,
                                        autocast=False, _bench_cpu=_bench_cpu)
        adapters = info["adapter_bytes"]
        base = 0 if role.shares_base else (role.params - H) * 2
        sizes = tuple(r * c for r, c, n in _adapter_mats(role, lora_targets) for _ in range(n)) + (H,)
        chosen = info["chosen"]
        inputs = replace(inputs, weights=base + 2 * H + adapters,
                         optimizer=inputs.optimizer + tensor_state_bytes([(1, H, 1)], 0, optimizer, 2),
                         grads_head=2 * H, frozen_head=False,
                         step_extra=step_temporaries(optimizer, optimizer_impl, sizes, 4))
        state = 4
    else:
        _, sc, inputs = prepare_step(spec, sequences, seq_len, role.precision, optimizer, recompute, attention, 1,
                                     None, _bench_cpu, optimizer_impl)
        p = 4 if sc.mixed else 2
        adapters = 0
        norm = H * (2 if spec.norm == "layer" else 1) if spec.final_norm else 0
        sizes = value_param_sizes(spec)
        _, _, lm_cache = _cache_parts(spec)
        head_cache = 2 * H if sc.mixed else 0                  # autocast's copy of the score head
        inputs = replace(inputs, weights=role.params * p, optimizer=value_optimizer_bytes(spec, optimizer, p),
                         grads_head=(H + norm) * p, grads_embedding=count_params(spec).components["embeddings"] * p,
                         grads_tied=0,
                         autocast_cache=inputs.autocast_cache - (lm_cache if sc.mixed else 0) + head_cache,
                         cache_head=head_cache, step_extra=step_temporaries(optimizer, optimizer_impl, sizes, p))
        state = p
        chosen = None
    vspec = value_spec(spec)
    marks, _ = step_timeline(vspec, sc, inputs, recompute)
    first, outside = _unsaved(vspec, sc, inputs, recompute, chosen)
    if role.lora_rank:             # the final norm's weight is frozen: its normalised tensor is not kept
        outside += getattr(model_tensors(vspec, sc).get("final_norm.normalised"), "nbytes", 0)
    head = final_norm_moments(vspec, sc)
    moments = []
    for mk, p in _adjusted(marks, adapters, first, outside):
        key = (mk.phase, mk.label)
        if key == ("forward", "loss"):            # the final norm runs before the score head
            moments.append(("train.forward", "final norm", _final_norm_parts(p, head["forward"])))
        moments.append((_phase(mk.phase), mk.label, p))
        if key == ("backward", "loss"):           # the final norm's backward follows the score head's
            moments.append(("train.backward", "final norm", _final_norm_parts(p, head["backward"])))
    return StepPart(role.name, moments, sizes, state, optimizer, optimizer_impl)


def final_norm_moments(spec, sc) -> dict:
    """The final norm's moments in a scalar-head model's step (chapter 06), as
    ``{"forward"|"backward": (activations not yet / no longer saved, transient)}``.

    A causal LM's step peaks at its vocabulary-wide loss, which hides what happens around
    the final norm; a value head has no such loss, and its forward and backward peak
    there.  Forward, inside the norm: the model still holds the embedding output (and
    GPT-2's position output) and the last layer's output (the norm's input), ``r·T·H`` each
    (``r`` the residual stream's bytes; under mixed precision the last layer's output *is*
    the norm's fp32 copy, already counted); an RMSNorm also holds its fp32 product
    ``x·rsqrt(mean(x²))`` and the variance, ``4·T·H + 4·T``, before its bf16 normalised
    tensor and output exist (``2·r·T·H`` not yet saved).  Backward, through an RMSNorm
    (transformers' composite: ``to``, ``mul``, ``rsqrt``, ``mean``, ``pow``): the gradient
    of the fp32 product, and for ``mean``/``pow`` the expanded gradient, ``x¹``, ``2·x`` and
    their product exist at once, five fp32 ``T×H`` tensors, ``20·T·H``, once the
    normalised tensor and output (``2·r·T·H``) are freed.  A LayerNorm is one fused op:
    forward transient only.
    """
    T, H, S = sc.tokens, spec.hidden_size, sc.seq_len
    r = sc.residual_bytes
    held = r * T * H + r * (T if spec.positions_per_sequence else S) * H * bool(spec.learned_positions)
    held += 0 if (sc.mixed and spec.norm == "rms") else r * T * H
    if spec.norm != "rms":
        return {"forward": (0, held), "backward": (0, 0)}
    later = 2 * r * T * H                         # the normalised tensor and the output
    return {"forward": (later, held + 4 * T * H + 4 * T), "backward": (later, 20 * T * H)}


def _final_norm_parts(parts: dict, moment: tuple) -> dict:
    not_saved, transient = moment
    out = dict(parts)
    out["activations"] -= not_saved
    out["transient"] = transient
    return out


def single_step(part: StepPart) -> list:
    """One trained role's step as ``(phase, label, {role: parts})`` moments (chapter 06)."""
    return [(ph, label, {part.role: parts}) for ph, label, parts in part.moments]


def joint_step(policy: StepPart, critic: StepPart) -> list:
    """PPO's step with a critic, as ``(phase, label, {role: parts})`` moments (chapter 06).

    Forward: the policy's moments (the critic holds its weights and state), then the
    critic's (the policy holds what its forward saved).  Backward: autograd runs the nodes
    created last first, so the critic's backward runs while the policy's saved tensors
    wait; then the policy's, with the critic's gradients complete.  Step: one optimizer
    over both, whose temporaries follow the joint parameter order
    (:func:`memlib.training.step_temporaries`).
    """
    idle_critic = dict(critic.at("train.forward", critic.phase("train.forward")[0][1]))
    idle_critic.update({k: 0 for k in ("gradients", "autocast_cache", "activations", "logprobs", "logits",
                                       "transient")})
    out = [(ph, f"policy {label}", {"policy": p, "critic": idle_critic})
           for ph, label, p in policy.phase("train.forward")]
    end = policy.end_of_forward
    out += [(ph, f"critic {label}", {"policy": end, "critic": c}) for ph, label, c in critic.phase("train.forward")]
    waiting = policy.before_backward
    out += [(ph, f"critic {label}", {"policy": waiting, "critic": c}) for ph, label, c in critic.phase("train.backward")]
    done = critic.after_backward
    out += [(ph, f"policy {label}", {"policy": p, "critic": done}) for ph, label, p in policy.phase("train.backward")]
    p_step, c_step = policy.after_backward, critic.after_backward
    own_p = policy.phase("train.step")[0][2]["transient"]
    own_c = critic.phase("train.step")[0][2]["transient"]
    joint = step_temporaries(policy.optimizer, policy.optimizer_impl, tuple(policy.sizes) + tuple(critic.sizes),
                             max(policy.state_bytes, critic.state_bytes))
    (p_step if own_p >= own_c else c_step)["transient"] = joint
    out.append(("train.step", "optimizer", {"policy": p_step, "critic": c_step}))
    return out
