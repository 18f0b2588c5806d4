"""Compare memlib's predictions with the bench's cached measurements (chapters 03, 04, 08).

    python scripts/validate_matrix.py [--train] [--prefill] [--figure]

Reads ``data/bench/prefill.jsonl`` and ``train.jsonl`` (written by ``scripts/bench_matrix.py``)
and compares every point through the one bridge (:mod:`memlib.measure.compare`, via
:mod:`memlib.measure.accuracy`).  Points where the bench failed, or where the CPU ran SDPA's
math path (which a GPU does not), are listed apart with the reason and left out of the
statistics.  The report starts with the accuracy targets over the whole matrix (prefill within
3 % everywhere; training within 3 % everywhere, median within 0.5 %; no under-estimate worse
than 1 %; the training peak phase right at every point), the worst under- and over-estimate
reported separately, then tables by model and by knob, every residual of 0.1 % or more with
its cause, and every point.  ``--figure`` writes it to ``data/bench/accuracy.md`` and draws
``figures/08_prefill_accuracy.png`` and ``figures/08_train_accuracy.png`` (the figures chapter
08 shows); without it the report goes to stdout.  Exit status 0 (the targets are reported, not
enforced here; tests/test_accuracy.py asserts what holds).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from memlib.measure.accuracy import (bench_rows, exclusion_table, group_summary, residual_table,  # noqa: E402
                                     summary, targets)

KNOBS = {"prefill": ("model", "attention", "batch_size", "seq_len"),
         "train": ("model", "attention", "recompute", "precision", "optimizer_impl", "batch_size", "seq_len")}


def pct(x):
    return "" if x is None else f"{100 * x:+.2f}%"


def versions(kind):
    from memlib.measure.accuracy import load_records
    vs = {(r["measured"].get("torch"), r["measured"].get("transformers")) for r in load_records(kind)}
    return ", ".join(f"torch {t}, transformers {tf}" for t, tf in sorted(vs, key=str))


def report(rows_by_kind, out):
    p = print
    p("# The accuracy matrix: memlib against the bench\n", file=out)
    p("Written by `scripts/validate_matrix.py --figure` from `data/bench/prefill.jsonl` and "
      "`data/bench/train.jsonl` (measured with " + "; ".join(f"{k}: {versions(k)}" for k in rows_by_kind)
      + "). Error = predicted / measured − 1: negative is an under-estimate. Chapter 08 "
      "(`notebooks/08_measure.ipynb`) shows the same numbers with figures.\n", file=out)
    p("## Targets over the whole matrix\n", file=out)
    p("| target | value | met |\n|---|---|---|", file=out)
    for t in targets(rows_by_kind.get("prefill", []), rows_by_kind.get("train", [])):
        met = {True: "yes", False: "**no**", None: ""}[t["met"]]
        p(f"| {t['target']} | {t['value']} | {met} |", file=out)
    for kind, rows in rows_by_kind.items():
        s = summary(rows)
        p(f"\n## {kind}: {s['compared']} points compared, {s['left_out']} left out\n", file=out)
        if s["compared"]:
            p(f"median |error| {100 * s['median_abs']:.3f} %, max |error| {100 * s['max_abs']:.2f} %; "
              f"exact to the byte: {s['exact']}; within 1 %: {s['within_1pct']}"
              + (f"; peak phase right: {s['phase_agree']}/{s['phase_points']}" if s["phase_points"] else "")
              + ".\n", file=out)
        for name, keyname in [(k, k) for k in KNOBS[kind]]:
            groups = group_summary(rows, keyname)
            p(f"\nBy {name}:\n", file=out)
            p("| " + name + " | compared | left out | median abs | max abs | worst under | worst over |"
              + (" phase right |" if kind == "train" else ""), file=out)
            p("|---|---|---|---|---|---|---|" + ("---|" if kind == "train" else ""), file=out)
            for value, g in sorted(groups.items(), key=lambda kv: str(kv[0])):
                if not g["compared"]:
                    p(f"| {value} | 0 | {g['left_out']} | | | | |" + (" |" if kind == "train" else ""), file=out)
                    continue
                under = pct(g["worst_under"]["error"]) if g["worst_under"] else "none"
                over = pct(g["worst_over"]["error"]) if g["worst_over"] else "none"
                phase = f" {g['phase_agree']}/{g['phase_points']} |" if kind == "train" else ""
                p(f"| {value} | {g['compared']} | {g['left_out']} | {100 * g['median_abs']:.3f}% "
                  f"| {100 * g['max_abs']:.2f}% | {under} | {over} |{phase}", file=out)
    p("\n## Residuals of 0.1 % or more, and their causes\n", file=out)
    p("| kind | where | points | error | residual (bytes) | in units of | cause |\n|---|---|---|---|---|---|---|",
      file=out)
    everything = [r for rows in rows_by_kind.values() for r in rows]
    for g in residual_table(everything):
        err = pct(g["error_min"]) + ("" if g["error_min"] == g["error_max"] else f" to {pct(g['error_max'])}")
        res = f"{g['residual_min']:,}" + ("" if g["residual_min"] == g["residual_max"] else f" to {g['residual_max']:,}")
        units = f"{g['unit']}: {g['in_units']}" if g["unit"] else ""
        p(f"| {g['kind']} | {g['where']} | {g['points']} | {err} | {res} | {units} | {g['cause']} |", file=out)
    p("\n## Left out\n", file=out)
    p("| kind | reason | points | models |\n|---|---|---|---|", file=out)
    for e in exclusion_table(everything):
        p(f"| {e['kind']} | {e['reason']} | {e['points']} | {', '.join(e['models'])} |", file=out)
    for kind, rows in rows_by_kind.items():
        p(f"\n## {kind}: every point\n", file=out)
        p("| point | measured GiB | predicted GiB | error | phase (measured/memlib) | left out |\n"
          "|---|---|---|---|---|---|", file=out)
        for r in sorted(rows, key=lambda r: r["label"]):
            if r["excluded"]:
                p(f"| {r['label']} | | | | | {r['excluded']} |", file=out)
                continue
            phase = "" if r["phase"] is None else f"{r['phase']}/{r['predicted_phase']}" + (
                "" if r["phase"] == r["predicted_phase"] else " **differ**")
            p(f"| {r['label']} | {r['measured'] / 2**30:.3f} | {r['predicted'] / 2**30:.3f} | {pct(r['error'])} "
              f"| {phase} | |", file=out)


def figure(kind, rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import memlib
    from memlib.notebook import setup_notebook
    from memlib.widgets.measure import kind_figure
    setup_notebook()                    # the chapter's style: the notebook saves the same figure
    fig = kind_figure(kind, rows)
    memlib.save_fig(fig, f"08_{kind}_accuracy")
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--prefill", action="store_true")
    ap.add_argument("--figure", action="store_true", help="write data/bench/accuracy.md and the figures")
    args = ap.parse_args()
    kinds = [k for k in ("prefill", "train") if getattr(args, k)] or ["prefill", "train"]
    rows = {k: bench_rows(k) for k in kinds}
    if args.figure:
        path = ROOT / "data" / "bench" / "accuracy.md"
        with open(path, "w") as f:
            report(rows, f)
        for kind in kinds:
            figure(kind, rows[kind])
        text = path.read_text()
        print(text[:text.index("\n## prefill")] if "\n## prefill" in text else text)
    else:
        report(rows, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
