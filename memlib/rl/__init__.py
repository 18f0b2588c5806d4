"""RL post-training memory: PPO, GRPO, DPO and friends, by role and by phase (chapter 06).

One iteration of an RL recipe holds several models (roles: the trained policy, a frozen
reference, a frozen reward model, a trained critic, the rollout engine) and goes through
phases (generate, score, train).  Its peak is the largest phase, not the sum of the
roles' peaks::

    peak = max over phases (resident + what the phase adds)

* :mod:`memlib.rl.recipes` -- what each recipe needs (sequences, reference, reward, critic);
* :mod:`memlib.rl.roles` -- the roles and what they keep resident;
* :mod:`memlib.rl.generate` -- the rollout: prefill, decode, its KV cache;
* :mod:`memlib.rl.engine` -- a colocated vLLM engine, its budget and sleep modes;
* :mod:`memlib.rl.score` -- the reference, reward and critic forwards;
* :mod:`memlib.rl.logprobs` -- the vocabulary-wide log-prob tensors (``B·K·V``);
* :mod:`memlib.rl.train` -- the policy's (and critic's) training step;
* :mod:`memlib.rl.iteration` -- :func:`rl_memory`, the whole iteration;
* :mod:`memlib.rl.timeline` -- moments to a phased result with one child per role.

Only numpy is imported.
"""
from .engine import ENGINE_WEIGHTS, ROLLOUTS, SLEEP_MODES, colocated_engine
from .iteration import rl_memory, rollout_memory
from .logprobs import LOGPROB_FORMS, vocab_bytes
from .recipes import DEFAULT_BETA, DEFAULT_GROUP, RECIPES, get_recipe
from .roles import ROLES, Role, model_params
from .timeline import PHASES

__all__ = ["rl_memory", "rollout_memory", "colocated_engine", "vocab_bytes", "model_params", "get_recipe", "Role",
           "RECIPES", "ROLES", "PHASES", "LOGPROB_FORMS", "ROLLOUTS", "SLEEP_MODES", "ENGINE_WEIGHTS",
           "DEFAULT_BETA", "DEFAULT_GROUP"]
