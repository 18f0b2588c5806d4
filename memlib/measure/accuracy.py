"""The accuracy of the course: every comparison with a measurement, in one place (chapter 08).

Each chapter checks memlib against a number nobody here wrote:

* **weights and KV cache** (chapters 01, 02): the bench's bytes for every catalog model,
  ``data/bench/weights_kv.md`` (``scripts/validate_weights_kv.py``);
* **prefill and training** (chapters 03, 04): the bench's matrix, ``data/bench/prefill.jsonl``
  and ``train.jsonl`` (``scripts/bench_matrix.py``);
* **parallel and RL** (chapters 05, 06): ``data/bench/parallel.jsonl`` and ``rl.jsonl``,
  compared as soon as the bridge (:mod:`memlib.measure.compare`) knows those kinds;
* **serving** (chapter 07): what vLLM printed at start-up (:mod:`memlib.measure.vllm_logs`).

Every comparison is a function that reads its data file and returns *rows*, one per compared
number::

    {"kind", "label", "group", "point", "measured", "predicted", "error",
     "excluded", "phase", "predicted_phase", "note"}

``error = (predicted - measured) / measured`` is signed: negative is an under-estimate, the
costly kind.  ``excluded`` is the reason a point is left out of the statistics (the bench
failed, or the CPU ran SDPA's math path, which a GPU does not), else None.  Bench points are
compared through :func:`memlib.measure.compare.compare`, the one bridge.

:data:`COMPARISONS` lists the kinds; :func:`available` says whether a kind's data and bridge
exist (parallel and RL switch on by themselves when both land).  :func:`summary`,
:func:`targets` and :func:`residual_table` turn rows into the chapter's numbers;
:func:`point_comparison` splits one bench point into components and phases for the explorer.
Importing this module does not import torch.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import compare as bridge

#: The repository's bench data (written by the scripts; part of the repository, not the package).
BENCH_DIR = Path(__file__).resolve().parents[2] / "data" / "bench"

#: The targets of the accuracy matrix: |error| bound everywhere, the training median, the
#: worst under-estimate allowed (a negative error), and "the peak phase right everywhere".
TARGETS = {"max_abs": 0.03, "train_median_abs": 0.005, "worst_under": -0.01}

#: The field of a point that colours it in a figure, per kind (default: the model).
GROUP_BY = {"parallel": "scenario", "rl": "recipe"}

_SHORT = (("batch_size", "b={}"), ("seq_len", "s={}"), ("world_size", "W={}"), ("scenario", "{}"),
          ("recipe", "{}"), ("precision", "{}"), ("recompute", "recompute {}"), ("attention", "{}"),
          ("optimizer", "{}"), ("optimizer_impl", "{}"))


def point_label(point: dict, with_model: bool = True) -> str:
    """A short name for a bench point (chapter 08):
    ``"Qwen3-0.6B b=1 s=512 bf16 recompute none sdpa adamw loop"``."""
    parts = [str(point["model"])] if with_model and "model" in point else []
    known = {k for k, _ in _SHORT} | {"model"}
    for key, fmt in _SHORT:
        if point.get(key) is not None:
            parts.append(fmt.format(point[key]))
    parts += [f"{k}={v}" for k, v in sorted(point.items()) if k not in known and v is not None]
    return " ".join(parts)


def load_records(kind: str, directory=None) -> list[dict]:
    """The stored records of ``data/bench/<kind>.jsonl`` (``[]`` when the file does not exist).

    A last line that is not complete JSON (a sweep still appending) is skipped; any other
    bad line raises ``ValueError`` naming the file and line (chapter 08).
    """
    return read_jsonl(Path(directory if directory is not None else BENCH_DIR) / f"{kind}.jsonl")


def read_jsonl(path) -> list[dict]:
    """The records of one ``.jsonl`` file, read as :func:`load_records` reads them (chapter 08)."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [ln for ln in path.read_text().split("\n") if ln.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path.name}: line {i + 1} is not JSON") from None
    return out


