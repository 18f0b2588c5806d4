"""Weights and KV cache, predicted (memlib) vs measured (the bench), for every catalog model.

    python scripts/validate_weights_kv.py [--seq-len 1024] [--batch-size 1]

Writes ``data/bench/weights_kv.md`` (model, predicted, measured, error) and
``figures/08_weights_kv_validation.png``.  The KV comparison counts what transformers holds
(``runtime="transformers"``): a sliding-window layer keeps a view of the whole prefill plus
an 8-byte window-size tensor, which memlib names as a quirk (chapter 02).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import memlib  # noqa: E402
from memlib.measure import measure_prefill, measure_weights  # noqa: E402
from memlib.measure.compare import predict_like_bench  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=1)
    args = ap.parse_args()
    rows = []
    for name in memlib.catalog_names():
        spec = memlib.load_spec(name)
        s = min(args.seq_len, spec.max_position_embeddings)
        w_meas = measure_weights(name, "bf16")["weights"]
        kv_meas = measure_prefill(name, args.batch_size, s).meta["kv_cache"]
        point = {"model": name, "dtype": "bf16", "batch_size": args.batch_size, "seq_len": s}
        w_pred = predict_like_bench(point, "weights").total
        kv_pred = predict_like_bench(point, "kv").total
        rows.append((name, s, w_pred, w_meas, kv_pred, kv_meas))
        print(f"{name:24s} weights {w_pred:>16,} vs {w_meas:>16,}   kv {kv_pred:>14,} vs {kv_meas:>14,}", file=sys.stderr)
    out = ROOT / "data" / "bench" / "weights_kv.md"
    with open(out, "w") as f:
        f.write(f"Weights (bf16) and KV cache (batch {args.batch_size}), memlib vs the bench "
                f"(fake tensors, CPU).\n\n| model | seq_len | weights predicted | weights measured | error | "
                "KV predicted | KV measured | error |\n|---|---|---|---|---|---|---|---|\n")
        for name, s, wp, wm, kp, km in rows:
            f.write(f"| {name} | {s} | {wp:,} | {wm:,} | {(wp - wm) / wm:+.2%} | {kp:,} | {km:,} | {(kp - km) / km:+.2%} |\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, (i, j, what) in zip(axes, ((2, 3, "weights, bf16"), (4, 5, f"KV cache, {args.seq_len} tokens"))):
        xs = [r[j] / 2**30 for r in rows]
        ys = [r[i] / 2**30 for r in rows]
        ax.loglog(xs, ys, "o")
        for r, x, y in zip(rows, xs, ys):
            ax.annotate(r[0], (x, y), fontsize=6, xytext=(3, -3), textcoords="offset points")
        lo, hi = min(xs) * 0.7, max(xs) * 1.4
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.set_xlabel("measured (bench), GiB")
        ax.set_ylabel("predicted (memlib), GiB")
        ax.set_title(f"{what}: {sum(r[i] == r[j] for r in rows)}/{len(rows)} byte-exact")
    memlib.save_fig(fig, "08_weights_kv_validation")
    print(out.read_text())


if __name__ == "__main__":
    main()
