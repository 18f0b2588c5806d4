"""Measure the accuracy matrix of chapters 03, 04 and 08 with the bench and cache it as data.

    python scripts/bench_matrix.py [--jobs 1] [--only train|prefill] [--models A,B] [--out DIR]

Every point is measured once with ``memlib.measure`` (fake tensors on the CPU) and
appended to ``DIR/train.jsonl`` / ``DIR/prefill.jsonl`` (default ``data/bench``); every
record, errors included, states the torch and transformers versions.  Points already in
the files are skipped, so the script resumes.  ``scripts/validate_matrix.py`` compares
memlib's predictions with these measurements.

The matrix:

* the reference grid: 13 models x s 512/2048/8192 x b 1/4, plus b=2 at s=1024 and b=1 at
  s=4096; bf16/mixed x recompute none/full x sdpa/eager; AdamW, the loop implementation
  (``optimizer_impl="loop"``, the reference rows);
* the optimizer implementations: ``foreach`` and ``fused`` AdamW on four architectures at
  three shapes (the loop rows of the same shapes are in the reference grid), and SGD with
  momentum in all three implementations on two of them;
* prefill at every shape of the reference grid, sdpa/eager.

A training point's key is ``model, batch_size, seq_len, precision, recompute, attention,
optimizer, optimizer_impl``; a prefill point's ``model, batch_size, seq_len, attention``.
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
OUT = ROOT / "data" / "bench"

#: The reference matrix: catalog models up to ~15B dense, plus two MoE models.
MODELS = ["gpt2", "Qwen3-0.6B", "Phi-3-mini-4k-instruct", "Llama-2-7b", "Mistral-7B-v0.1", "falcon-7b-instruct",
          "Llama-3.1-8B", "Qwen3-8B", "gemma-2-9b", "Llama-2-13b", "opt-13b", "Qwen3-30B-A3B",
          "DeepSeek-V2-Lite"]
#: (seq_len, batch_size) of the reference grid: 3 lengths x 2 batches, plus two held-out shapes.
SHAPES = tuple(itertools.product((512, 2048, 8192), (1, 4))) + ((1024, 2), (4096, 1))
#: Every optimizer implementation on four architectures, at these shapes.
IMPL_MODELS = ["gpt2", "Qwen3-0.6B", "Llama-3.1-8B", "Qwen3-30B-A3B"]
IMPL_SHAPES = ((512, 1), (1024, 2), (2048, 1))
SGD_MODELS = ["Qwen3-0.6B", "Llama-3.1-8B"]
TRAIN_KEYS = ("model", "batch_size", "seq_len", "precision", "recompute", "attention", "optimizer", "optimizer_impl")
PREFILL_KEYS = ("model", "batch_size", "seq_len", "attention")


def _fits(spec, s):
    return s <= spec.max_position_embeddings


def train_points(models):
    import memlib
    for m in models:
        spec = memlib.load_spec(m)
        for (s, b), prec, rec, att in itertools.product(SHAPES, ("bf16", "mixed"), ("none", "full"),
                                                        ("sdpa", "eager")):
            if _fits(spec, s):
                yield {"model": m, "batch_size": b, "seq_len": s, "precision": prec, "recompute": rec,
                       "attention": att, "optimizer": "adamw", "optimizer_impl": "loop"}
        if m in IMPL_MODELS:
            for (s, b), prec, rec, impl in itertools.product(IMPL_SHAPES, ("bf16", "mixed"), ("none", "full"),
                                                             ("foreach", "fused")):
                if _fits(spec, s):
                    yield {"model": m, "batch_size": b, "seq_len": s, "precision": prec, "recompute": rec,
                           "attention": "sdpa", "optimizer": "adamw", "optimizer_impl": impl}
        if m in SGD_MODELS:
            for prec, impl in itertools.product(("bf16", "mixed"), ("loop", "foreach", "fused")):
                yield {"model": m, "batch_size": 1, "seq_len": 512, "precision": prec, "recompute": "none",
                       "attention": "sdpa", "optimizer": "sgd", "optimizer_impl": impl}


def prefill_points(models):
    import memlib
    for m in models:
        spec = memlib.load_spec(m)
        for (s, b), att in itertools.product(SHAPES, ("sdpa", "eager")):
            if _fits(spec, s):
                yield {"model": m, "batch_size": b, "seq_len": s, "attention": att}


NEW_SHAPES = ((1024, 2), (4096, 1))


def priority(kind: str, p: dict) -> int:
    """Which points run first (0 = first): what the bench's corrections (AMP scope, MoE mixed,
    GPT-2 mixed + full recompute) and the held-out shapes and implementations change;
    then the rest of the new grid; last the bf16 and prefill points of the old grid, which
    none of those corrections touch."""
    new_shape = (p["seq_len"], p["batch_size"]) in NEW_SHAPES
    if kind == "prefill":
        return 0 if new_shape else 3
    if p.get("optimizer_impl", "loop") != "loop" or p.get("optimizer", "adamw") != "adamw":
        return 0
    if p["attention"] == "sdpa" and (new_shape or p["precision"] == "mixed"):
        return 0 if p["precision"] == "mixed" or new_shape else 1
    if new_shape or p["precision"] == "mixed":
        return 1
    return 2


def key(p: dict) -> str:
    """The identity of a point: its knobs (a train point without optimizer fields is AdamW loop)."""
    if "precision" in p:
        p = {"optimizer": "adamw", "optimizer_impl": "loop", **p}
        keys = TRAIN_KEYS
    else:
        keys = PREFILL_KEYS
    return json.dumps({k: p[k] for k in keys}, sort_keys=True)


def _versions():
    try:
        from memlib.measure import versions
        return versions()
    except Exception as e:  # pragma: no cover - torch missing: say so in the record
        return {"torch": None, "transformers": None, "versions_error": f"{type(e).__name__}: {e}"}


def run_point(args):
    """Measure one point; returns ``(kind, point, record)``; the record always states the versions."""
    kind, p = args
    t = time.perf_counter()
    try:
        from memlib.measure import measure_prefill, measure_train
        if kind == "train":
            r = measure_train(p["model"], p["batch_size"], p["seq_len"], precision=p["precision"],
                              recompute=p["recompute"], attention=p["attention"],
                              optimizer=p.get("optimizer", "adamw"), optimizer_impl=p.get("optimizer_impl", "loop"),
                              timeline_points=0)
            m = r.meta
            res = {"train_peak": m["train_peak"], "phase_peak": m["phase_peak"],
                   "peak_phase": m["peak_phase"], "end_of_forward": m["end_of_forward"],
                   "start_of_backward": m["start_of_backward"],
                   "components_at_peak": dict(r.components), "phase_components": m["phase_components"],
                   "step_temporaries_by_op": {k: v for k, v in m["step_temporaries_by_op"].items()},
                   "optimizer_state": m["optimizer_state"], "optimizer_flags": m["optimizer_flags"],
                   "autocast": m["autocast"], "autocast_emulated": m["autocast_emulated"],
                   "autocast_emulated_recompute": m["autocast_emulated_recompute"],
                   "fake_kernel_patches": m["fake_kernel_patches"]}
        else:
            r = measure_prefill(p["model"], p["batch_size"], p["seq_len"], attention=p["attention"])
            res = {"weights": r.meta["weights"], "buffers": r.meta.get("buffers", 0),
                   "kv_cache": r.meta["kv_cache"], "prefill_peak": r.meta["prefill_peak"]}
        res.update({k: r.meta.get(k) for k in ("attention", "sdpa_fallback", "attention_kernel", "math_path")})
    except Exception as e:  # recorded, so the table says why a point is missing
        res = {"error": f"{type(e).__name__}: {e}"[:400]}
    res.update(_versions())
    res["seconds"] = round(time.perf_counter() - t, 1)
    return kind, p, res


def status(out, models, todo):
    """Measured, failed and missing points of the matrix in ``out``."""
    from collections import Counter
    wanted = {"prefill": {key(p) for p in prefill_points(models)}, "train": {key(p) for p in train_points(models)}}
    for kind in ("prefill", "train"):
        path = out / f"{kind}.jsonl"
        recs = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        recs = [r for r in recs if key(r["point"]) in wanted[kind]]
        errors = [r for r in recs if "error" in r["measured"]]
        print(f"{kind}: {len(wanted[kind])} points, {len(recs)} measured ({len(errors)} errors), "
              f"{len(wanted[kind]) - len(recs)} missing")
        for msg, n in Counter(r["measured"]["error"][:120] for r in errors).most_common():
            print(f"  error x{n}: {msg}")
    missing = Counter((kind, priority(kind, p)) for kind, p in todo)
    for (kind, prio), n in sorted(missing.items()):
        print(f"missing {kind} priority {prio}: {n}")
    for kind, p in todo:
        print("  missing", kind, key(p))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--only", choices=["train", "prefill"])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default=str(OUT), help="folder of train.jsonl / prefill.jsonl (default data/bench)")
    ap.add_argument("--list", action="store_true", help="print the number of points to measure and exit")
    ap.add_argument("--status", action="store_true", help="print measured / failed / missing points and exit")
    args = ap.parse_args()
    models = args.models.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = []
    for kind, gen in (("prefill", prefill_points), ("train", train_points)):
        if args.only and args.only != kind:
            continue
        path = out / f"{kind}.jsonl"
        done = {key(json.loads(line)["point"]) for line in path.read_text().splitlines()} if path.exists() else set()
        todo += [(kind, p) for p in gen(models) if key(p) not in done]
    # by priority; within one, round-robin over models, smallest batch x sequence first
    # (prefill before train at a size), so an interrupted run still covers every model;
    # the script resumes
    ordered = []
    for prio in sorted({priority(*kp) for kp in todo}):
        by_model: dict = {}
        for kind, p in sorted((kp for kp in todo if priority(*kp) == prio),
                              key=lambda kp: (kp[1]["seq_len"] * kp[1]["batch_size"], kp[0])):
            by_model.setdefault(p["model"], []).append((kind, p))
        ordered += [kp for group in itertools.zip_longest(*by_model.values()) for kp in group if kp]
    todo = ordered
    print(f"{len(todo)} points to measure", file=sys.stderr)
    if args.status:
        status(out, models, todo)
        return
    if args.list:
        return
    with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=20) as pool:
        for i, (kind, p, res) in enumerate(pool.imap_unordered(run_point, todo), 1):
            with open(out / f"{kind}.jsonl", "a") as f:
                f.write(json.dumps({"point": p, "measured": res}, sort_keys=True) + "\n")
            print(f"[{i}/{len(todo)}] {kind} {key(p)} {res.get('error', '')} {res['seconds']}s", file=sys.stderr,
                  flush=True)


if __name__ == "__main__":
    main()