def _row(kind, label, group, point, measured=None, predicted=None, excluded=None, phase=None,
         predicted_phase=None, note=None) -> dict:
    error = None if excluded or measured in (None, 0) or predicted is None else (predicted - measured) / measured
    return {"kind": kind, "label": label, "group": group, "point": point, "measured": measured,
            "predicted": predicted, "error": error, "excluded": excluded, "phase": phase,
            "predicted_phase": predicted_phase, "note": note}


# -- the bridge for bench kinds ---------------------------------------------------------------------
def _bridge_fn(kind: str) -> Callable | None:
    """The function comparing one stored record of ``kind``: ``compare.compare_<kind>`` if the
    bridge has one, else ``compare.compare(record, kind)`` when ``kind`` is in ``compare.KINDS``."""
    own = getattr(bridge, f"compare_{kind}", None)
    if callable(own):
        return own
    if kind in getattr(bridge, "KINDS", ()):
        return lambda record: bridge.compare(record, kind)
    return None


def bench_rows(kind: str, records=None, directory=None) -> list[dict]:
    """One row per stored bench record of ``kind`` (``prefill``, ``train``, and ``parallel`` /
    ``rl`` once the bridge knows them), compared by :mod:`memlib.measure.compare` (chapter 08)."""
    fn = _bridge_fn(kind)
    if fn is None:
        raise ValueError(f"kind: {kind!r} has no bridge in memlib.measure.compare "
                         f"(known: {', '.join(getattr(bridge, 'KINDS', ()))})")
    records = load_records(kind, directory) if records is None else records
    rows = []
    for rec in records:
        p = rec["point"]
        c = fn(rec)
        group = str(p.get(GROUP_BY.get(kind, "model"), p.get("model")))
        label = point_label(p)
        if "excluded" in c:
            rows.append(_row(kind, label, group, p, excluded=c["excluded"]))
        else:
            rows.append(_row(kind, label, group, p, int(c["measured"]), int(c["predicted"]),
                             phase=c.get("phase"), predicted_phase=c.get("predicted_phase")))
    return rows


# -- weights and KV: the markdown table scripts/validate_weights_kv.py writes --------------------------
def _md_table(text: str) -> list[dict]:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        return []
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    out = []
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        # the two "error" columns: keep the first of each name
        row = {}
        for h, c in zip(head, cells):
            row.setdefault(h, c)
        out.append(row)
    return out


def weights_kv_rows(path=None) -> list[dict]:
    """Weights (bf16) and KV cache of every catalog model: the bench's bytes from
    ``data/bench/weights_kv.md``, memlib's predicted now by :func:`predict_like_bench`
    (chapters 01, 02).  Group: ``"weights"`` or ``"KV cache"``."""
    path = Path(path) if path is not None else BENCH_DIR / "weights_kv.md"
    if not path.exists():
        return []
    rows = []
    for r in _md_table(path.read_text()):
        model, s = r["model"], int(r["seq_len"])
        point = {"model": model, "dtype": "bf16", "batch_size": 1, "seq_len": s}
        w = int(r["weights measured"].replace(",", ""))
        kv = int(r["KV measured"].replace(",", ""))
        rows.append(_row("weights_kv", f"{model} weights bf16", "weights", point, w,
                         int(bridge.predict_like_bench(point, "weights").total)))
        rows.append(_row("weights_kv", f"{model} KV s={s}", "KV cache", point, kv,
                         int(bridge.predict_like_bench(point, "kv").total)))
    return rows


# -- serving: what vLLM printed ------------------------------------------------------------------------
#: The logged quantities in GiB (blocks, tokens and concurrency follow from the KV GiB by the
#: block arithmetic, which chapter 07 checks on its own).
SERVING_QUANTITIES = ("weights", "activation", "non_torch", "kv_cache_gib", "kv_needed_gib")


