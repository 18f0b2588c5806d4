"""Measure the RL scenarios of chapter 06 with the bench and cache them as data.

    nice -n 10 python scripts/bench_rl.py [--jobs 1] [--models A,B] [--limit N]
    python scripts/bench_rl.py --summary        # writes data/bench/rl.md from data/bench/rl.jsonl
    python scripts/bench_rl.py --prune          # keep only the newest record of every point

Every point is measured with ``memlib.measure.rl`` (fake tensors on the CPU) and appended
to ``data/bench/rl.jsonl`` with the torch / transformers versions and ``bench_source``, a
hash of the bench's source files.  A point already measured with the current sources
is skipped, so the script resumes; after a change to the bench (e.g. a counter fix) the
same command re-measures every point, and the newest record of a point is the one that
counts (``--prune`` drops the older ones).  Errors are recorded with their reason.

The sweep: gpt2 (attention "eager": GPT-2's sdpa takes the CPU math path in training,
dropout on), Qwen3-0.6B and Llama-3.1-8B (sdpa); two sequence lengths (512 and 2048;
gpt2: 512 and 1024, its n_positions); 4 or 16 sequences per step (grpo/ppo: 1 prompt x
G in {4, 16}; dpo: 2 or 8 pairs; sft: 4 or 16 sequences); the recipes and variants in
``VARIANTS``.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import itertools
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "data" / "bench" / "rl.jsonl"
SUMMARY = ROOT / "data" / "bench" / "rl.md"

MODELS = {"gpt2": ((512, 1024), "eager"), "Qwen3-0.6B": ((512, 2048), "sdpa"),
          "Llama-3.1-8B": ((512, 2048), "sdpa")}
SEQUENCES = (4, 16)
SOURCES = ["counter.py", "scenarios.py", "autocast.py", "build.py", "rl.py", "rl_counter.py",
           "rl_logprobs.py", "rl_models.py"]

#: (label, recipe, kwargs); the batch is set from the sequences per step.
VARIANTS = [
    ("sft", "sft", {}),
    ("dpo", "dpo", {}),
    ("dpo precomputed ref", "dpo", {"reference": "precomputed"}),
    ("dpo ref after policy (TRL 1.9 order)", "dpo", {"ref_order": "after_policy"}),
    ("dpo selective", "dpo", {"logprob": "selective"}),
    ("dpo lora r16", "dpo", {"lora_rank": 16}),
    ("grpo beta=0.04", "grpo", {"beta": 0.04}),
    ("grpo beta=0", "grpo", {"beta": 0.0}),
    ("grpo selective", "grpo", {"beta": 0.04, "logprob": "selective"}),
    ("grpo lora r16", "grpo", {"beta": 0.04, "lora_rank": 16}),
    ("ppo", "ppo", {"beta": 0.04}),
    ("rollout", "rollout", {}),
    ("sft mixed", "sft", {"precision": "mixed"}),
    ("dpo mixed", "dpo", {"precision": "mixed"}),
    ("grpo mixed", "grpo", {"beta": 0.04, "precision": "mixed"}),
    ("ppo mixed", "ppo", {"beta": 0.04, "precision": "mixed"}),
]


def _code_only(src: str) -> str:
    """The module's syntax tree without docstrings (comments are not in it): edits to prose are not stale."""
    tree = ast.parse(src)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def bench_source() -> str:
    """A short hash of the bench's code (docstrings excluded): a record made with other code is stale."""
    h = hashlib.sha256()
    for name in SOURCES:
        path = ROOT / "memlib" / "measure" / name
        code = _code_only(path.read_text()) if path.exists() else ""
        h.update(name.encode() + b"\0" + code.encode() + b"\0")
    return h.hexdigest()[:12]


