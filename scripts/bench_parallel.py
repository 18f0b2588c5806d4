"""Measure chapter 05's parallel validation matrix with the distributed bench and cache it as data.

    nice -n 10 python scripts/bench_parallel.py [--jobs 1] [--models A,B] [--scenarios zero3,tp]
                                                [--worlds 2,4,8] [--limit N] [--dry-run]
    python scripts/bench_parallel.py --summary      # rewrite data/bench/parallel.md from the jsonl

Every point is one training step of one rank, measured by
:func:`memlib.measure.parallel.measure_parallel_train` (fake process group, fake tensors,
cross-checked against PyTorch's MemTracker / FSDPMemTracker), run in its own process and
appended to ``data/bench/parallel.jsonl`` with its versions.  Points already there (with or
without an error) are skipped, so the script resumes; delete the file (or the lines) to
re-measure.  A point that fails is recorded with its error, never dropped.
"""
from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "data" / "bench" / "parallel.jsonl"
SUMMARY = ROOT / "data" / "bench" / "parallel.md"

#: the five architectures of issue 11's matrix: dense GQA, tied embeddings, sliding window,
#: MoE, fused QKV
MODELS = ["Llama-3.1-8B", "Qwen3-0.6B", "Mistral-7B-v0.1", "Qwen3-30B-A3B", "Phi-3-mini-4k-instruct"]
MOE = {"Qwen3-30B-A3B", "Mixtral-8x7B-v0.1"}
WORLDS = (2, 4, 8)
PRECISIONS = ("bf16", "mixed")
SCENARIOS = ("zero3", "zero2", "tp", "tp_sp", "pp", "ddp", "zero1", "ep")
BATCH, SEQ = 1, 512
POINT_KEYS = ("model", "scenario", "world_size", "precision", "batch_size", "seq_len", "microbatches",
              "schedule", "rank")


def points(models, scenarios, worlds):
    """The matrix, cheapest scenarios first within a model; pp: 1F1B on the first and last stage
    and GPipe on the first, with M = 2 W micro-batches."""
    for m, w, prec in itertools.product(models, worlds, PRECISIONS):
        base = {"model": m, "world_size": w, "precision": prec, "batch_size": BATCH, "seq_len": SEQ,
                "microbatches": None, "schedule": None, "rank": 0}
        for sc in scenarios:
            if sc == "ep" and m not in MOE:
                continue
            if sc == "pp":
                for sched, rank in (("1f1b", 0), ("1f1b", w - 1), ("gpipe", 0)):
                    yield {**base, "scenario": "pp", "microbatches": 2 * w, "schedule": sched, "rank": rank}
            else:
                yield {**base, "scenario": sc}


def key(p: dict) -> str:
    return json.dumps({k: p.get(k) for k in POINT_KEYS}, sort_keys=True)


def _top(d: dict, n: int = 8) -> dict:
    return dict(sorted(d.items(), key=lambda kv: -kv[1])[:n])


def run_point(p):
    """Measure one point (in a fresh process); returns ``(point, measured)``."""
    import torch
    import transformers
    t = time.perf_counter()
    try:
        from memlib.measure.parallel import measure_parallel_train
        kw = {}
        if p["scenario"] == "pp":
            kw = {"microbatches": p["microbatches"], "schedule": p["schedule"], "rank": p["rank"]}
        r = measure_parallel_train(p["model"], p["scenario"], p["world_size"], p["batch_size"], p["seq_len"],
                                   p["precision"], **kw)
        m = r.meta
        res = {"train_peak": m["train_peak"], "peak_phase": m["peak_phase"], "phase_peak": m["phase_peak"],
               "components_at_peak": dict(r.components), "phase_components": m["phase_components"],
               "end_of_forward": m["end_of_forward"], "end_of_forward_components": m["end_of_forward_components"],
               "held": m["held"], "crosscheck": m.get("crosscheck"),
               "activations_by_op_at_peak": _top(m["activations_by_op"]),
               "collectives": m["collectives"], "resize_events": m["resize_events"],
               "attention": m["attention"], "attention_kernel": m["attention_kernel"], "math_path": m["math_path"],
               "sdpa_fallback": m["sdpa_fallback"], "config_changes": m["config_changes"],
               "setup_s": m["setup_s"], "run_s": m["run_s"]}
        for k in ("tp_plan", "fsdp_units", "mp_policy", "stage", "stages", "layers", "first_stage", "last_stage",
                  "tied_head_copy", "schedule_class", "distributed_config", "expert_modules", "ep_routing",
                  "ddp", "zero1", "autocast"):
            if m.get(k) is not None:
                res[k] = m[k]
    except Exception as e:  # recorded, so the table says why a point is missing
        res = {"error": f"{type(e).__name__}: {e}"[:600]}
    res["torch"], res["transformers"] = torch.__version__, transformers.__version__
    res["seconds"] = round(time.perf_counter() - t, 1)
    return p, res