def serving_rows(records=None) -> list[dict]:
    """Every memory number (GiB) a stored vLLM start-up log printed, against memlib's
    prediction, in bytes (chapter 07).  Group: the quantity.  ``note``: the known miss's
    reason (:data:`memlib.measure.vllm_logs.KNOWN_MISSES`) or why a non-torch value is not a test."""
    from ..units import GiB
    from .vllm_logs import KNOWN_MISSES, NON_TORCH_NOT_TESTED, QUANTITIES, log_rows
    rows = []
    for r in log_rows(records):
        q = r["quantity"]
        if q not in SERVING_QUANTITIES or r["predicted"] is None:
            continue
        miss = KNOWN_MISSES.get((r["id"], "kv" if q.startswith("kv") else q))
        note = miss[1] if miss else (NON_TORCH_NOT_TESTED.get(r["id"]) if q == "non_torch" else None)
        rows.append(_row("serving", f"log {r['id'][:2]} {QUANTITIES[q][0]}", QUANTITIES[q][0],
                         {"id": r["id"], "model": r["model"], "gpu": r["gpu"], "vllm": r["vllm"],
                          "quantity": q, "fully_known": r["fully_known"]},
                         int(round(r["logged"] * GiB)), int(round(r["predicted"] * GiB)), note=note))
    return rows


# -- the registry -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """One kind of comparison: where its data lives and how to read it (chapter 08)."""

    kind: str
    title: str
    chapter: str
    source: str
    rows: Callable[[], list]
    check: Callable[[], str | None]


def _bench_check(kind):
    def check():
        if not (BENCH_DIR / f"{kind}.jsonl").exists():
            return f"data/bench/{kind}.jsonl is not in this checkout"
        if _bridge_fn(kind) is None:
            return f"memlib.measure.compare does not compare {kind!r} points yet"
        return None
    return check


def _file_check(path):
    return lambda: None if path.exists() else f"{path.relative_to(BENCH_DIR.parents[1])} is not in this checkout"


COMPARISONS = {c.kind: c for c in (
    Comparison("weights_kv", "weights and KV cache, every catalog model", "01, 02", "data/bench/weights_kv.md",
               weights_kv_rows, _file_check(BENCH_DIR / "weights_kv.md")),
    Comparison("prefill", "prefill: weights + peak", "03", "data/bench/prefill.jsonl",
               lambda: bench_rows("prefill"), _bench_check("prefill")),
    Comparison("train", "training step: the peak", "03, 04", "data/bench/train.jsonl",
               lambda: bench_rows("train"), _bench_check("train")),
    Comparison("parallel", "one rank of a parallel training step", "05", "data/bench/parallel.jsonl",
               lambda: bench_rows("parallel"), _bench_check("parallel")),
    Comparison("rl", "an RL iteration: the peak", "06", "data/bench/rl.jsonl",
               lambda: bench_rows("rl"), _bench_check("rl")),
    Comparison("serving", "vLLM start-up logs: every GiB printed", "07", "data/serving/vllm_logs",
               serving_rows, lambda: None),
)}


def available(kind: str) -> str | None:
    """None when ``kind``'s data and bridge exist, else the reason it is left out (chapter 08)."""
    from ..validation import choice
    choice("kind", kind, tuple(COMPARISONS))
    return COMPARISONS[kind].check()


def comparison_rows(kind: str) -> list[dict]:
    """The rows of one kind of :data:`COMPARISONS` (``ValueError`` if it is not available) (chapter 08)."""
    why = available(kind)
    if why:
        raise ValueError(f"kind: {kind!r} is not available: {why}")
    return COMPARISONS[kind].rows()


# -- statistics -------------------------------------------------------------------------------------------
def compared(rows) -> list[dict]:
    """The rows that have an error (not left out) (chapter 08)."""
    return [r for r in rows if r["error"] is not None]