def points(models):
    for (label, recipe, kw), n, model in itertools.product(VARIANTS, SEQUENCES, models):
        seq_lens, attention = MODELS[model]
        for s in seq_lens:
            p = {"model": model, "variant": label, "recipe": recipe, "seq_len": s, "sequences": n,
                 "attention": attention, **kw}
            if recipe in ("grpo", "ppo", "rollout"):
                p.update(batch_size=1, group_size=n)
            elif recipe == "dpo":
                p.update(batch_size=n // 2, group_size=1)
            else:
                p.update(batch_size=n, group_size=1)
            if recipe == "rollout":
                p.update(prompt_len=s // 4, new_tokens=s - s // 4)
            yield p


def key(p: dict) -> str:
    return json.dumps({k: v for k, v in p.items() if k != "variant"}, sort_keys=True)


def run_point(p):
    from memlib.measure.rl import measure_rl, measure_rollout
    t = time.perf_counter()
    try:
        if p["recipe"] == "rollout":
            r = measure_rollout(p["model"], p["batch_size"], p["prompt_len"], p["new_tokens"],
                                group_size=p["group_size"], attention=p["attention"], timeline_points=100)
        else:
            kw = {k: v for k, v in p.items() if k not in ("model", "variant", "recipe", "seq_len", "sequences",
                                                          "batch_size")}
            r = measure_rl(p["recipe"], p["model"], p["batch_size"], p["seq_len"], timeline_points=100, **kw)
        m = r.meta
        res = {"peak": int(r.total), "peak_phase": r.peak_phase, "phase_peak": dict(r.phases),
               "components_at_peak": dict(r.components)}
        for k in ("phase_components", "resident_components", "end_of_forward", "end_of_forward_components",
                  "kv_cache", "kv_cache_class", "kv_positions", "largest_at_peak", "vocab_size", "sequences",
                  "logits_to_keep", "prompt_len", "new_tokens", "decode_steps", "decode_steps_counted",
                  "trained_params", "reference", "lora_wrapped", "attention_kernel", "math_path", "models",
                  "autocast_emulated", "timeline", "build_s", "run_s", "torch", "transformers"):
            if k in m:
                res[k] = m[k]
    except Exception as e:  # recorded, so the table says why a point is missing
        res = {"error": f"{type(e).__name__}: {e}"[:500]}
    import torch
    import transformers
    res.setdefault("torch", torch.__version__)
    res.setdefault("transformers", transformers.__version__)
    res["seconds"] = round(time.perf_counter() - t, 1)
    res["bench_source"] = bench_source()
    return p, res


def load():
    """The newest record of every point, in file order of first appearance."""
    recs = {}
    if OUT.exists():
        for line in OUT.read_text().splitlines():
            r = json.loads(line)
            recs[key(r["point"])] = r
    return recs


def measure(args):
    models = args.models.split(",")
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"--models: unknown model {m!r}; allowed: {', '.join(MODELS)}")
    src = bench_source()
    done = {k for k, r in load().items() if r["measured"].get("bench_source") == src}
    todo = [p for p in points(models) if key(p) not in done]
    # short sequences first, so an interrupted run covers every recipe and model
    todo.sort(key=lambda p: (p["seq_len"], p["sequences"]))
    if args.limit:
        todo = todo[:args.limit]
    print(f"{len(todo)} points to measure (bench_source {src})", file=sys.stderr, flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=8) as pool:
        for i, (p, res) in enumerate(pool.imap_unordered(run_point, todo), 1):
            with open(OUT, "a") as f:
                f.write(json.dumps({"point": p, "measured": res}, sort_keys=True) + "\n")
            print(f"[{i}/{len(todo)}] {p['model']} {p['variant']} s={p['seq_len']} n={p['sequences']} "
                  f"{res.get('error', '')} {res['seconds']}s (elapsed {time.perf_counter() - t0:.0f}s)",
                  file=sys.stderr, flush=True)


def prune():
    recs = load()
    OUT.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in recs.values()))
    print(f"{len(recs)} records kept", file=sys.stderr)


# -- the summary --------------------------------------------------------------------------------
GiB = 2 ** 30


def _g(b):
    return f"{b / GiB:.2f}"


