"""Cross-check the bench against PyTorch's MemTracker on every catalog model.

    python scripts/crosscheck_memtracker.py [--models A,B] [--matrix] [--impl loop]

Default: every architecture in ``memlib.catalog_names()`` at b=1, s=64, bf16 and mixed,
recompute none and full (AdamW, ``--impl``, sdpa), each measured by the bench and by
``torch.distributed._tools.mem_tracker.MemTracker`` in the same run
(:func:`memlib.measure.crosscheck_train`); for the mixed/full configuration of each model
the bench also runs alone, to show that MemTracker's presence changes nothing.  ``--matrix`` instead runs every training point of
``scripts/bench_matrix.py``'s matrix and compares the joint run's bench numbers with the
recorded ``data/bench/train.jsonl`` (no extra standalone run).

Results are appended to ``data/bench/memtracker.jsonl`` (resumable: points already there
are skipped) and the table ``data/bench/memtracker.md`` is rewritten from it.  Exit code 1
if any point has an unexplained difference.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
OUT = ROOT / "data" / "bench"
PHASES = ("forward", "backward", "step")
KEYS = ("model", "batch_size", "seq_len", "precision", "recompute", "attention", "optimizer", "optimizer_impl")


def key(p):
    return json.dumps({k: p[k] for k in KEYS}, sort_keys=True)


def catalog_points(models, impl, b=1, s=64):
    for m in models:
        for prec in ("bf16", "mixed"):
            for rec in ("none", "full"):
                yield {"model": m, "batch_size": b, "seq_len": s, "precision": prec, "recompute": rec,
                       "attention": "sdpa", "optimizer": "adamw", "optimizer_impl": impl}


def matrix_points(models):
    import bench_matrix
    for p in bench_matrix.train_points(models):
        yield p


def recorded_bench(path):
    """``{key: phase_peak}`` of the matrix's recorded points."""
    import bench_matrix
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if "phase_peak" in r["measured"]:
                out[bench_matrix.key(r["point"])] = r["measured"]["phase_peak"]
    return out


def run(p, standalone):
    from memlib.measure import crosscheck_train, versions
    t = time.perf_counter()
    try:
        r = crosscheck_train(p["model"], p["batch_size"], p["seq_len"], p["precision"], p["recompute"],
                             p["attention"], p["optimizer"], optimizer_impl=p["optimizer_impl"],
                             standalone=standalone)
    except Exception as e:
        r = {"error": f"{type(e).__name__}: {e}"[:400], **versions()}
    r["seconds"] = round(time.perf_counter() - t, 1)
    return r


def _gib(x):
    return f"{x / 2**30:,.3f}"


