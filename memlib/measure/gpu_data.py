"""Measured GPU runs and the MemTracker cross-check, read from the repository's data (chapter 08).

``scripts/gpu_bench.py`` runs the bench's reference scenarios on a CUDA GPU and writes one
JSON file per run under ``data/gpu/<device>/<scenario>.json`` (``data/gpu/README.md`` names
every field); ``scripts/crosscheck_memtracker.py`` writes ``data/bench/memtracker.jsonl``.
These helpers read them and lay them out side by side.  Pure Python: no torch, no GPU.
"""
from __future__ import annotations

import json
from pathlib import Path

from .accuracy import BENCH_DIR, load_records

#: Where ``scripts/gpu_bench.py`` writes its files.
GPU_DIR = BENCH_DIR.parent / "gpu"
PHASES = ("forward", "backward", "step")


def load_gpu_runs(directory=None) -> list[dict]:
    """Every ``<device>/<scenario>.json`` under ``data/gpu`` (``[]`` when there are none), sorted (chapter 08)."""
    d = Path(directory) if directory is not None else GPU_DIR
    if not d.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(d.glob("*/*.json"))]


def gpu_vs_fake(run: dict) -> dict:
    """One GPU run beside the same scenario on fake CPU tensors, in bytes (chapter 08):
    ``{"scenario", "device", "kind", "fake_cpu", "gpu_counter", "max_allocated", "max_reserved",
    "reserved_minus_allocated", "context", "non_pytorch", "error"}``.

    ``fake_cpu`` and ``gpu_counter`` are the storage counter's totals (the same instrument on
    both devices); ``max_allocated`` / ``max_reserved`` are ``torch.cuda``'s peaks over the
    measured window (``reserved_minus_allocated`` is what the caching allocator held but no
    tensor used at those peaks); ``context`` is the memory in use before the model existed,
    ``non_pytorch`` the memory in use at the end that the allocator did not reserve.  Fields
    are None where the run failed (``error`` says why).
    """
    out = {"scenario": run.get("scenario"), "kind": run.get("kind"),
           "device": (run.get("device") or {}).get("name"),
           "fake_cpu": (run.get("fake_cpu") or {}).get("total"), "error": run.get("gpu_error")}
    gpu = run.get("gpu")
    cuda = (gpu or {}).get("meta", {}).get("cuda") or {}
    out.update(gpu_counter=(gpu or {}).get("total"), max_allocated=cuda.get("max_allocated"),
               max_reserved=cuda.get("max_reserved"), context=cuda.get("context_bytes"),
               non_pytorch=cuda.get("non_pytorch_bytes"))
    out["reserved_minus_allocated"] = (None if out["max_reserved"] is None or out["max_allocated"] is None
                                       else out["max_reserved"] - out["max_allocated"])
    return out


def memtracker_table(records=None) -> list[dict]:
    """The stored MemTracker cross-checks (``data/bench/memtracker.jsonl``), one row each:
    ``{"model", "batch_size", "seq_len", "precision", "recompute", "optimizer_impl", "agree",
    "bench" (peak by phase), "difference" (MemTracker − bench − explained, by phase),
    "explained" (bytes by phase), "causes", "bench_unchanged", "peak_phase", "categories"
    (MemTracker's split at the bench's peak phase), "error"}`` (chapter 08)."""
    rows = []
    for r in load_records("memtracker") if records is None else records:
        p = r.get("point", r)
        row = {k: p.get(k) for k in ("model", "batch_size", "seq_len", "precision", "recompute", "optimizer_impl")}
        if "error" in r:
            rows.append({**row, "error": r["error"], "agree": None})
            continue
        bench = {ph: int(r["bench"][ph]) for ph in PHASES}
        peak = max(PHASES, key=lambda ph: bench[ph])
        rows.append({**row, "error": None, "agree": bool(r["agree"]), "bench": bench,
                     "difference": {ph: int(r["difference"][ph]) for ph in PHASES},
                     "explained": {ph: int(r["explained"][ph]) for ph in PHASES},
                     "causes": sorted(set(r.get("explained_causes", {}).values())),
                     "bench_unchanged": r.get("bench_unchanged"), "peak_phase": peak,
                     "categories": {k: int(v) for k, v in r.get("memtracker_categories", {}).get(peak, {}).items()}})
    return rows
