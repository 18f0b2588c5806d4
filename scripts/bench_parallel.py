"""Measure chapter 05's parallel validation matrix with the distributed bench and cache it as data.

    nice -n 10 python scripts/bench_parallel.py [--jobs 2] [--models A,B] [--scenarios zero3,tp]
                      [--worlds 2,4,8] [--precisions bf16,mixed] [--crosscheck w2|all|none]
                      [--limit N] [--dry-run] [--out PATH]
    python scripts/bench_parallel.py --summary      # rewrite data/bench/parallel.md from the jsonl

Every point is one training step of one rank, measured by
:func:`memlib.measure.parallel.measure_parallel_train` (fake process group, fake tensors;
PyTorch's MemTracker / FSDPMemTracker alongside on the W=2 points by default), in a worker
process, and appended to ``data/bench/parallel.jsonl`` with its versions.  Points already
there (with or without an error) are skipped, so the script resumes; delete the file (or
the lines of the points to redo) to re-measure.  A point that fails is recorded with its
error, never dropped.  ``--out`` writes elsewhere (e.g. extra cross-checks at W=8).
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

#: the five architectures of the validation matrix: dense GQA, tied embeddings, sliding window,
#: MoE, fused QKV
MODELS = ["Llama-3.1-8B", "Qwen3-0.6B", "Mistral-7B-v0.1", "Qwen3-30B-A3B", "Phi-3-mini-4k-instruct"]
MOE = {"Qwen3-30B-A3B", "Mixtral-8x7B-v0.1"}
WORLDS = (2, 4, 8)
PRECISIONS = ("bf16", "mixed")
SCENARIOS = ("zero3", "zero2", "tp", "tp_sp", "pp", "ddp", "zero1", "ep")
BATCH, SEQ = 1, 512
POINT_KEYS = ("model", "scenario", "world_size", "precision", "batch_size", "seq_len", "microbatches",
              "schedule", "rank")


def points(models, scenarios, worlds, precisions=PRECISIONS):
    """The matrix, in two tiers so that an interrupted sweep still covers the core matrix.

    Tier 1 (every model, W, precision): zero3, zero2, tp, tp_sp and the first pipeline stage of
    1F1B.  Tier 2: the last stage of 1F1B, the first stage of GPipe, ddp (W=2 only: DDP's
    memory does not depend on W), zero1 and, for MoE models, ep.  Pipelines run M = 2 W
    micro-batches.  Within a tier, points go round-robin over the models.
    """
    tiers = ([], [])
    for m, w, prec in itertools.product(models, worlds, precisions):
        base = {"model": m, "world_size": w, "precision": prec, "batch_size": BATCH, "seq_len": SEQ,
                "microbatches": None, "schedule": None, "rank": 0}
        for sc in scenarios:
            if sc == "ep" and m not in MOE or sc == "ddp" and w != 2:
                continue
            if sc == "pp":
                for tier, sched, rank in ((0, "1f1b", 0), (1, "1f1b", w - 1), (1, "gpipe", 0)):
                    tiers[tier].append({**base, "scenario": "pp", "microbatches": 2 * w, "schedule": sched,
                                        "rank": rank})
            else:
                tiers[0 if sc in ("zero3", "zero2", "tp", "tp_sp") else 1].append({**base, "scenario": sc})
    for tier in tiers:
        by_model: dict = {}
        for p in tier:
            by_model.setdefault(p["model"], []).append(p)
        for group in itertools.zip_longest(*by_model.values()):
            yield from (p for p in group if p)


def key(p: dict) -> str:
    return json.dumps({k: p.get(k) for k in POINT_KEYS}, sort_keys=True)


def _top(d: dict, n: int = 8) -> dict:
    return dict(sorted(d.items(), key=lambda kv: -kv[1])[:n])


def run_point(p, crosscheck="w2"):
    """Measure one point (in a worker process); returns ``(point, measured)``.

    ``crosscheck``: ``"w2"`` runs PyTorch's tracker alongside on the W=2 points only (it
    costs about a third more time), ``"all"`` on every point, ``"none"`` never.
    """
    import torch
    import transformers
    t = time.perf_counter()
    try:
        from memlib.measure.parallel import measure_parallel_train
        kw = {}
        if p["scenario"] == "pp":
            kw = {"microbatches": p["microbatches"], "schedule": p["schedule"], "rank": p["rank"]}
        cc = crosscheck == "all" or crosscheck == "w2" and p["world_size"] == 2
        r = measure_parallel_train(p["model"], p["scenario"], p["world_size"], p["batch_size"], p["seq_len"],
                                   p["precision"], crosscheck=cc, **kw)
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
        root = e
        while root.__cause__ is not None or root.__context__ is not None:
            root = root.__cause__ or root.__context__
        res = {"error": f"{type(e).__name__}: {e}"[:600]}
        if root is not e:
            res["error_root"] = f"{type(root).__name__}: {root}"[:600]
    res["torch"], res["transformers"] = torch.__version__, transformers.__version__
    res["seconds"] = round(time.perf_counter() - t, 1)
    return p, res


def load(path=OUT):
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def gib(b):
    return f"{b / 2**30:.3f}"


COMPONENT_COLUMNS = ("weights", "gradients", "optimizer", "unsharded_params", "unsharded_grads", "fsdp_all_gather",
                     "fsdp_reduce_scatter", "ddp_buckets", "pp_buffers", "comm", "activations")
ABBREV = {"weights": "W", "gradients": "G", "optimizer": "O", "unsharded_params": "UP", "unsharded_grads": "UG",
          "fsdp_all_gather": "AG", "fsdp_reduce_scatter": "RS", "ddp_buckets": "DB", "pp_buffers": "PB",
          "comm": "C", "activations": "A"}


def _label(p):
    if p["scenario"] == "pp":
        return f"pp {p['schedule']} M={p['microbatches']} stage {p['rank']}"
    return p["scenario"]


_PIECES: dict = {}


def _pieces(model):
    """Parameter counts of a model's FSDP units, from memlib's count of its config: embedding,
    head, final norm (the root unit) and one decoder layer."""
    if model not in _PIECES:
        import memlib
        from memlib.params import count_params
        c = dict(count_params(model).components)
        spec = memlib.load_spec(model)
        emb, head, norm = c.get("embeddings", 0), c.get("lm_head", 0), spec.hidden_size
        rest = sum(c.values()) - emb - head - norm
        _PIECES[model] = {"embed": emb, "head": head, "norm": norm, "layer": rest // spec.num_layers,
                          "layers": spec.num_layers, "exact": rest % spec.num_layers == 0}
    return _PIECES[model]


def explain_fsdp(model, nbytes, sizes=(2, 4)):
    """``nbytes`` as ``embed/head/norm + k layers`` of the model in bf16 (2 B) or fp32 (4 B), or None.

    ``sizes``: the element sizes to try, in order (the first exact match wins).
    """
    pc = _pieces(model)
    if not pc["exact"] or nbytes <= 0:
        return None
    for size in sizes:
        if nbytes % size:
            continue
        n = nbytes // size
        for a, b, c in itertools.product((0, 1), repeat=3):
            rest = n - a * pc["embed"] - b * pc["head"] - c * pc["norm"]
            if rest >= 0 and rest % pc["layer"] == 0 and rest // pc["layer"] <= pc["layers"]:
                k = rest // pc["layer"]
                parts = [name for name, f in (("embed", a), ("head", b), ("norm", c)) if f]
                parts += [f"{k} layer{'s' if k > 1 else ''}"] if k else []
                return " + ".join(parts) + f" ({'bf16' if size == 2 else 'fp32'})"
    return None


def summary():
    """Rewrite ``parallel.md``: the MemTracker agreement per scenario, then one row per point."""
    rows = load()
    order = {sc: i for i, sc in enumerate(SCENARIOS)}
    rows.sort(key=lambda r: (r["point"]["model"], order.get(r["point"]["scenario"], 99), r["point"]["world_size"],
                             r["point"]["precision"], str(r["point"]["schedule"]), r["point"]["rank"]))
    ok = [r for r in rows if "error" not in r["measured"]]
    errors = [r for r in rows if "error" in r["measured"]]
    total_s = sum(r["measured"].get("seconds", 0) for r in rows)
    vers = sorted({(r["measured"].get("torch"), r["measured"].get("transformers")) for r in rows})
    lines = ["# Parallel bench: one rank's training peak (measured)", "",
             f"Generated by `scripts/bench_parallel.py --summary` from `parallel.jsonl`: {len(rows)} points, "
             f"{len(ok)} measured, {len(errors)} that did not run (listed at the end, with the reason).",
             f"Versions: {', '.join(f'torch {t}, transformers {tr}' for t, tr in vers)}.", "",
             "Each point is one training step (the second of two) of one rank of a fake world of W ranks",
             "(PyTorch's fake process group, fake tensors on the CPU), batch 1 per rank (per micro-batch",
             "for pp), sequence 512, AdamW (loop).  Scenario definitions: the docstrings of",
             "`memlib/measure/parallel.py`, `pipeline.py`, `tp_plan.py` and `expert_parallel.py`.",
             "Peaks in GiB (2^30 bytes), the input batch excluded.", "",
             "## Agreement with PyTorch's own tracker", "",
             "`FSDPMemTracker` (zero2, zero3, ep) or `MemTracker` (the others) ran alongside the bench's",
             "counter over the same step (on the W=2 points by default); the difference of the two peaks in bytes:",
             "", "| scenario | points cross-checked | max abs diff (bytes) |", "|---|---|---|"]
    per = {}
    for r in ok:
        cc = r["measured"].get("crosscheck")
        if cc:
            per.setdefault(r["point"]["scenario"], []).append(abs(cc["diff_bytes"]))
    for sc in SCENARIOS:
        if sc in per:
            lines.append(f"| {sc} | {len(per[sc])} | {max(per[sc])} |")
    lines += ["", "## Every point", "",
              "Components at the peak, GiB: W weights (this rank's parameters), G gradients, O optimizer",
              "state, UP unsharded parameters (FSDP2), UG unsharded gradients, AG all-gather buffers, RS",
              "reduce-scatter buffers, DB DDP buckets, PB pipeline receive buffers, C collective outputs",
              "(TP redistributions), A activations and temporaries (everything else).", "",
              "| model | scenario | W | prec | peak GiB | phase | fwd / bwd / step GiB | components at the peak | "
              "MemTracker diff | s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, m = r["point"], r["measured"]
        head = f"| {p['model']} | {_label(p)} | {p['world_size']} | {p['precision']} |"
        if "error" in m:
            lines.append(f"{head} error | | | | | {m.get('seconds', '')} |")
            continue
        ph = m["phase_peak"]
        phases = " / ".join(gib(ph[k]) if k in ph else "-" for k in ("forward", "backward", "step"))
        comps = ", ".join(f"{ABBREV[k]} {gib(m['components_at_peak'][k])}" for k in COMPONENT_COLUMNS
                          if m["components_at_peak"].get(k))
        cc = m.get("crosscheck")
        lines.append(f"{head} {gib(m['train_peak'])} | {m['peak_phase']} | {phases} | {comps} | "
                     f"{cc['diff_bytes'] if cc else ''} | {m.get('seconds', '')} |")
    lines += ["", "## What FSDP2 holds at the peak", "",
              "The FSDP2 components at each zero2/zero3/ep point's peak, written as the model's own FSDP units:",
              "`embed`, `head` and `norm` (the root unit) and decoder `layer`s, in bf16 or fp32 bytes, when the",
              "bytes match such a sum exactly (units counted by `memlib.params.count_params` from the config;",
              "a blank means no exact match, e.g. part of a layer).  UP unsharded parameters, AG all-gather",
              "buffers, UG unsharded gradients, RS reduce-scatter buffers.", "",
              "| model | scenario | W | prec | phase | UP | AG | UG | RS |", "|---|---|---|---|---|---|---|---|---|"]
    for r in ok:
        p, m = r["point"], r["measured"]
        if p["scenario"] not in ("zero2", "zero3", "ep"):
            continue
        c = m["components_at_peak"]
        # mixed precision reduces in fp32: try fp32 first for the reduce-scatter buffers
        order = {"fsdp_reduce_scatter": (4, 2) if p["precision"] == "mixed" else (2, 4)}
        cells = [explain_fsdp(p["model"], c[k], order.get(k, (2, 4))) or "" if c.get(k) else "0" for k in
                 ("unsharded_params", "fsdp_all_gather", "unsharded_grads", "fsdp_reduce_scatter")]
        lines.append(f"| {p['model']} | {p['scenario']} | {p['world_size']} | {p['precision']} | {m['peak_phase']} | "
                     + " | ".join(cells) + " |")
    lines += ["", f"Measuring time: {total_s / 3600:.2f} h in all (sum of per-point seconds, "
                  f"on a shared 2-core machine).", ""]
    if errors:
        lines += ["## Points that did not run", ""]
        for r in errors:
            p = r["point"]
            err = r["measured"].get("error_root") or r["measured"]["error"]
            lines.append(f"- {p['model']} {_label(p)} W={p['world_size']} {p['precision']}: "
                         f"`{' '.join(err.split())[:300]}`")
    SUMMARY.write_text("\n".join(lines) + "\n")
    print(f"wrote {SUMMARY} ({len(rows)} points, {len(errors)} errors)", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--worlds", default=",".join(map(str, WORLDS)))
    ap.add_argument("--limit", type=int, default=0, help="measure at most this many points")
    ap.add_argument("--crosscheck", choices=("w2", "all", "none"), default="w2",
                    help="run PyTorch's MemTracker alongside: on W=2 points (default), all, or none")
    ap.add_argument("--dry-run", action="store_true", help="list the points still to measure")
    ap.add_argument("--summary", action="store_true", help="only rewrite parallel.md")
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--out", default=str(OUT), help="the jsonl to append to (and to resume from)")
    args = ap.parse_args()
    if args.summary:
        summary()
        return
    out = Path(args.out)
    done = {key(r["point"]) for r in load(out)}
    todo = [p for p in points(args.models.split(","), args.scenarios.split(","),
                              [int(w) for w in args.worlds.split(",")], args.precisions.split(","))
            if key(p) not in done]
    if args.limit:
        todo = todo[:args.limit]
    print(f"{len(todo)} points to measure", file=sys.stderr)
    if args.dry_run:
        for p in todo:
            print(key(p))
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    import functools
    work = functools.partial(run_point, crosscheck=args.crosscheck)
    # a worker measures up to 10 points (imports cost ~20 s); each point builds its own fake world
    with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=10) as pool:
        for i, (p, res) in enumerate(pool.imap_unordered(work, todo), 1):
            with open(out, "a") as f:
                f.write(json.dumps({"point": p, "measured": res}, sort_keys=True) + "\n")
            peak = res.get("train_peak")
            cc = (res.get("crosscheck") or {}).get("diff_bytes")
            print(f"[{i}/{len(todo)}] {key(p)} peak={peak} cc_diff={cc} {res.get('error', '')[:200]} "
                  f"{res['seconds']}s (elapsed {time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    if out == OUT:
        summary()


if __name__ == "__main__":
    main()
