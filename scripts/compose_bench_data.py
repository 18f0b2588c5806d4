"""Compose data/bench/{train,prefill}.jsonl from a new matrix run and the earlier one.

    python scripts/compose_bench_data.py NEW_DIR [--old data/bench]

The bench changed its mixed-precision scenario (autocast around the forward only) and
learnt the optimizer implementations; nothing else in its reference scenarios changed.
So a new run (``scripts/bench_matrix.py --out NEW_DIR``) re-measures what the change
touches first, and this script keeps, from the earlier files, only the records whose
scenario is unchanged:

* every prefill record;
* training records in bf16 (AdamW, the loop implementation: the earlier reference rows);

and drops every earlier mixed-precision training record (and every earlier error, which
the new bench may not repeat).  A record of the new run always wins over an earlier one
with the same key.  Before writing, it checks the claim: every point measured by both
runs must agree to the byte, or nothing is written.  Each record keeps the versions it
was measured with.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from bench_matrix import key  # noqa: E402

TOTAL = {"train": "train_peak", "prefill": "prefill_peak"}


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().split("\n") if line.strip()]


def normalised(kind: str, rec: dict) -> dict:
    """An earlier record's point with the keys the new matrix uses (AdamW loop by default)."""
    p = dict(rec["point"])
    if kind == "train":
        p.setdefault("optimizer", "adamw")
        p.setdefault("optimizer_impl", "loop")
    return {**rec, "point": p}


def unchanged(kind: str, rec: dict) -> bool:
    """An earlier record the new bench would measure identically."""
    if "error" in rec["measured"]:
        return False
    return kind == "prefill" or rec["point"].get("precision") == "bf16"


def compose(kind: str, new_dir: Path, old_dir: Path) -> tuple[list[dict], dict]:
    new = {key(r["point"]): r for r in load(new_dir / f"{kind}.jsonl")}
    old = {key(r["point"]): r for r in (normalised(kind, r) for r in load(old_dir / f"{kind}.jsonl"))}
    both = [k for k in new if k in old and unchanged(kind, old[k]) and "error" not in new[k]["measured"]]
    differ = [k for k in both if new[k]["measured"][TOTAL[kind]] != old[k]["measured"][TOTAL[kind]]]
    if differ:
        raise SystemExit(f"{kind}: {len(differ)} point(s) measured by both runs differ, e.g. {differ[0]}; "
                         "the earlier records cannot be kept")
    kept = {k: r for k, r in old.items() if unchanged(kind, r) and k not in new}
    out = list(new.values()) + list(kept.values())
    stats = {"new": len(new), "kept from the earlier run": len(kept), "checked identical": len(both),
             "dropped": len(old) - len(kept) - sum(k in old for k in new)}
    return out, stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("new_dir", type=Path)
    ap.add_argument("--old", type=Path, default=ROOT / "data" / "bench")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "bench")
    args = ap.parse_args()
    for kind in ("prefill", "train"):
        records, stats = compose(kind, args.new_dir, args.old)
        records.sort(key=lambda r: key(r["point"]))
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        (args.out / f"{kind}.jsonl").write_text(text)
        print(f"{kind}: {len(records)} records; " + ", ".join(f"{k} {v}" for k, v in stats.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
