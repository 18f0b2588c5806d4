"""What would the newest torch and transformers change?  A maintainer's check (``make check-latest``).

    python scripts/check_latest.py                       # newest transformers and torch
    python scripts/check_latest.py --torch pinned        # newest transformers, the pinned torch
    python scripts/check_latest.py --transformers 5.24.0 --torch 2.14.1

Builds a throwaway virtual environment under /tmp with the locked environment
(``requirements/lock.txt``) except torch and transformers, which are the newest releases
pip can install here (or the versions given).  Inside it, it re-measures with the bench:

* the weights and the KV cache of every catalog model (``measure_weights``,
  ``measure_prefill`` at batch 2 × 24 tokens), against memlib's byte-exact prediction,
  which equals the committed, pinned measurement (tests/test_validate_weights_kv.py);
* a small subset of the committed accuracy matrix (``data/bench/train.jsonl`` and
  ``prefill.jsonl``): one point per model, against the stored measurement;

and prints every number that changed, by how many bytes.  With ``--write FILE`` the findings
are appended to a JSON file (``data/bench/newer_versions.json``, which chapter 01 reads);
nothing else in the repository is written: the pins move only when the data is
re-measured (README, "Pinned versions").
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "lock.txt"


def _pip(py, *args):
    subprocess.run([py, "-m", "pip", "--disable-pip-version-check", *args], check=True)


def build_env(where: Path, torch_spec: str, transformers_spec: str) -> str:
    venv.create(where, with_pip=True)
    py = str(where / "bin" / "python")
    rest = [line for line in LOCK.read_text().splitlines()
            if line and not line.startswith((" ", "#")) and not line.startswith(("torch==", "transformers=="))]
    req = where / "requirements.txt"
    req.write_text("\n".join(rest) + "\n")
    print(f"== installing {torch_spec!r} and {transformers_spec!r} into {where}", flush=True)
    _pip(py, "install", "-q", torch_spec)
    _pip(py, "install", "-q", "-r", str(req))
    _pip(py, "install", "-q", transformers_spec)
    return py


def _spec(name: str, value: str) -> str:
    if value == "latest":
        return name
    if value == "pinned":
        return next(line for line in LOCK.read_text().splitlines() if line.startswith(f"{name}=="))
    return f"{name}=={value}"


# -- inside the throwaway environment ---------------------------------------------------------
def inner(write: str | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    import torch
    import transformers

    import memlib
    from memlib.measure import measure_prefill, measure_train, measure_weights

    print(f"== measured with torch {torch.__version__}, transformers {transformers.__version__}")
    changes = 0
    found = []          # (what, model, knobs, pinned bytes, newer bytes)
    print("\n-- weights (bf16) and KV cache (b=2, s=24) of every catalog model, vs the pinned bytes")
    for name in memlib.catalog_names():
        spec = memlib.load_spec(name)
        w_pin = memlib.weight_memory(name, "bf16").total
        kv_pin = memlib.kv_bytes(name, 24, 2) + 8 * spec.num_sliding_layers
        try:
            w = measure_weights(name, "bf16")["weights"]
            kv = measure_prefill(name, batch_size=2, seq_len=24).meta["kv_cache"]
        except Exception as e:  # a newer release may refuse a config: that is a finding too
            print(f"{name:26s} ERROR {type(e).__name__}: {str(e)[:160]}")
            changes += 1
            continue
        for what, new, old in (("weights", w, w_pin), ("kv_cache", kv, kv_pin)):
            if new != old:
                changes += 1
                found.append((what, name, {}, old, new))
                print(f"{name:26s} {what:9s} {old:>18,} -> {new:>18,}  ({new - old:+,} B)")
    print("\n-- one committed matrix point per model and kind, vs the stored measurement")
    for kind, key in (("prefill", "prefill_peak"), ("train", "train_peak")):
        seen = set()
        for line in (ROOT / "data" / "bench" / f"{kind}.jsonl").read_text().splitlines():
            rec = json.loads(line)
            p, m = rec["point"], rec["measured"]
            if "error" in m or p["model"] in seen or p.get("attention") != "sdpa":
                continue
            seen.add(p["model"])
            knobs = {k: v for k, v in p.items() if k not in ("model", "batch_size", "seq_len")}
            try:
                if kind == "train":
                    r = measure_train(p["model"], p["batch_size"], p["seq_len"], **knobs)
                else:
                    r = measure_prefill(p["model"], p["batch_size"], p["seq_len"], **knobs)
                new = r.meta[key]
            except Exception as e:
                print(f"{kind:8s} {json.dumps(p, sort_keys=True)} ERROR {type(e).__name__}: {str(e)[:160]}")
                changes += 1
                continue
            if new != m[key]:
                changes += 1
                found.append((kind, p["model"], {**knobs, "batch_size": p["batch_size"], "seq_len": p["seq_len"]},
                              m[key], new))
                print(f"{kind:8s} {p['model']:26s} {json.dumps(knobs, sort_keys=True)} b={p['batch_size']} "
                      f"s={p['seq_len']}: {key} {m[key]:,} -> {new:,} ({new - m[key]:+,} B, "
                      f"{(new - m[key]) / m[key]:+.2%}); stored with torch {m.get('torch')}, "
                      f"transformers {m.get('transformers')}")
    print(f"\n== {changes} number(s) changed" if changes else "\n== nothing changed")
    if write:
        pinned = dict(line.split("==") for line in (ROOT / "requirements" / "pins.in").read_text().split()
                      if "==" in line)
        record = {"pinned": pinned, "checked": {"torch": torch.__version__, "transformers": transformers.__version__},
                  "changes": [{"what": w, "model": m, "point": k, "pinned_bytes": a, "newer_bytes": b}
                              for w, m, k, a, b in found]}
        path = ROOT / write
        runs = json.loads(path.read_text()) if path.exists() else []
        runs = [r for r in runs if r["checked"] != record["checked"]] + [record]
        path.write_text(json.dumps(runs, indent=1) + "\n")
        print(f"wrote {write}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--torch", default="latest", help="latest (default), pinned, or a version")
    ap.add_argument("--transformers", default="latest", help="latest (default), pinned, or a version")
    ap.add_argument("--keep", action="store_true", help="keep the throwaway environment")
    ap.add_argument("--write", metavar="FILE", help="also append the findings to FILE (JSON, relative to the repo)")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        return inner(args.write)
    tmp = Path(tempfile.mkdtemp(prefix="memlib-latest-"))
    try:
        py = build_env(tmp / "venv", _spec("torch", args.torch), _spec("transformers", args.transformers))
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        extra = ["--write", args.write] if args.write else []
        return subprocess.run([py, str(Path(__file__).resolve()), "--inner", *extra], env=env, cwd=ROOT).returncode
    finally:
        if not args.keep:
            subprocess.run(["rm", "-rf", str(tmp)])


if __name__ == "__main__":
    raise SystemExit(main())
