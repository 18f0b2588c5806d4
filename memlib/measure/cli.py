"""``python -m memlib measure MODEL --scenario prefill|train ...``: run the bench (chapter 08).

JSON keys (a contract):

* prefill: ``weights``, ``kv_cache``, ``prefill_peak`` (ints, bytes), ``total``,
  ``attention`` (the implementation actually used), ``math_path``, plus ``buffers``,
  ``attention_kernel``, ``components``;
* train: ``train_peak``, ``phase_peak`` (bytes by phase), ``peak_phase``, ``attention``
  (the one actually used), ``components``, plus ``total``, ``end_of_forward``,
  ``start_of_backward`` (after autocast was left), ``precision``, ``recompute``,
  ``optimizer``, ``optimizer_impl``, ``attention_kernel``, ``math_path``, ``sdpa_fallback``.

Both also carry ``model``, ``scenario``, ``device``, ``torch`` and ``transformers``.
Importing this module does not import torch.
"""
from __future__ import annotations

import argparse
import json

SCENARIOS = ("prefill", "train")


def _positive(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def add_parser(subparsers):
    """Register the ``measure`` subcommand on an argparse ``subparsers`` object."""
    sp = subparsers.add_parser(
        "measure", help="measure a Hugging Face architecture with fake tensors (needs torch + transformers)",
        description="Build MODEL from its config.json under FakeTensorMode and count the bytes of every "
                    "live tensor storage during a reference prefill or training step.")
    sp.add_argument("model", help="catalog name or path to a config.json")
    sp.add_argument("--scenario", required=True, choices=SCENARIOS)
    sp.add_argument("--batch-size", type=_positive, required=True)
    sp.add_argument("--seq-len", type=_positive, required=True)
    sp.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"), help="prefill weight dtype")
    sp.add_argument("--precision", default="bf16", choices=("bf16", "mixed"), help="train precision recipe")
    sp.add_argument("--recompute", default="none", choices=("none", "full"))
    sp.add_argument("--attention", default="sdpa", choices=("sdpa", "eager"))
    sp.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
    sp.add_argument("--optimizer-impl", default="foreach", choices=("loop", "foreach", "fused"),
                    help="train: foreach (default, what PyTorch picks on CUDA), loop (foreach=False) "
                         "or fused (fused=True)")
    sp.add_argument("--autocast-policy", default="cuda", choices=("cuda", "cpu"),
                    help="mixed precision on the CPU: emulate CUDA autocast's op list (default) or not; "
                         "mixed precision runs the forward under autocast, the backward outside it")
    sp.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                    help="cpu: fake tensors (default); cuda: a real run on the GPU")
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sp.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    sp.set_defaults(func=run)
    return sp


def payload(result) -> dict:
    """The JSON contract for a prefill or train Breakdown from :mod:`memlib.measure`."""
    m = result.meta
    common = {"model": m.get("model"), "scenario": m.get("scenario"), "device": m.get("device"),
              "attention": m.get("attention"), "attention_kernel": m.get("attention_kernel"),
              "math_path": bool(m.get("math_path")), "sdpa_fallback": bool(m.get("sdpa_fallback")),
              "total": int(result.total), "components": {k: int(v) for k, v in result.components.items()}}
    if m.get("scenario") == "prefill":
        out = {"weights": int(m["weights"]), "buffers": int(m.get("buffers", 0)), "kv_cache": int(m["kv_cache"]),
               "prefill_peak": int(m["prefill_peak"]), **common}
    else:
        out = {"train_peak": int(m["train_peak"]), "phase_peak": {k: int(v) for k, v in result.phases.items()},
               "peak_phase": result.peak_phase, "end_of_forward": m.get("end_of_forward"),
               "start_of_backward": m.get("start_of_backward"), "precision": m.get("precision"),
               "recompute": m.get("recompute"), "optimizer": m.get("optimizer"),
               "optimizer_impl": m.get("optimizer_impl"), **common}
    out["torch"], out["transformers"] = m.get("torch"), m.get("transformers")
    if "cuda" in m:
        out["cuda"] = m["cuda"]
    return out


def run(args) -> int:
    """Run the ``measure`` subcommand; ``python -m memlib`` turns a ``ValueError`` into exit
    code 2 and an ``ImportError`` (no torch) into 3, each with a one-line message."""
    from . import measure_prefill, measure_train
    verbose = not getattr(args, "quiet", False)
    if args.scenario == "prefill":
        res = measure_prefill(args.model, args.batch_size, args.seq_len, dtype=args.dtype,
                              attention=args.attention, device=args.device, verbose=verbose)
    else:
        res = measure_train(args.model, args.batch_size, args.seq_len, precision=args.precision,
                            recompute=args.recompute, attention=args.attention, optimizer=args.optimizer,
                            optimizer_impl=getattr(args, "optimizer_impl", "foreach"),
                            device=args.device, verbose=verbose,
                            autocast_policy=getattr(args, "autocast_policy", "cuda"))
    data = payload(res)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(res.table())
        extra = (f"prefill_peak={data['prefill_peak']:,} B" if args.scenario == "prefill"
                 else f"train_peak={data['train_peak']:,} B, end_of_forward={data['end_of_forward']:,} B")
        print(f"\n{extra}; attention={data['attention']} kernel={data['attention_kernel']} "
              f"math_path={data['math_path']} sdpa_fallback={data['sdpa_fallback']}; "
              f"torch {data['torch']}, transformers {data['transformers']}, {data['device']}")
    return 0
