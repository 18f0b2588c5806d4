"""How fast the parallel planner answers (chapter 05; a benchmark, not a timed test).

    python benchmarks/bench_parallel_planner.py

Target: "Llama-3.1-405B on 1024 H100s" answers in under a second.  Each case runs
in a fresh interpreter, so the time includes every cache the planner fills (tensor tables,
FSDP2 units, optimizer shares, activation skeletons); the median of ``--repeat`` runs is
printed with the number of layouts evaluated and how many fit.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CASES = [
    ("Llama-3.1-405B", "128x8xH100-80GB", 8192, 2048),
    ("Qwen3-32B", "2xH100-80GB", 32768, 8),
    ("Qwen3-235B-A22B", "32x8xH100-80GB", 4096, 1024),
]

_CODE = """
import json, time
t0 = time.perf_counter()
import memlib.parallel as P
t1 = time.perf_counter()
r = P.plan({model!r}, gpus={gpus!r}, seq_len={seq}, global_batch_size={batch})
t2 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "plan_s": t2 - t1, "considered": r.considered, "fit": len(r.fits),
                  "best": r.fits[0].plan.label() if r.fits else None}}))
"""


def run_case(model, gpus, seq, batch) -> dict:
    out = subprocess.run([sys.executable, "-c", _CODE.format(model=model, gpus=gpus, seq=seq, batch=batch)],
                         check=True, cwd=ROOT, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    for model, gpus, seq, batch in CASES:
        runs = [run_case(model, gpus, seq, batch) for _ in range(args.repeat)]
        t = statistics.median(r["plan_s"] for r in runs)
        r = runs[0]
        print(f"{model} on {gpus}, seq {seq}, global batch {batch}: {t:.3f} s (median of {args.repeat}; "
              f"import {statistics.median(x['import_s'] for x in runs):.3f} s), {r['considered']} layouts, "
              f"{r['fit']} fit, best: {r['best']}")


if __name__ == "__main__":
    main()