def summary(rows) -> dict:
    """``n``, ``compared``, ``left_out``, ``exact`` (predicted == measured), ``median_abs``,
    ``max_abs``, ``within_1pct``, ``worst_under`` / ``worst_over`` (the rows, or None when no
    point is under / over), and ``phase_agree`` / ``phase_points`` where rows carry phases (chapter 08)."""
    ok = compared(rows)
    errs = [abs(r["error"]) for r in ok]
    under = min(ok, key=lambda r: r["error"], default=None)
    over = max(ok, key=lambda r: r["error"], default=None)
    phased = [r for r in ok if r["phase"] is not None]
    return {"n": len(rows), "compared": len(ok), "left_out": len(rows) - len(ok),
            "exact": sum(r["predicted"] == r["measured"] for r in ok),
            "median_abs": statistics.median(errs) if errs else None, "max_abs": max(errs, default=None),
            "within_1pct": sum(e <= 0.01 for e in errs),
            "worst_under": under if under is not None and under["error"] < 0 else None,
            "worst_over": over if over is not None and over["error"] > 0 else None,
            "phase_agree": sum(r["phase"] == r["predicted_phase"] for r in phased) if phased else None,
            "phase_points": len(phased)}


def group_summary(rows, key) -> dict:
    """``{value: summary(rows with that value)}``; ``key`` is a point field or a function of a row (chapter 08)."""
    get = key if callable(key) else (lambda r: r["point"].get(key))
    groups: dict = {}
    for r in rows:
        groups.setdefault(get(r), []).append(r)
    return {k: summary(v) for k, v in groups.items()}


def targets(prefill_rows, train_rows) -> list[dict]:
    """The accuracy targets over the whole matrix, each ``{"target", "value", "met"}``:
    prefill within 3 % everywhere; training within 3 % everywhere and a median absolute error
    within 0.5 %; no under-estimate worse than 1 % (prefill or training); the training peak
    phase right at every point; then the worst under- and over-estimate of each kind, reported
    (``met`` None).  ``met`` is None where there is no data (chapter 08)."""
    out = []

    def pct(x):
        return f"{100 * x:+.2f} %"

    for kind, rows in (("prefill", prefill_rows), ("training", train_rows)):
        s = summary(rows)
        worst = s["max_abs"]
        out.append({"target": f"{kind}: error within ±{100 * TARGETS['max_abs']:g} % at every point",
                    "value": "no data" if worst is None else
                    f"largest abs error {100 * worst:.2f} % over {s['compared']} points",
                    "met": None if worst is None else worst <= TARGETS["max_abs"]})
    s = summary(train_rows)
    out.append({"target": f"training: median abs error within {100 * TARGETS['train_median_abs']:g} %",
                "value": "no data" if s["median_abs"] is None else f"median abs error {100 * s['median_abs']:.3f} %",
                "met": None if s["median_abs"] is None else s["median_abs"] <= TARGETS["train_median_abs"]})
    both = compared(prefill_rows) + compared(train_rows)
    worst_under = min((r["error"] for r in both), default=None)
    below = [r for r in both if r["error"] < TARGETS["worst_under"]]
    out.append({"target": f"no under-estimate worse than {100 * -TARGETS['worst_under']:g} % (prefill and training)",
                "value": "no data" if worst_under is None else
                f"worst signed error {pct(worst_under)}; {len(below)} of {len(both)} points below "
                f"{pct(TARGETS['worst_under'])}",
                "met": None if worst_under is None else not below})
    out.append({"target": "training: the peak phase right at every point",
                "value": "no data" if not s["phase_points"] else f"{s['phase_agree']}/{s['phase_points']} points",
                "met": None if not s["phase_points"] else s["phase_agree"] == s["phase_points"]})
    for kind, rows in (("prefill", prefill_rows), ("training", train_rows)):
        sk = summary(rows)
        for side in ("under", "over"):
            r = sk[f"worst_{side}"]
            out.append({"target": f"{kind}: worst {side}-estimate (reported)",
                        "value": "none" if r is None else f"{pct(r['error'])} at {r['label']}", "met": None})
    return out


# -- residuals and their causes ------------------------------------------------------------------------------
def _spec(model):
    from ..spec import load_spec
    return load_spec(model)


def _hidden(p):            # one hidden-size bf16 tensor
    return p["batch_size"] * p["seq_len"] * _spec(p["model"]).hidden_size * 2