def _group(comps):
    """Components summed into the groups the summary tables show."""
    out = {}
    for k, v in comps.items():
        role, _, part = k.partition(".")
        if part == "logits":
            g = "vocab-wide (logits, log-softmax, their grads)"
        elif part in ("weights", "buffers", "adapters"):
            g = f"{role} weights"
        elif part in ("gradients", "optimizer"):
            g = f"{role} {part}"
        elif role == "rollout" and part == "kv_cache":
            g = "KV cache"
        elif part in ("logps", "scores", "values"):
            g = "kept log-probs / scores / values"
        else:
            g = f"{role} activations" if role in ("policy", "critic", "reference", "reward", "rollout") \
                else "other temporaries"
        out[g] = out.get(g, 0) + v
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def summary():
    recs = list(load().values())
    if not recs:
        raise SystemExit(f"no data in {OUT}")
    versions = sorted({(r["measured"].get("torch"), r["measured"].get("transformers")) for r in recs
                       if "error" not in r["measured"]})
    srcs = sorted({r["measured"].get("bench_source") for r in recs})
    secs = sum(r["measured"]["seconds"] for r in recs)
    lines = ["# RL bench (chapter 06): measured peaks by phase and by role", "",
             "Generated by `python scripts/bench_rl.py --summary` from `data/bench/rl.jsonl` "
             "(fake tensors on the CPU, `memlib.measure.rl`; every definition is in that module's docstring).",
             f"Versions: {', '.join(f'torch {t}, transformers {tf}' for t, tf in versions)}. "
             f"Bench sources: {', '.join(map(str, srcs))}. {len(recs)} points, "
             f"{sum('error' in r['measured'] for r in recs)} errors, "
             f"{secs / 60:.0f} min of measurement (one process, niced, on a shared 2-core machine).", "",
             "GiB = 2^30 bytes. `B` = sequences per step, `S` = tokens per sequence, `V` = vocabulary. "
             "Phases: gen = generate (rollout), score = reference/reward/critic forwards, fwd/bwd/step = "
             "the training step. Each phase column is that phase's peak of live bytes; '-' = no such phase.", "",
             "**Definitions** (exact ones in `memlib/measure/rl.py`). One device. Policy trained with AdamW "
             "(foreach=False), second iteration measured after `gc.collect()`; bf16 = bf16 weights/grads/state, "
             "mixed = fp32 weights/grads/state with the forward and loss under autocast(bf16). Reference = frozen "
             "bf16 copy (eval, no_grad); reward model and critic = `AutoModelForSequenceClassification(num_labels=1)` "
             "of the policy's config (reward frozen bf16; critic trained like the policy, one AdamW over policy + "
             "critic, one backward of pg + 0.1·vf as TRL's PPO). Log-probs: `log_softmax(logits.float(), -1)"
             ".gather(-1, labels)` over all S positions, or 'selective' = TRL v1.9.0's row-by-row form. dpo: b pairs "
             "-> 2b sequences, reference forward first keeping summed log-probs; 'precomputed': no reference model; "
             "'after policy': TRL v1.9.0's order (reference forward while the policy's graph is alive). grpo/ppo: "
             "1 prompt x G completions; generate = prefill of S/4 prompt tokens + 3S/4 - 1 decode steps "
             "(DynamicCache; first 2 and last 2 decode steps counted, the middle fast-forwarded, checked "
             "byte-exact against the full loop in the tests); score = reference forward (per-token log-probs kept) "
             "[+ reward and critic forwards for ppo]; beta=0: no reference at all. lora r16 = all-linear LoRA, "
             "fp32 adapters (PEFT v0.20.0 defaults), frozen bf16 base, reference = adapters disabled. "
             "rollout = the generate phase alone (frozen bf16 weights, nothing else resident). The input batch "
             "is allocated before counting and is in no peak.", ""]
    errors = [r for r in recs if "error" in r["measured"]]
    by_model = {}
    for r in recs:
        by_model.setdefault(r["point"]["model"], []).append(r)
    for model, rs in by_model.items():
        lines += [f"## {model}", ""]
        for s, n in sorted({(r["point"]["seq_len"], r["point"]["sequences"]) for r in rs}):
            sel = [r for r in rs if r["point"]["seq_len"] == s and r["point"]["sequences"] == n
                   and "error" not in r["measured"]]
            if not sel:
                continue
            V = next((r["measured"].get("vocab_size") for r in sel if r["measured"].get("vocab_size")), None)
            att = sel[0]["point"]["attention"]
            lines += [f"### S = {s}, B = {n} sequences ({att}; 4·B·S·V = {_g(4 * n * s * V) if V else '?'} GiB)", "",
                      "| variant | peak GiB | peak phase | gen | score | fwd | bwd | step | vocab-wide at peak ÷ 4BSV "
                      "| KV GiB | at the peak, by role (GiB) |",
                      "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
            order = {v[0]: i for i, v in enumerate(VARIANTS)}
            for r in sorted(sel, key=lambda r: order.get(r["point"]["variant"], 99)):
                m = r["measured"]
                ph = m["phase_peak"]
                cells = [_g(ph[p]) if p in ph else "-" for p in
                         ("generate", "score", "train.forward", "train.backward", "train.step")]
                grp = _group(m["components_at_peak"])
                top = ", ".join(f"{k} {_g(v)}" for k, v in grp.items() if v >= 0.005 * m["peak"])
                wide = sum(v for k, v in m["components_at_peak"].items() if k.endswith(".logits"))
                unit = 4 * n * m.get("logits_to_keep", s) * V if V else 0
                ratio = f"{wide / unit:.2f}" if unit and r["point"]["recipe"] != "rollout" else "-"
                kv = _g(m["kv_cache"]) if m.get("kv_cache") else "-"
                lines.append(f"| {r['point']['variant']} | {_g(m['peak'])} | {m['peak_phase']} | "
                             + " | ".join(cells) + f" | {ratio} | {kv} | {top} |")
            lines.append("")
    if errors:
        lines += ["## Errors", ""] + [f"- {r['point']['model']} {r['point']['variant']} S={r['point']['seq_len']} "
                                      f"B={r['point']['sequences']}: {r['measured']['error']}" for r in errors] + [""]
    SUMMARY.write_text("\n".join(lines))
    print(f"wrote {SUMMARY}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--limit", type=int, default=0, help="measure at most this many points")
    ap.add_argument("--summary", action="store_true", help="write data/bench/rl.md and exit")
    ap.add_argument("--prune", action="store_true", help="keep only the newest record of every point")
    args = ap.parse_args()
    if args.summary:
        summary()
    elif args.prune:
        prune()
    else:
        measure(args)


if __name__ == "__main__":
    main()
