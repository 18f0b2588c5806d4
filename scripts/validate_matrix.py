"""Compare memlib's predictions with the bench's cached measurements (chapters 03-04).

    python scripts/validate_matrix.py [--train] [--prefill] [--figure]

Reads ``data/bench/*.jsonl`` (written by ``scripts/bench_matrix.py``) and prints, per
point, predicted vs measured and the error; points where the CPU ran the math attention
path (which a GPU would not) are listed apart, with the reason, and left out of the
accuracy statistics.  ``--figure`` writes ``figures/08_prefill_accuracy.png``,
``figures/08_train_accuracy.png`` and ``data/bench/accuracy.md``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import memlib  # noqa: E402
from memlib.measure.compare import compare as compare_record  # noqa: E402


def load(kind):
    path = ROOT / "data" / "bench" / f"{kind}.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def compare(kind):
    """``(point, measured, predicted, error, note)`` for every stored point (the bridge:
    :mod:`memlib.measure.compare`)."""
    rows = []
    for rec in load(kind):
        c = compare_record(rec, kind)
        if "excluded" in c:
            rows.append((c["point"], None, None, None, c["excluded"]))
            continue
        if kind == "train":
            ok = c["predicted_phase"] == c["phase"]
            note = f"{c['phase']:>8}/{c['predicted_phase']:<8}{'' if ok else ' PHASE'}"
        else:
            note = f"kv {c['kv_error']:+d}"
        rows.append((c["point"], c["measured"], c["predicted"], c["error"], note))
    return rows


def report(kind, rows, out):
    ok = [r for r in rows if r[3] is not None]
    print(f"\n## {kind}: {len(ok)} points compared, {len(rows) - len(ok)} left out", file=out)
    print("| model | B | S | knobs | measured GiB | predicted GiB | error | note |", file=out)
    print("|---|---|---|---|---|---|---|---|", file=out)
    for p, mt, pt, err, note in rows:
        knobs = " ".join(str(p[k]) for k in ("precision", "recompute", "attention") if k in p)
        if err is None:
            print(f"| {p['model']} | {p['batch_size']} | {p['seq_len']} | {knobs} | | | | {note} |", file=out)
        else:
            print(f"| {p['model']} | {p['batch_size']} | {p['seq_len']} | {knobs} | {mt / 2**30:.3f} | "
                  f"{pt / 2**30:.3f} | {err * 100:+.2f}% | {note} |", file=out)
    if ok:
        errs = [abs(r[3]) for r in ok]
        worst = max(ok, key=lambda r: abs(r[3]))
        print(f"\nmedian |error| {statistics.median(errs) * 100:.2f}%, max {max(errs) * 100:.2f}% "
              f"({worst[0]})", file=out)
        if kind == "train":
            bad = [r for r in ok if "PHASE" in r[4]]
            print(f"peak phase agrees at {len(ok) - len(bad)}/{len(ok)} points", file=out)


def figure(kind, rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in rows if r[3] is not None]
    if not ok:
        return
    fig, ax = plt.subplots(figsize=(5.5, 5))
    xs = [r[1] / 2**30 for r in ok]
    ys = [r[2] / 2**30 for r in ok]
    ax.loglog(xs, ys, "o", ms=3, alpha=0.6)
    lo, hi = min(xs + ys) * 0.8, max(xs + ys) * 1.25
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.fill_between([lo, hi], [lo * 0.95, hi * 0.95], [lo * 1.05, hi * 1.05], color="0.85", label="±5 %")
    ax.set_xlabel("measured (bench), GiB")
    ax.set_ylabel("predicted (memlib), GiB")
    ax.set_title(f"{'training peak' if kind == 'train' else 'prefill total'}: {len(ok)} points")
    ax.legend()
    memlib.save_fig(fig, f"08_{kind}_accuracy")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--prefill", action="store_true")
    ap.add_argument("--figure", action="store_true")
    args = ap.parse_args()
    kinds = [k for k in ("prefill", "train") if getattr(args, k)] or ["prefill", "train"]
    out = open(ROOT / "data" / "bench" / "accuracy.md", "w") if args.figure else sys.stdout
    for kind in kinds:
        rows = compare(kind)
        report(kind, rows, out)
        if args.figure:
            figure(kind, rows)
    if args.figure:
        out.close()
        print((ROOT / "data" / "bench" / "accuracy.md").read_text())


if __name__ == "__main__":
    main()
