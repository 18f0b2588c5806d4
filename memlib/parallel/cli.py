"""Command line for chapter 05: ``train`` with a parallel plan, and ``plan``.

* ``python -m memlib train CONFIG --batch-size B --seq-len S --dp 8 --zero 3 [--json]``
  (also ``--tp 4 [--sp]``, ``--pp 4 --microbatches 8 --schedule 1f1b``, ``--cp``, ``--ep``,
  ``--offload``): rank 0's step, :func:`memlib.parallel.parallel_train_memory`.  JSON keys:
  ``peak``, ``peak_phase``, ``peak_at``, ``components``, ``phase_peak``, ``plan``,
  ``world_size``, ``global_batch``, ``ranks`` (each rank kind's ``label``, ``peak`` and
  ``peak_phase``), ``max_peak``, ``host`` (offloaded bytes).  Without a parallel flag
  ``train`` is chapter 04's single-GPU step, unchanged.
* ``python -m memlib plan CONFIG --gpus 8xH100-80GB --seq-len S --global-batch-size G [--json]``:
  the layouts that fit, best first (:func:`memlib.parallel.plan`).  JSON keys: ``question``,
  ``gpu``, ``gpu_bytes``, ``considered``, ``fitting``, ``layouts`` (each with ``plan``,
  ``dp``, ``tp``, ``pp``, ``cp``, ``ep``, ``zero``, ``sp``, ``microbatches``,
  ``micro_batch_size``, ``accumulation``, ``peak``, ``peak_phase``, ``headroom``) and
  ``ranking``.

``plan`` is registered by ``memlib.cli.EXTRA_COMMANDS``; ``train``'s parallel flags are
added by :func:`add_train_flags`.
"""
from __future__ import annotations

import json

from ..units import GiB

#: The ``train`` flags of a parallel plan, with their defaults (a single GPU).
PLAN_FLAGS = {"dp": 1, "tp": 1, "pp": 1, "cp": 1, "ep": 1, "zero": 0, "sp": False, "microbatches": None,
              "schedule": "1f1b", "offload": "none"}


def add_train_flags(sp) -> None:
    """Add the parallel-plan flags to chapter 04's ``train`` subcommand (chapter 05)."""
    from ..cli import _int
    from .plan import OFFLOADS, SCHEDULES
    g = sp.add_argument_group("parallel plan (chapter 05): rank 0 of the plan, batch size per rank")
    for name, what in (("dp", "data-parallel ranks"), ("tp", "tensor-parallel ranks"), ("pp", "pipeline stages"),
                       ("cp", "context-parallel ranks"), ("ep", "expert-parallel ranks (taken from dp)")):
        g.add_argument(f"--{name}", type=_int, default=1, help=f"{what} (default 1)")
    g.add_argument("--zero", type=_int, default=0,
                   help="0 DDP, 1 ZeRO-1 (ZeroRedundancyOptimizer), 2/3 FSDP2 (reshard after forward: 3)")
    g.add_argument("--sp", action="store_true", help="sequence parallelism on top of --tp")
    g.add_argument("--microbatches", type=_int, default=None, help="pipeline micro-batches (default: pp)")
    g.add_argument("--schedule", default="1f1b", choices=SCHEDULES)
    g.add_argument("--offload", default="none", choices=OFFLOADS)


def is_parallel(args) -> bool:
    """True when any parallel-plan flag differs from a single GPU."""
    return any(getattr(args, k, v) != v for k, v in PLAN_FLAGS.items())


def plan_of(args):
    """The :class:`memlib.parallel.Plan` the flags describe."""
    from .plan import Plan
    m = args.microbatches if args.microbatches is not None else (args.pp if args.pp > 1 else 1)
    return Plan(dp=args.dp, tp=args.tp, pp=args.pp, cp=args.cp, ep=args.ep, zero=args.zero, sp=args.sp,
                microbatches=m, schedule=args.schedule, offload=args.offload)


