"""Speed targets of the memlib core (numbers go into issue notes; not a timed test).

    python benchmarks/bench_core.py [--notebooks]

Targets: ``import memlib`` ≤ 1.5 × ``import numpy`` with no matplotlib/ipywidgets/torch;
a scalar estimate ≤ 50 µs (KV, weights, and one training estimate); a 1000×1000
(batch × seq_len) KV grid ≤ 100 ms; a 10⁶-point training sweep ≤ 0.5 s; a widget update
(control change → recompute + redraw) ≤ 100 ms; and the notebook test run time.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def import_time(stmt: str, repeat: int = 7) -> float:
    """Median wall time of a fresh interpreter running ``stmt``, minus an empty interpreter."""
    def run(code):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        return time.perf_counter() - t
    base = statistics.median(run("pass") for _ in range(repeat))
    return statistics.median(run(stmt) for _ in range(repeat)) - base


def per_call(fn, n: int = 2000) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def main(run_notebooks: bool = False):
    import numpy as np

    import memlib

    rows = []
    t_np = import_time("import numpy")
    t_ml = import_time("import memlib")
    heavy = subprocess.run([sys.executable, "-c", "import sys, memlib; print([m for m in ('matplotlib','ipywidgets','torch') if m in sys.modules])"],
                           capture_output=True, text=True, cwd=ROOT).stdout.strip()
    rows.append(("import numpy", f"{t_np * 1e3:.1f} ms", ""))
    rows.append(("import memlib", f"{t_ml * 1e3:.1f} ms", f"{t_ml / t_np:.2f}x numpy (target ≤ 1.5x); heavy modules: {heavy}"))

    spec = memlib.load_spec("Llama-3.1-8B")
    rows.append(("kv_bytes scalar", f"{per_call(lambda: memlib.kv_bytes(spec, 8192, 8)) * 1e6:.1f} µs", "target ≤ 50 µs"))
    rows.append(("weight_memory scalar", f"{per_call(lambda: memlib.weight_memory(spec, 'bf16')) * 1e6:.1f} µs", "target ≤ 50 µs"))
    from memlib.inference import inference_memory
    from memlib.training import train_memory
    rows.append(("train_memory scalar", f"{per_call(lambda: train_memory(spec, 4, 2048), 500) * 1e6:.1f} µs",
                 "Llama-3.1-8B, b=4 s=2048; target ≤ 50 µs"))
    rows.append(("inference_memory scalar", f"{per_call(lambda: inference_memory(spec, 4, 2048), 500) * 1e6:.1f} µs",
                 "target ≤ 50 µs"))

    b = np.arange(1, 1001).reshape(-1, 1)
    s = np.arange(1, 1001) * 128
    t = time.perf_counter()
    grid = memlib.kv_bytes(spec, s, b)
    dt = time.perf_counter() - t
    rows.append(("KV grid 1000x1000", f"{dt * 1e3:.1f} ms", f"shape {grid.shape}; target ≤ 100 ms"))
    times = []
    for _ in range(3):
        t = time.perf_counter()
        sweep = train_memory(spec, b, s // 128 * 8)
        times.append(time.perf_counter() - t)
    rows.append(("train sweep 10^6 points", f"{min(times) * 1e3:.0f} ms",
                 f"shape {sweep['peak'].shape}, best of 3; target ≤ 500 ms"))

    try:
        import matplotlib
        matplotlib.use("Agg")
        from memlib import widgets
        for name in ("kv_explorer", "activation_explorer", "training_explorer"):
            ex = getattr(widgets, name)()
            times = []
            for v in (1024, 2048, 4096, 8192, 512) * 2:
                t = time.perf_counter()
                ex.set(seq_len=v)
                times.append(time.perf_counter() - t)
            rows.append((f"widget update ({name})", f"{statistics.median(times) * 1e3:.1f} ms",
                         "median of 10; target ≤ 100 ms"))
    except Exception as e:  # pragma: no cover
        rows.append(("widget update", "n/a", repr(e)))

    if run_notebooks:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pytest", "-q", "notebooks", "--nbval", "--nbval-current-env",
                        "--nbval-sanitize-with", "tests/nbval_sanitize.cfg", "-p", "no:cacheprovider"], cwd=ROOT)
        rows.append(("nbval, all notebooks", f"{time.perf_counter() - t:.1f} s", ""))

    w = max(len(r[0]) for r in rows)
    for name, val, note in rows:
        print(f"{name:<{w}}  {val:>12}  {note}")


if __name__ == "__main__":
    main(run_notebooks="--notebooks" in sys.argv)