#: Known residuals: ``(kind, model or None for any, test(point), unit(point) -> bytes, unit name,
#: cause)``.  :func:`residual_table` expresses each residual in its unit; a residual that is the
#: same whole multiple of the unit at every point of its group is an exact match.
RESIDUAL_CAUSES = (
    ("prefill", "opt-13b", lambda p: True, _hidden, "hidden-size tensors",
     "one hidden-size tensor fewer alive at the peak than memlib counts (from the size; not traced)"),
    ("prefill", "falcon-7b-instruct", lambda p: True, _hidden, "hidden-size tensors",
     "eager: about one hidden-size tensor fewer alive at the peak than memlib counts (from the size; "
     "not traced)"),
    ("prefill", "Qwen3-30B-A3B", lambda p: True, _hidden, "hidden-size tensors",
     "MoE routing tensors; not traced"),
)


def _cause(kind, point):
    for k, model, test, unit, unit_name, text in RESIDUAL_CAUSES:
        if k == kind and (model is None or model == point.get("model")) and test(point):
            return unit, unit_name, text
    return None, None, "not traced"


def _evidence(ratios) -> str:
    if not ratios:
        return ""
    lo, hi = min(ratios), max(ratios)
    n = round(lo)
    if n != 0 and all(abs(r - n) <= 1e-3 * abs(n) + 1e-4 for r in ratios):
        return f"exactly {n}x"
    return f"{lo:.2f}x" if abs(hi - lo) < 5e-3 else f"{lo:.2f}x to {hi:.2f}x"


def residual_table(rows, min_abs: float = 1e-3, key=None) -> list[dict]:
    """The compared points whose |error| is at least ``min_abs``, grouped by kind, model and
    (training) attention/recompute; each group with its signed error range, the residual
    ``measured - predicted`` in bytes and in the unit its cause names (``in_units``: "exactly
    1x" when the ratio is that whole number at every point of the group, else its range), and
    the cause (:data:`RESIDUAL_CAUSES`).  Rows: ``{"kind", "where", "points", "error_min",
    "error_max", "residual_min", "residual_max", "unit", "in_units", "cause"}``, most negative
    error first (chapter 08)."""
    def default_key(r):
        p = r["point"]
        if r["kind"] == "train":
            return f"{p['model']} {p['attention']} recompute {p['recompute']}"
        if r["kind"] == "prefill":
            return f"{p['model']} {p['attention']}"
        return r["group"]

    key = key or default_key
    groups: dict = {}
    for r in compared(rows):
        if abs(r["error"]) >= min_abs:
            groups.setdefault((r["kind"], key(r)), []).append(r)
    out = []
    for (kind, where), rs in groups.items():
        unit, unit_name, text = _cause(kind, rs[0]["point"])
        res = [r["measured"] - r["predicted"] for r in rs]
        ratios = []
        if unit is not None:
            try:
                ratios = [(r["measured"] - r["predicted"]) / unit(r["point"]) for r in rs]
            except (KeyError, ValueError, ZeroDivisionError, AttributeError, TypeError):
                ratios = []
        out.append({"kind": kind, "where": where, "points": len(rs),
                    "error_min": min(r["error"] for r in rs), "error_max": max(r["error"] for r in rs),
                    "residual_min": min(res), "residual_max": max(res), "unit": unit_name if ratios else None,
                    "in_units": _evidence(ratios), "cause": text})
    out.sort(key=lambda g: (g["kind"], g["error_min"]))
    return out


def exclusion_table(rows) -> list[dict]:
    """The points left out, grouped by reason: ``{"kind", "reason", "points", "models"}`` (chapter 08)."""
    groups: dict = {}
    for r in rows:
        if r["excluded"]:
            g = groups.setdefault((r["kind"], r["excluded"]), set())
            g.add(r["point"].get("model"))
    counts: dict = {}
    for r in rows:
        if r["excluded"]:
            counts[(r["kind"], r["excluded"])] = counts.get((r["kind"], r["excluded"]), 0) + 1
    return [{"kind": k, "reason": why, "points": counts[(k, why)], "models": sorted(map(str, ms))}
            for (k, why), ms in groups.items()]


