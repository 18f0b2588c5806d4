"""Parallel training: what every GPU holds under DP, ZeRO/FSDP2, TP, SP, PP, CP, EP and offload (chapter 05).

* :class:`Plan` — a layout (``dp``, ``tp``, ``pp``, ``cp``, ``ep``, ``zero``, ...);
* :func:`parallel_train_memory` — rank 0's peak with children where ranks differ;
* :func:`plan` — the planner: the layouts that fit a GPU cluster, ranked.

One concept per module: :mod:`~memlib.parallel.tensors` (every parameter tensor),
:mod:`~memlib.parallel.state` (what a rank holds), :mod:`~memlib.parallel.activations`
(what it saves), :mod:`~memlib.parallel.fsdp`, :mod:`~memlib.parallel.pipeline`,
:mod:`~memlib.parallel.context`, :mod:`~memlib.parallel.experts`,
:mod:`~memlib.parallel.offload`, :mod:`~memlib.parallel.rank` (one rank's timeline),
:mod:`~memlib.parallel.memory` (the entry point), :mod:`~memlib.parallel.planner`.
"""
from .memory import make_plan, parallel_train_memory
from .planner import Layout, PlanResult, parse_gpus, plan
from .plan import OFFLOADS, SCHEDULES, ZERO_STAGES, Plan
from .rank import rank_memory
from .timeline import COMPONENT_DOCS, COMPONENTS

__all__ = ["Plan", "parallel_train_memory", "plan", "Layout", "PlanResult", "parse_gpus", "rank_memory", "make_plan", "COMPONENTS", "COMPONENT_DOCS",
           "SCHEDULES", "OFFLOADS", "ZERO_STAGES"]
