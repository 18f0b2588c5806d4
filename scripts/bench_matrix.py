"""Measure the accuracy matrix of chapters 03-04 with the bench and cache it as data.

    python scripts/bench_matrix.py [--jobs 2] [--only train|prefill] [--models A,B]

Every point is measured once with ``memlib.measure`` (fake tensors on the CPU) and
appended to ``data/bench/train.jsonl`` / ``data/bench/prefill.jsonl`` with its versions;
points already there are skipped, so the script resumes.  ``scripts/validate_matrix.py``
compares memlib's predictions with these measurements.
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

#: Issue 4's matrix: catalog models up to ~15B dense, plus two MoE models.
MODELS = ["gpt2", "Qwen3-0.6B", "Phi-3-mini-4k-instruct", "Llama-2-7b", "Mistral-7B-v0.1", "falcon-7b-instruct",
          "Llama-3.1-8B", "Qwen3-8B", "gemma-2-9b", "Llama-2-13b", "opt-13b", "Qwen3-30B-A3B",
          "DeepSeek-V2-Lite"]
SEQ_LENS = (512, 2048, 8192)
BATCHES = (1, 4)


def train_points(models):
    import memlib
    for m in models:
        spec = memlib.load_spec(m)
        for s, b, prec, rec, att in itertools.product(SEQ_LENS, BATCHES, ("bf16", "mixed"),
                                                      ("none", "full"), ("sdpa", "eager")):
            if s <= spec.max_position_embeddings:
                yield {"model": m, "batch_size": b, "seq_len": s, "precision": prec, "recompute": rec,
                       "attention": att}


def prefill_points(models):
    import memlib
    for m in models:
        spec = memlib.load_spec(m)
        for s, b, att in itertools.product(SEQ_LENS, BATCHES, ("sdpa", "eager")):
            if s <= spec.max_position_embeddings:
                yield {"model": m, "batch_size": b, "seq_len": s, "attention": att}


def key(p: dict) -> str:
    return json.dumps({k: p[k] for k in sorted(p) if k in ("model", "batch_size", "seq_len", "precision",
                                                            "recompute", "attention")}, sort_keys=True)


def run_point(args):
    kind, p = args
    from memlib.measure import measure_prefill, measure_train
    t = time.perf_counter()
    try:
        if kind == "train":
            r = measure_train(p["model"], p["batch_size"], p["seq_len"], precision=p["precision"],
                              recompute=p["recompute"], attention=p["attention"])
            res = {"train_peak": r.meta["train_peak"], "phase_peak": r.meta["phase_peak"],
                   "peak_phase": r.meta["peak_phase"], "end_of_forward": r.meta["end_of_forward"],
                   "components_at_peak": dict(r.components)}
        else:
            r = measure_prefill(p["model"], p["batch_size"], p["seq_len"], attention=p["attention"])
            res = {"weights": r.meta["weights"], "buffers": r.meta.get("buffers", 0),
                   "kv_cache": r.meta["kv_cache"], "prefill_peak": r.meta["prefill_peak"]}
        res.update({k: r.meta.get(k) for k in ("attention", "sdpa_fallback", "attention_kernel", "math_path",
                                                "torch", "transformers")})
    except Exception as e:  # recorded, so the table says why a point is missing
        res = {"error": f"{type(e).__name__}: {e}"[:400]}
    res["seconds"] = round(time.perf_counter() - t, 1)
    return kind, p, res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", choices=["train", "prefill"])
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()
    models = args.models.split(",")
    OUT.mkdir(parents=True, exist_ok=True)
    todo = []
    for kind, gen in (("prefill", prefill_points), ("train", train_points)):
        if args.only and args.only != kind:
            continue
        path = OUT / f"{kind}.jsonl"
        done = {key(json.loads(l)["point"]) for l in path.read_text().splitlines()} if path.exists() else set()
        todo += [(kind, p) for p in gen(models) if key(p) not in done]
    # round-robin over models, smallest batch and sequence first, so an interrupted run
    # still covers every model (the script resumes where it stopped)
    by_model: dict = {}
    for kind, p in sorted(todo, key=lambda kp: (kp[1]["seq_len"] * kp[1]["batch_size"], kp[0])):
        by_model.setdefault(p["model"], []).append((kind, p))
    todo = [kp for group in itertools.zip_longest(*by_model.values()) for kp in group if kp]
    print(f"{len(todo)} points to measure", file=sys.stderr)
    with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=20) as pool:
        for i, (kind, p, res) in enumerate(pool.imap_unordered(run_point, todo), 1):
            with open(OUT / f"{kind}.jsonl", "a") as f:
                f.write(json.dumps({"point": p, "measured": res}, sort_keys=True) + "\n")
            print(f"[{i}/{len(todo)}] {kind} {key(p)} {res.get('error', '')} {res['seconds']}s", file=sys.stderr)


if __name__ == "__main__":
    main()