# -- one point, by component and phase (the explorer) ------------------------------------------------------
#: The bench's split of a training peak; memlib's saved activations, autocast cache and
#: temporaries all fall in the bench's "activations" (everything that is not a model state).
TRAIN_PARTS = ("weights", "buffers", "gradients", "optimizer", "activations")
PREFILL_PARTS = ("weights", "kv_cache", "transient")


def _train_parts(components: dict) -> dict:
    out = {k: 0 for k in TRAIN_PARTS}
    for k, v in components.items():
        out[k if k in ("weights", "buffers", "gradients", "optimizer") else "activations"] += int(v)
    return out


def committed_points(kind: str, records=None) -> dict:
    """``{model: {label: record}}`` of the stored bench records of ``kind`` (``prefill`` or
    ``train``), labels without the model name, in the file's order (chapter 08)."""
    from ..validation import choice
    choice("kind", kind, ("prefill", "train"))
    out: dict = {}
    for rec in load_records(kind) if records is None else records:
        out.setdefault(rec["point"]["model"], {})[point_label(rec["point"], with_model=False)] = rec
    return out


def point_comparison(record: dict, kind: str) -> dict:
    """One stored bench point against memlib, component by component (and phase by phase for
    training), chapter 08.

    Returns ``{"kind", "label", "point", "excluded", "parts": {part: (measured, predicted)},
    "total": (measured, predicted), "error", "phases": {phase: (measured, predicted)},
    "peak_phase": (measured, predicted), "phase_parts": {phase: {part: (measured or None,
    predicted)}}, "memlib_detail": {component: bytes}, "attention_kernel"}``.  Training parts
    are the bench's (:data:`TRAIN_PARTS`); prefill parts are weights, KV cache and the
    transient above them (``prefill_peak - kv_cache``).  ``ValueError`` when the bench failed at
    that point.
    """
    p, m = record["point"], record["measured"]
    if "error" in m:
        raise ValueError(f"point: the bench failed at {point_label(p)} ({str(m['error'])[:80]})")
    pred = bridge.predict_like_bench(p, kind)
    meas_total = bridge.measured_total(m, kind)
    out = {"kind": kind, "label": point_label(p), "point": p, "excluded": bridge.excluded(m),
           "total": (int(meas_total), int(pred.total)), "error": (int(pred.total) - meas_total) / meas_total,
           "memlib_detail": {k: int(v) for k, v in pred.components.items()},
           "attention_kernel": m.get("attention_kernel"), "phases": {}, "peak_phase": (None, None),
           "phase_parts": {}}
    if kind == "prefill":
        mp = {"weights": m["weights"], "kv_cache": m["kv_cache"], "transient": m["prefill_peak"] - m["kv_cache"]}
        pp = {"weights": pred["weights"], "kv_cache": pred.get("kv_cache", 0),
              "transient": int(pred.total) - pred["weights"] - pred.get("kv_cache", 0)}
        out["parts"] = {k: (int(mp[k]), int(pp[k])) for k in PREFILL_PARTS}
        return out
    mc = _train_parts(m["components_at_peak"])
    pc = _train_parts(pred.components)
    out["parts"] = {k: (mc[k], pc[k]) for k in TRAIN_PARTS if mc[k] or pc[k]}
    out["phases"] = {ph: (int(m["phase_peak"][ph]), int(pred.phases[ph])) for ph in pred.phases}
    out["peak_phase"] = (m["peak_phase"], pred.peak_phase)
    mpc = m.get("phase_components") or {m["peak_phase"]: m["components_at_peak"]}
    for ph in pred.phases:
        pp = _train_parts(pred.phase_components[ph])
        mm = _train_parts(mpc[ph]) if ph in mpc else None
        out["phase_parts"][ph] = {k: (None if mm is None else mm[k], pp[k]) for k in out["parts"]}
    return out
