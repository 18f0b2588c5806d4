"""Wall time of the bench (memlib.measure, fake tensors on the CPU).

    python benchmarks/bench_measure.py            # the default rows
    python benchmarks/bench_measure.py --all      # + the largest models
    python benchmarks/bench_measure.py --profile  # cProfile of the Llama-3.1-8B train step

Prints one row per measurement: total wall seconds (build + run), the model build, the
measured run (prefill: one forward; train: two steps) and the measured peak.  The first
row also pays for importing torch and transformers, which is timed apart.
A timing belongs here, not in a test (a timed test fails on a busy machine).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROWS = [
    ("Llama-3.1-8B train b1 s2048 bf16", "train", "Llama-3.1-8B", dict(batch_size=1, seq_len=2048)),
    ("Llama-3.1-8B train b1 s2048 mixed+recompute", "train", "Llama-3.1-8B",
     dict(batch_size=1, seq_len=2048, precision="mixed", recompute="full")),
    ("Llama-3.1-8B prefill b1 s8192", "prefill", "Llama-3.1-8B", dict(batch_size=1, seq_len=8192)),
    ("DeepSeek-V3 prefill b1 s512", "prefill", "DeepSeek-V3", dict(batch_size=1, seq_len=512)),
]
BIG_ROWS = [
    ("DeepSeek-V3 train b1 s512 bf16", "train", "DeepSeek-V3", dict(batch_size=1, seq_len=512)),
    ("Llama-3.1-405B train b1 s2048 bf16", "train", "Llama-3.1-405B", dict(batch_size=1, seq_len=2048)),
    ("Qwen3-235B-A22B prefill b1 s4096", "prefill", "Qwen3-235B-A22B", dict(batch_size=1, seq_len=4096)),
]


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--all", action="store_true", help="also time the largest models")
    p.add_argument("--profile", action="store_true", help="profile the Llama-3.1-8B train step instead")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from memlib.measure import measure_prefill, measure_train
    import_s = time.perf_counter() - t0
    fns = {"train": measure_train, "prefill": measure_prefill}

    if args.profile:
        import cProfile
        import pstats
        measure_train("Qwen3-0.6B", 1, 16)  # warm up transformers' lazy imports
        prof = cProfile.Profile()
        prof.enable()
        measure_train("Llama-3.1-8B", 1, 2048)
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        return 0

    print(f"import torch + transformers: {import_s:.1f} s\n")
    head = f"{'measurement':<46}{'wall s':>8}{'build s':>9}{'run s':>8}{'peak GiB':>11}  kernel"
    print(head)
    print("-" * len(head))
    for label, kind, model, kw in ROWS + (BIG_ROWS if args.all else []):
        t = time.perf_counter()
        r = fns[kind](model, **kw)
        wall = time.perf_counter() - t
        peak = r.meta["train_peak"] if kind == "train" else r.meta["prefill_peak"] + r.meta["weights"]
        print(f"{label:<46}{wall:>8.1f}{r.meta['build_s']:>9.2f}{r.meta['run_s']:>8.1f}"
              f"{peak / 2**30:>11.2f}  {r.meta['attention_kernel']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