def load():
    if not OUT.exists():
        return []
    return [json.loads(line) for line in OUT.read_text().splitlines() if line.strip()]


def gib(b):
    return f"{b / 2**30:.3f}"


def summary():
    """Rewrite ``parallel.md``: one row per point, rank's peak in GiB, phase, MemTracker agreement."""
    rows = load()
    rows.sort(key=lambda r: (r["point"]["model"], r["point"]["scenario"], r["point"]["world_size"],
                             r["point"]["precision"], str(r["point"]["schedule"]), r["point"]["rank"]))
    lines = ["# Parallel bench: one rank's training peak (measured)", "",
             f"Generated by `scripts/bench_parallel.py --summary` from `parallel.jsonl` ({len(rows)} points).",
             "Batch 1 per rank (per micro-batch for pp), sequence 512, AdamW (loop), second step.",
             "Peak in GiB (2^30 bytes), input batch excluded.  `MemTracker` = the difference in bytes",
             "between the bench's counter and PyTorch's own tracker over the same step (0 = agree).", "",
             "| model | scenario | W | precision | pp (M, schedule, stage) | peak GiB | phase | MemTracker diff | "
             "s |", "|---|---|---|---|---|---|---|---|---|"]
    errors = []
    total_s = 0.0
    for r in rows:
        p, m = r["point"], r["measured"]
        total_s += m.get("seconds", 0)
        pp = f"{p['microbatches']}, {p['schedule']}, {p['rank']}" if p["scenario"] == "pp" else ""
        if "error" in m:
            errors.append((p, m["error"]))
            lines.append(f"| {p['model']} | {p['scenario']} | {p['world_size']} | {p['precision']} | {pp} | "
                         f"error | | | {m.get('seconds', '')} |")
            continue
        cc = m.get("crosscheck") or {}
        lines.append(f"| {p['model']} | {p['scenario']} | {p['world_size']} | {p['precision']} | {pp} | "
                     f"{gib(m['train_peak'])} | {m['peak_phase']} | {cc.get('diff_bytes', 'n/a')} | "
                     f"{m.get('seconds', '')} |")
    lines += ["", f"Total measuring time: {total_s / 3600:.2f} h (sum of per-point seconds).", ""]
    if errors:
        lines += ["## Points that did not run", ""]
        for p, e in errors:
            lines.append(f"- {p['model']} {p['scenario']} W={p['world_size']} {p['precision']}"
                         f"{' ' + p['schedule'] + ' stage ' + str(p['rank']) if p['scenario'] == 'pp' else ''}: "
                         f"`{e[:300]}`")
    SUMMARY.write_text("\n".join(lines) + "\n")
    print(f"wrote {SUMMARY} ({len(rows)} points, {len(errors)} errors)", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--worlds", default=",".join(map(str, WORLDS)))
    ap.add_argument("--limit", type=int, default=0, help="measure at most this many points")
    ap.add_argument("--dry-run", action="store_true", help="list the points still to measure")
    ap.add_argument("--summary", action="store_true", help="only rewrite parallel.md")
    args = ap.parse_args()
    if args.summary:
        summary()
        return
    done = {key(r["point"]) for r in load()}
    todo = [p for p in points(args.models.split(","), args.scenarios.split(","),
                              [int(w) for w in args.worlds.split(",")]) if key(p) not in done]
    if args.limit:
        todo = todo[:args.limit]
    print(f"{len(todo)} points to measure", file=sys.stderr)
    if args.dry_run:
        for p in todo:
            print(key(p))
        return
    OUT.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
        for i, (p, res) in enumerate(pool.imap_unordered(run_point, todo), 1):
            with open(OUT, "a") as f:
                f.write(json.dumps({"point": p, "measured": res}, sort_keys=True) + "\n")
            peak = res.get("train_peak")
            cc = (res.get("crosscheck") or {}).get("diff_bytes")
            print(f"[{i}/{len(todo)}] {key(p)} peak={peak} cc_diff={cc} {res.get('error', '')[:200]} "
                  f"{res['seconds']}s (elapsed {time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    summary()


if __name__ == "__main__":
    main()
