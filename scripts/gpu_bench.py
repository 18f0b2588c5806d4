"""Run the bench's reference scenarios for real on a CUDA GPU and store one JSON per run.

    python scripts/gpu_bench.py                      # the default list, into data/gpu/<device>/
    python scripts/gpu_bench.py --list               # show the scenarios
    python scripts/gpu_bench.py --only qwen3-0.6b-train-bf16 gpt2-train-mixed-eager
    python scripts/gpu_bench.py --out /tmp/gpu --quick   # the small scenarios only

Each run builds the model from its catalog config.json with random weights (nothing is
downloaded), measures it on the GPU (storage counter + ``torch.cuda`` allocator numbers
+ CUDA context), measures the same scenario with fake tensors on the CPU for comparison,
and writes ``<out>/<device-slug>/<scenario>.json`` with the device name, driver, CUDA,
torch and transformers versions.  A run that fails (out of memory, an architecture
transformers cannot build) is stored with its error, and the others go on.

Exit status: 0 when every run succeeded, 1 when some failed, 2 without a GPU.
See data/gpu/README.md for the meaning of every field.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (kind, model, kwargs); "quick" marks the ones that fit any 24 GB GPU in seconds.
SCENARIOS = {
    # weights and allocator/context overheads
    "qwen3-0.6b-weights": ("weights", "Qwen3-0.6B", {}, True),
    "llama-3.1-8b-weights": ("weights", "Llama-3.1-8B", {}, False),
    # prefill (KV cache and inference transients)
    "gpt2-prefill-b8-s1024": ("prefill", "gpt2", dict(batch_size=8, seq_len=1024), True),
    "qwen3-0.6b-prefill-b4-s4096": ("prefill", "Qwen3-0.6B", dict(batch_size=4, seq_len=4096), True),
    "llama-3.1-8b-prefill-b1-s8192": ("prefill", "Llama-3.1-8B", dict(batch_size=1, seq_len=8192), False),
    "llama-3.1-8b-prefill-b1-s8192-eager": ("prefill", "Llama-3.1-8B",
                                            dict(batch_size=1, seq_len=8192, attention="eager"), False),
    "mistral-7b-prefill-b1-s8192": ("prefill", "Mistral-7B-v0.1", dict(batch_size=1, seq_len=8192), False),
    "gemma-2-9b-prefill-b1-s4096": ("prefill", "gemma-2-9b", dict(batch_size=1, seq_len=4096), False),
    "falcon-7b-prefill-b1-s2048": ("prefill", "falcon-7b-instruct", dict(batch_size=1, seq_len=2048), False),
    "deepseek-v2-lite-prefill-b1-s4096": ("prefill", "DeepSeek-V2-Lite", dict(batch_size=1, seq_len=4096), False),
    # training steps
    "gpt2-train-b8-s1024-mixed": ("train", "gpt2", dict(batch_size=8, seq_len=1024, precision="mixed"), True),
    "gpt2-train-b8-s1024-mixed-eager": ("train", "gpt2", dict(batch_size=8, seq_len=1024, precision="mixed",
                                                              attention="eager"), True),
    "qwen3-0.6b-train-b4-s2048-bf16": ("train", "Qwen3-0.6B", dict(batch_size=4, seq_len=2048), True),
    "qwen3-0.6b-train-b4-s2048-mixed": ("train", "Qwen3-0.6B", dict(batch_size=4, seq_len=2048,
                                                                   precision="mixed"), True),
    "qwen3-0.6b-train-b4-s2048-bf16-recompute": ("train", "Qwen3-0.6B", dict(batch_size=4, seq_len=2048,
                                                                            recompute="full"), True),
    "qwen3-0.6b-train-b4-s2048-bf16-eager": ("train", "Qwen3-0.6B", dict(batch_size=4, seq_len=2048,
                                                                        attention="eager"), True),
    "qwen3-0.6b-train-b4-s2048-bf16-sgd": ("train", "Qwen3-0.6B", dict(batch_size=4, seq_len=2048,
                                                                      optimizer="sgd"), True),
    "llama-3.1-8b-train-b1-s2048-bf16": ("train", "Llama-3.1-8B", dict(batch_size=1, seq_len=2048), False),
}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def run_one(name, kind, model, kwargs):
    """Measure one scenario on the GPU and with fake tensors; returns a JSON-ready dict."""
    import torch

    from memlib.measure import measure_prefill, measure_train, measure_weights
    from memlib.measure.cli import payload

    fn = {"weights": measure_weights, "prefill": measure_prefill, "train": measure_train}[kind]
    record = {"scenario": name, "kind": kind, "model": model, "knobs": kwargs}
    t0 = time.perf_counter()
    try:
        gpu = fn(model, **kwargs, device="cuda")
        record["gpu"] = _result(gpu, kind, payload)
    except Exception as e:  # noqa: BLE001 - one failed run must not stop the others
        record["gpu_error"] = f"{type(e).__name__}: {e}"
        record["gpu_traceback"] = traceback.format_exc(limit=6)
    finally:
        torch.cuda.empty_cache()
    record["gpu_s"] = round(time.perf_counter() - t0, 2)
    try:
        fake = fn(model, **kwargs, device="cpu")
        record["fake_cpu"] = _result(fake, kind, payload)
    except Exception as e:  # noqa: BLE001
        record["fake_cpu_error"] = f"{type(e).__name__}: {e}"
    return record


def _result(bd, kind, payload):
    out = {"components": dict(bd.components), "total": int(bd.total),
           "meta": {k: v for k, v in bd.meta.items()}}
    if bd.phases is not None:
        out["phases"], out["peak_phase"] = dict(bd.phases), bd.peak_phase
    if kind != "weights":
        out["summary"] = payload(bd)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "data" / "gpu"), help="folder for the JSON files")
    p.add_argument("--only", nargs="+", metavar="SCENARIO", help="run only these scenarios")
    p.add_argument("--quick", action="store_true", help="only the small scenarios")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = p.parse_args(argv)

    if args.list:
        for name, (kind, model, kw, quick) in SCENARIOS.items():
            print(f"{name:45s} {kind:8s} {model:18s} {kw}{'  (quick)' if quick else ''}")
        return 0
    unknown = [n for n in args.only or [] if n not in SCENARIOS]
    if unknown:
        print(f"gpu_bench: unknown scenario(s): {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2

    import torch
    import transformers

    from memlib.measure.gpu import device_info

    if not torch.cuda.is_available():
        print("gpu_bench: no CUDA device (torch.cuda.is_available() is False); nothing to do", file=sys.stderr)
        return 2
    info = device_info()
    outdir = Path(args.out) / slug(info["name"])
    outdir.mkdir(parents=True, exist_ok=True)
    names = args.only or [n for n, v in SCENARIOS.items() if v[3] or not args.quick]
    failed = 0
    for name in names:
        kind, model, kwargs, _ = SCENARIOS[name]
        print(f"[gpu_bench] {name} ...", file=sys.stderr, flush=True)
        rec = run_one(name, kind, model, kwargs)
        rec.update({"device": info, "torch": torch.__version__, "transformers": transformers.__version__,
                    "date": _dt.date.today().isoformat()})
        failed += "gpu_error" in rec
        path = outdir / f"{name}.json"
        path.write_text(json.dumps(rec, indent=1, default=str) + "\n")
        status = rec.get("gpu_error") or f"max_allocated={rec['gpu']['meta']['cuda']['max_allocated']:,}"
        print(f"[gpu_bench] {name}: {status} -> {path}", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
