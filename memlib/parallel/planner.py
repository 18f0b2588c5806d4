"""The planner: which parallel layouts of a model fit a GPU cluster (chapter 05).

``plan(model, gpus="8xH100-80GB", seq_len=..., global_batch_size=...)`` answers "what fits
on these GPUs?":

1. **enumerate** every valid layout of ``N = nodes × gpus per node`` GPUs:
   ``tp`` divides the GPUs of a node (tensor parallelism stays inside a node's NVLink
   domain), the attention heads and the KV heads (or is a multiple of them: KV heads are
   copied); ``pp`` divides the layers; ``cp`` is a power of two up to ``max_cp`` dividing
   the sequence; ``ep`` (MoE models) divides the experts and ``dp``; ``dp = N / (tp·pp·cp)``;
   ``zero`` 0–3 (only 0 without data parallelism); ``sp`` on or off when ``tp > 1``; the
   micro-batch is ``micro_batch_size`` sequences per rank, and the global batch sets the
   accumulation: ``global_batch_size = micro_batch_size × dp × (microbatches | grad_accum)``
   (a layout whose ``dp`` does not divide it, or a 1F1B pipeline with fewer micro-batches
   than stages, is not valid);
2. **evaluate** each with :func:`memlib.parallel.rank.rank_memory`, every pipeline stage
   and ZeRO-1 rank included: the layout's peak is the largest rank's;
3. **keep** those whose peak fits the GPU's runtime total (:attr:`memlib.hardware.GPU.usable_bytes`,
   what ``torch.cuda.mem_get_info`` reports, as chapter 07 uses), and **rank** them by a
   simple criterion, stated: the fewest model-parallel GPUs ``tp·pp·cp·ep`` first (less
   communication per step), then the lowest ZeRO stage (less communication), then no
   offload (offloading costs host-device traffic every step), then the most headroom.

Layouts that share a shape share their pieces (tensor tables, FSDP2 units, optimizer
shares and each activation skeleton are cached), so a 1,024-GPU question answers in well
under a second (``benchmarks/bench_parallel_planner.py``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..hardware import get_gpu
from ..scenario import DEFAULT_OPTIMIZER_IMPL, check_seq_len
from ..spec import load_spec
from ..validation import choice, positive_int
from .plan import Plan
from .rank import rank_memory

OFFLOAD_ORDER = ("none", "optimizer", "params", "both")
_GPUS = re.compile(r"^\s*(?:(\d+)\s*[x×]\s*)?(\d+)\s*[x×]\s*(.+?)\s*$")


def parse_gpus(gpus) -> tuple[int, int, object]:
    """``(nodes, gpus per node, GPU)`` from ``"8xH100-80GB"`` (one node of 8) or
    ``"128x8xH100-80GB"`` (128 nodes of 8), chapter 05.  ``ValueError`` naming ``gpus``."""
    m = _GPUS.match(str(gpus))
    if not m:
        raise ValueError(f"gpus: expected 'COUNTxGPU' or 'NODESxPER_NODExGPU' (e.g. 8xH100-80GB), got {gpus!r}")
    nodes, per_node, name = int(m.group(1) or 1), int(m.group(2)), m.group(3)
    if nodes < 1 or per_node < 1:
        raise ValueError(f"gpus: counts must be >= 1, got {gpus!r}")
    try:
        gpu = get_gpu(name)
    except ValueError as e:
        raise ValueError(f"gpus: {e}") from None
    return nodes, per_node, gpu


@dataclass(frozen=True)
class Layout:
    """One evaluated layout: the plan, the largest rank's peak, its phase, the headroom left
    on the GPU (negative: it does not fit), and the micro-batch and accumulation used."""

    plan: Plan
    peak: int
    peak_phase: str
    headroom: int
    micro_batch_size: int
    accumulation: int
    rank0_peak: int

    @property
    def fits(self) -> bool:
        return self.headroom >= 0

    def to_dict(self) -> dict:
        p = self.plan
        return {"plan": p.label(), "dp": p.dp, "tp": p.tp, "pp": p.pp, "cp": p.cp, "ep": p.ep, "zero": p.zero,
                "sp": p.sp, "microbatches": p.microbatches, "schedule": p.schedule if p.pp > 1 else None,
                "micro_batch_size": self.micro_batch_size, "accumulation": self.accumulation,
                "peak": self.peak, "peak_phase": self.peak_phase, "headroom": self.headroom}


@dataclass
class PlanResult:
    """The planner's answer: ``fits`` (ranked), how many layouts were ``considered``, the
    GPU and its ``gpu_bytes``, and the question (chapter 05)."""

    fits: list
    considered: int
    gpu: object
    gpu_bytes: int
    question: dict
    all: list = field(default_factory=list, repr=False)

    def to_dict(self, top: int | None = None) -> dict:
        rows = self.fits if top is None else self.fits[:top]
        return {"question": self.question, "gpu": self.gpu.name, "gpu_bytes": self.gpu_bytes,
                "considered": self.considered, "fitting": len(self.fits), "layouts": [r.to_dict() for r in rows],
                "ranking": "fewest model-parallel GPUs (tp*pp*cp*ep), then lowest ZeRO stage, then no offload, "
                           "then most headroom"}

    def table(self, top: int = 15) -> str:
        """The fitting layouts as a text table (GiB), best first."""
        q = self.question
        head = (f"{q['model']} on {q['gpus']} ({self.gpu_bytes / 2**30:.2f} GiB each), seq {q['seq_len']}, "
                f"global batch {q['global_batch_size']}, {q['precision']}, recompute={q['recompute']}: "
                f"{len(self.fits)} of {self.considered} layouts fit")
        lines = [head, f"{'layout':<34}{'micro x accum':>14}{'peak GiB':>10}{'headroom':>10}  phase"]
        for r in self.fits[:top]:
            lines.append(f"{r.plan.label():<34}{f'{r.micro_batch_size} x {r.accumulation}':>14}"
                         f"{r.peak / 2**30:>10.2f}{r.headroom / 2**30:>10.2f}  {r.peak_phase}")
        if len(self.fits) > top:
            lines.append(f"... and {len(self.fits) - top} more")
        return "\n".join(lines)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def layouts(spec, nodes: int, per_node: int, seq_len: int, global_batch_size, micro_batch_size: int = 1,
            schedule: str = "1f1b", max_cp: int = 16, zero_stages=(0, 1, 2, 3),
            offloads=("none",)) -> list[tuple[Plan, int]]:
    """Every valid ``(plan, accumulation)`` of ``nodes × per_node`` GPUs (module docstring, chapter 05)."""
    N = nodes * per_node
    out = []
    tps = [t for t in _divisors(per_node) if spec.num_heads % t == 0
           and (spec.is_mla or spec.num_kv_heads % t == 0 or t % spec.num_kv_heads == 0)
           and (all(spec.moe_layers) or spec.intermediate_size % t == 0)]
    pps = [p for p in _divisors(spec.num_layers) if N % p == 0]
    cps = [c for c in (1, 2, 4, 8, 16, 32, 64) if c <= max_cp and seq_len % c == 0 and N % c == 0]
    for tp in tps:
        for pp in pps:
            for cp in cps:
                if N % (tp * pp * cp):
                    continue
                dp = N // (tp * pp * cp)
                per_step = micro_batch_size * dp
                if global_batch_size is None:
                    accum = pp if pp > 1 else 1
                elif global_batch_size % per_step:
                    continue
                else:
                    accum = global_batch_size // per_step
                if pp > 1 and schedule == "1f1b" and accum < pp:
                    continue
                eps = [1]
                if spec.is_moe:
                    eps += [e for e in _divisors(spec.num_experts) if e > 1 and dp % e == 0]
                for ep in eps:
                    zs = [z for z in zero_stages if z == 0 or dp > 1] if ep == 1 else [z for z in zero_stages if z >= 2]
                    for zero in zs:
                        for sp in ((False, True) if tp > 1 else (False,)):
                            for off in offloads:
                                if off in ("params", "both") and zero < 2:
                                    continue
                                plan = Plan(dp=dp, tp=tp, pp=pp, cp=cp, ep=ep, zero=zero, sp=sp,
                                            microbatches=accum if pp > 1 else 1, schedule=schedule, offload=off)
                                out.append((plan, accum))
    return out


def plan(model, gpus="8xH100-80GB", seq_len: int = 4096, global_batch_size: int | None = None,
         precision: str = "bf16", optimizer: str = "adamw", optimizer_impl: str = DEFAULT_OPTIMIZER_IMPL,
         recompute: str = "none", attention: str = "sdpa", micro_batch_size: int = 1, schedule: str = "1f1b",
         max_cp: int = 16, offload="none") -> PlanResult:
    """The parallel layouts of ``model`` that fit ``gpus``, ranked (chapter 05).

    ``peak(layout) = max over its rank kinds (pipeline stages, ZeRO-1 ranks) of
    rank_memory(...)``; a layout fits when ``peak <= GPU.usable_bytes``.  ``gpus``:
    ``"8xH100-80GB"`` or ``"NODESxPER_NODExGPU"``.  Ranking: fewest model-parallel GPUs
    ``tp·pp·cp·ep``, then lowest ZeRO stage, then no offload, then most headroom (module
    docstring).  ``offload``: one of ``"none"``, ``"optimizer"``, ``"params"``, ``"both"``, or a
    tuple of them to consider (offloaded bytes must fit the host, which is not checked).
    """
    spec = load_spec(model)
    nodes, per_node, gpu = parse_gpus(gpus)
    seq_len = check_seq_len(spec, seq_len)
    micro_batch_size = positive_int("micro_batch_size", micro_batch_size)
    if global_batch_size is not None:
        global_batch_size = positive_int("global_batch_size", global_batch_size)
    choice("schedule", schedule, ("1f1b", "gpipe"))
    max_cp = positive_int("max_cp", max_cp)
    from .plan import OFFLOADS
    offloads = (offload,) if isinstance(offload, str) else tuple(offload)
    for off in offloads:
        choice("offload", off, OFFLOADS)
    capacity = gpu.usable_bytes
    kw = dict(precision=precision, optimizer=optimizer, recompute=recompute, attention=attention,
              optimizer_impl=optimizer_impl)
    evaluated = []
    for p, accum in layouts(spec, nodes, per_node, seq_len, global_batch_size, micro_batch_size, schedule, max_cp,
                            offloads=offloads):
        if p.cp > 1 and attention != "sdpa":
            continue
        ga = accum if p.pp == 1 else 1
        stages = [rank_memory(spec, micro_batch_size, seq_len, p, stage=s, grad_accum=ga, **kw) for s in range(p.pp)]
        peaks = [int(b.total) for b in stages]
        if p.zero == 1:
            from .memory import _heaviest_zero1_rank
            heavy = _heaviest_zero1_rank(spec, p)
            if heavy:
                peaks.append(int(rank_memory(spec, micro_batch_size, seq_len, p, grad_accum=ga, rank=heavy,
                                             **kw).total))
        worst = max(range(len(peaks)), key=peaks.__getitem__)
        phase = stages[worst].peak_phase if worst < len(stages) else stages[0].peak_phase
        evaluated.append(Layout(p, peaks[worst], phase, capacity - peaks[worst], micro_batch_size, accum, peaks[0]))
    fits = sorted((r for r in evaluated if r.fits),
                  key=lambda r: (r.plan.tp * r.plan.pp * r.plan.cp * r.plan.ep, r.plan.zero,
                                 OFFLOAD_ORDER.index(r.plan.offload), -r.headroom))
    question = {"model": spec.name, "gpus": str(gpus), "nodes": nodes, "gpus_per_node": per_node,
                "seq_len": seq_len, "global_batch_size": global_batch_size, "precision": precision,
                "optimizer": optimizer, "optimizer_impl": optimizer_impl, "recompute": recompute,
                "attention": attention, "micro_batch_size": micro_batch_size, "schedule": schedule,
                "offload": list(offloads)}
    return PlanResult(fits, len(evaluated), gpu, capacity, question, all=evaluated)
