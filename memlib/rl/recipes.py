"""The recipes of RL post-training and what each one needs (chapter 06).

A recipe decides four things that set its memory: how many sequences one step trains,
whether it generates them (a rollout), which frozen or trained models it keeps beside
the policy, and what its loss keeps per token.  With ``b`` the batch size (pairs for DPO,
prompts for the online recipes) and ``G`` the group size (completions per prompt)::

    recipe       sequences B   generates   reference        reward model   critic   loss
    sft          b             no          no               no             no       cross-entropy
    dpo          2b            no          live|precomputed no             no       log-sigmoid of summed log-ratios
    grpo         b·G           yes         iff beta > 0     optional       no       clipped ratio · A + beta·KL (per token)
    rloo         b·G (G >= 2)  yes         iff beta > 0     yes            no       ratio · A (leave-one-out baseline)
    ppo          b·G           yes         iff beta > 0     yes            yes      clipped ratio · A + value loss
    online_dpo   2b (G = 2)    yes         iff beta > 0     yes            no       DPO on the two completions

The reference is what the KL term (or DPO's log-ratio) is measured against; a recipe with
``beta = 0`` has no KL term and loads no reference (TRL's GRPO default since its
``beta`` became 0.0).  RLOO and online DPO fall out of the same parts: RLOO is GRPO with a
learned reward model; online DPO generates two completions per prompt, ranks them with
the reward model and takes a DPO step on them.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..validation import choice, positive_int

RECIPES = ("sft", "dpo", "grpo", "rloo", "ppo", "online_dpo")
#: The KL (or DPO) coefficient when none is given: DPO's 0.1 (the DPO paper's); GRPO's 0.04
#: (DeepSeekMath's; TRL's ``GRPOConfig`` now defaults to 0.0, which drops the reference);
#: 0.05 for the other online recipes.
DEFAULT_BETA = {"sft": 0.0, "dpo": 0.1, "grpo": 0.04, "rloo": 0.05, "ppo": 0.05, "online_dpo": 0.1}
#: Completions per prompt when none is given: TRL's ``num_generations`` default (8) for GRPO,
#: the smallest leave-one-out group (2) for RLOO, one for PPO, two for online DPO.
DEFAULT_GROUP = {"sft": 1, "dpo": 1, "grpo": 8, "rloo": 2, "ppo": 1, "online_dpo": 2}


@dataclass(frozen=True)
class Recipe:
    """One recipe's structure (chapter 06): ``name``, ``generates`` (a rollout phase),
    ``pairs`` (two sequences per item: DPO's chosen/rejected), ``loss`` (``"sft"``,
    ``"dpo"`` or ``"pg"``, the policy-gradient family), ``reward`` (a reward model by
    default), ``critic`` (a trained value model) and ``groups`` (completions per prompt)."""

    name: str
    generates: bool
    pairs: bool
    loss: str
    reward: bool
    critic: bool
    groups: bool

    def sequences(self, batch_size: int, group_size: int) -> int:
        """Sequences one step trains: ``2b`` (pairs), ``b·G`` (groups) or ``b``."""
        if self.pairs:
            return 2 * batch_size
        return batch_size * group_size if self.groups else batch_size


_RECIPES = {
    "sft": Recipe("sft", generates=False, pairs=False, loss="sft", reward=False, critic=False, groups=False),
    "dpo": Recipe("dpo", generates=False, pairs=True, loss="dpo", reward=False, critic=False, groups=False),
    "grpo": Recipe("grpo", generates=True, pairs=False, loss="pg", reward=False, critic=False, groups=True),
    "rloo": Recipe("rloo", generates=True, pairs=False, loss="pg", reward=True, critic=False, groups=True),
    "ppo": Recipe("ppo", generates=True, pairs=False, loss="pg", reward=True, critic=True, groups=True),
    "online_dpo": Recipe("online_dpo", generates=True, pairs=True, loss="dpo", reward=True, critic=False,
                         groups=False),
}


def get_recipe(name: str) -> Recipe:
    """The :class:`Recipe` called ``name`` (one of :data:`RECIPES`; chapter 06)."""
    return _RECIPES[choice("recipe", name, RECIPES)]


def group_size_for(recipe: Recipe, group_size) -> int:
    """Validate ``group_size`` for ``recipe`` (chapter 06): 1 for sft and dpo, 2 for online DPO,
    at least 2 for RLOO; ``None`` takes :data:`DEFAULT_GROUP`."""
    if group_size is None:
        return DEFAULT_GROUP[recipe.name]
    g = positive_int("group_size", group_size)
    if recipe.name in ("sft", "dpo") and g != 1:
        raise ValueError(f"group_size: {recipe.name} trains on a fixed dataset and has no groups (use 1), got {g}")
    if recipe.name == "online_dpo" and g != 2:
        raise ValueError(f"group_size: online_dpo generates exactly 2 completions per prompt, got {g}")
    if recipe.name == "rloo" and g < 2:
        raise ValueError(f"group_size: rloo's leave-one-out baseline needs at least 2 completions per prompt, got {g}")
    return g


def needs_reference(recipe: Recipe, beta: float, reference: str) -> bool:
    """Whether a step needs the reference's log-probs (chapter 06): DPO unless they are
    precomputed; the online recipes only when ``beta > 0`` (the KL term); SFT never."""
    if recipe.name == "sft":
        return False
    if recipe.name == "dpo":
        return reference == "live"
    return beta > 0 and reference == "live"