def table(rows) -> str:
    """The markdown report of all rows."""
    lines = ["# The bench vs PyTorch's MemTracker", "",
             "Written by `scripts/crosscheck_memtracker.py` from `data/bench/memtracker.jsonl`. "
             "Both instruments watch the same run of the bench's training step "
             "(`memlib.measure.crosscheck_train`): MemTracker gets `track_external(model, opt)` at the "
             "start of the second step, and both restart their peak at every phase switch. "
             "Bytes are exact; *difference* = MemTracker − bench − explained.", "",
             "The last column is MemTracker's own split at the peak phase's peak. Its labels follow "
             "*when* a tensor was made, not what it is: everything allocated inside `opt.step()` is "
             "`optimizer_state` (so AdamW's step temporaries are there: loop max_i(n[i-1] + 2 n[i]) elements, "
             "foreach one more copy of all parameters), a tensor made in the backward is `temporaries` "
             "until MemTracker relabels parameter gradients as `gradients`, and a tensor made in the "
             "forward is `activations`.", ""]
    vers = {(r.get("torch"), r.get("transformers")) for r in rows}
    lines += [f"Versions: {', '.join(f'torch {t}, transformers {tf}' for t, tf in sorted(vers, key=str))}.", ""]
    ok = [r for r in rows if "error" not in r]
    bad = [r for r in ok if not r["agree"]]
    unchanged = [r for r in ok if r.get("bench_unchanged") is False]
    explained = [r for r in ok if any(r["explained"].values())]
    lines += [f"**{len(ok)} points compared, {len(ok) - len(bad)} agree to the byte "
              f"(after the explained differences), {len(bad)} do not; "
              f"{len([r for r in rows if 'error' in r])} errors.**", ""]
    if unchanged:
        lines += [f"**MemTracker's presence changed the bench's numbers at {len(unchanged)} points.**", ""]
    if explained:
        causes = sorted({c for r in explained for c in r["explained_causes"].values()})
        lines += ["Explained differences (exact, asserted):", ""]
        lines += [f"- {c}: {', '.join(sorted({r['model'] for r in explained}))}" for c in causes]
        lines += [""]
    lines += ["| model | b | s | precision | recompute | optimizer | bench forward | bench backward | bench step "
              "| MemTracker − bench (fwd / bwd / step) | explained | difference | peak phase: MemTracker categories (GiB) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(ok, key=lambda r: (r["model"], r["batch_size"], r["seq_len"], r["precision"], r["recompute"],
                                       r["optimizer"], r["optimizer_impl"])):
        b, mt = r["bench"], r["memtracker"]
        peak_phase = max(PHASES, key=lambda p: b[p])
        cats = r["memtracker_categories"].get(peak_phase, {})
        order = ["parameters", "buffers", "gradients", "activations", "temporaries", "optimizer_state", "other"]
        cat_txt = ", ".join(f"{k} {_gib(cats[k])}" for k in sorted(cats, key=lambda k: (order + [k]).index(k))
                            if cats[k])
        expl = "0" if not any(r["explained"].values()) else " / ".join(str(r["explained"][p]) for p in PHASES)
        diff = " / ".join(str(r["difference"][p]) for p in PHASES)
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['seq_len']} | {r['precision']} | {r['recompute']} "
                     f"| {r['optimizer']} {r['optimizer_impl']} | {b['forward']:,} | {b['backward']:,} | {b['step']:,} "
                     f"| {' / '.join(str(mt[p] - b[p]) for p in PHASES)} | {expl} | {diff} "
                     f"| {peak_phase}: {cat_txt} |")
    errs = [r for r in rows if "error" in r]
    if errs:
        lines += ["", "Errors:", ""] + [f"- {r['point']}: {r['error']}" for r in errs]
    return "\n".join(lines) + "\n"


def main():
    import memlib
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(memlib.catalog_names()))
    ap.add_argument("--impl", default="loop", choices=("loop", "foreach", "fused"))
    ap.add_argument("--matrix", action="store_true", help="every training point of scripts/bench_matrix.py")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--table-only", action="store_true", help="rewrite memtracker.md from the jsonl and exit")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "memtracker.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    if not args.table_only:
        models = args.models.split(",")
        # smallest models first, so an interrupted run has covered the most architectures
        models.sort(key=lambda m: memlib.load_spec(m).num_layers * memlib.load_spec(m).hidden_size)
        points = list(matrix_points(models) if args.matrix else catalog_points(models, args.impl))
        done = {key(r["point"]) for r in rows}
        todo = [p for p in points if key(p) not in done]
        recorded = recorded_bench(out / "train.jsonl") if args.matrix else {}
        print(f"{len(todo)} points to cross-check", file=sys.stderr)
        for i, p in enumerate(todo, 1):
            # the bench alone as well, to show MemTracker changes nothing: once per model, on
            # the configuration with the most machinery (autocast, its emulation, recompute)
            alone = not args.matrix and (p["precision"], p["recompute"]) == ("mixed", "full")
            r = run(p, standalone=alone)
            r["point"] = p
            if args.matrix and "error" not in r:
                import bench_matrix
                rec = recorded.get(bench_matrix.key(p))
                r["bench_recorded"] = rec
                r["bench_unchanged"] = None if rec is None else rec == r["bench"]
            rows.append(r)
            with open(path, "a") as f:
                f.write(json.dumps(r, sort_keys=True) + "\n")
            status = r.get("error") or ("agree" if r["agree"] else f"DIFFER {r['difference']}")
            print(f"[{i}/{len(todo)}] {key(p)} {status} {r['seconds']}s", file=sys.stderr, flush=True)
    (out / "memtracker.md").write_text(table(rows))
    bad = [r for r in rows if "error" not in r and (not r["agree"] or r.get("bench_unchanged") is False)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