def train_payload(args, b) -> dict:
    """The JSON contract of a parallel ``train`` (module docstring; chapter 05)."""
    p = b.meta["plan"]
    ranks = [{"label": c.label, "peak": int(c.total), "peak_phase": c.peak_phase} for c in b.children] or \
        [{"label": b.label, "peak": int(b.total), "peak_phase": b.peak_phase}]
    return {"model": args.model, "peak": int(b.total), "peak_phase": b.peak_phase, "peak_at": b.peak_at,
            "components": {k: int(v) for k, v in b.components.items()}, "kinds": dict(b.kinds),
            "phase_peak": {k: int(v) for k, v in b.phases.items()},
            "plan": {"dp": p.dp, "tp": p.tp, "pp": p.pp, "cp": p.cp, "ep": p.ep, "zero": p.zero, "sp": p.sp,
                     "microbatches": p.microbatches, "schedule": p.schedule, "offload": p.offload,
                     "label": p.label()},
            "world_size": p.world_size, "global_batch": b.meta["global_batch"], "ranks": ranks,
            "max_peak": b.meta["max_peak"], "host": {k: int(v) for k, v in b.meta["host"].items()},
            "batch_size": args.batch_size, "seq_len": args.seq_len, "precision": args.precision,
            "optimizer": args.optimizer, "optimizer_impl": args.optimizer_impl, "recompute": args.recompute,
            "attention": b.meta["attention"], "grad_accum": args.grad_accum}


def run_train(args) -> int:
    """``train`` with a parallel plan: a table of rank 0's components, or JSON."""
    from .memory import parallel_train_memory
    b = parallel_train_memory(args.model, args.batch_size, args.seq_len, args.precision, args.optimizer,
                              args.recompute, args.attention, args.optimizer_impl, args.grad_accum,
                              plan=plan_of(args))
    if args.json:
        print(json.dumps(train_payload(args, b), indent=2))
        return 0
    lines = [b.table()]           # (its "parts" line lists the ranks that differ)
    if b.meta["host"]:
        lines += ["", "on the host (GiB): " + "  ".join(f"{k}={v / GiB:.2f}" for k, v in b.meta["host"].items())]
    lines += ["", f"{b.meta['world_size']} GPUs, global batch {b.meta['global_batch']} sequences per step"]
    print("\n".join(lines))
    return 0


def run_plan(args) -> int:
    """``plan``: :func:`memlib.parallel.plan` as a table or JSON (chapter 05)."""
    from .planner import plan
    offload = tuple(x.strip() for x in args.offload.split(",")) if "," in args.offload else args.offload
    r = plan(args.model, gpus=args.gpus, seq_len=args.seq_len, global_batch_size=args.global_batch_size,
             precision=args.precision, optimizer=args.optimizer, optimizer_impl=args.optimizer_impl,
             recompute=args.recompute, attention=args.attention, micro_batch_size=args.micro_batch_size,
             schedule=args.schedule, max_cp=args.max_cp, offload=offload)
    if args.json:
        print(json.dumps(r.to_dict(top=args.top), indent=2))
    else:
        print(r.table(top=args.top))
    return 0


def add_parser(sub) -> None:
    """Register ``plan`` (``memlib.cli.EXTRA_COMMANDS``)."""
    from ..cli import _int
    from ..scenario import ATTENTIONS, DEFAULT_OPTIMIZER_IMPL, OPTIMIZER_IMPLS, OPTIMIZERS, PRECISIONS, RECOMPUTE
    sp = sub.add_parser("plan", help="parallel layouts of a model that fit a GPU cluster (chapter 05)")
    sp.add_argument("model", help="catalog name (python -m memlib catalog) or path to a config.json")
    sp.add_argument("--gpus", required=True, help="COUNTxGPU or NODESxPER_NODExGPU, e.g. 8xH100-80GB, 128x8xH100-80GB")
    sp.add_argument("--seq-len", type=_int, required=True)
    sp.add_argument("--global-batch-size", type=_int, required=True, help="sequences per optimizer step")
    sp.add_argument("--micro-batch-size", type=_int, default=1, help="sequences per rank per micro-batch (default 1)")
    sp.add_argument("--precision", default="bf16", choices=PRECISIONS)
    sp.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS)
    sp.add_argument("--optimizer-impl", default=DEFAULT_OPTIMIZER_IMPL, choices=OPTIMIZER_IMPLS)
    sp.add_argument("--recompute", default="none", choices=RECOMPUTE)
    sp.add_argument("--attention", default="sdpa", choices=ATTENTIONS)
    sp.add_argument("--schedule", default="1f1b", choices=("1f1b", "gpipe"))
    sp.add_argument("--max-cp", type=_int, default=16, help="largest context-parallel degree tried (default 16)")
    sp.add_argument("--offload", default="none",
                    help="none, optimizer, params, both, or a comma list of them to consider (default none)")
    sp.add_argument("--top", type=_int, default=15, help="how many layouts to print (default 15)")
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sp.set_defaults(func=run_plan)
