"""Command line: ``python -m memlib params|kv|inference|train|lora|plan|measure|catalog ...``.

Every command prints a table, or JSON with ``--json``.  The JSON keys named in each
command's help are a contract other tools rely on.  Bad input exits with status 2 and a
one-line message on stderr that names the field; a missing optional dependency exits
with 3; an internal error prints one line and exits with 1 (``MEMLIB_DEBUG=1`` shows the
traceback).  Nothing read from a config reaches the terminal unescaped.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .validation import safe_text


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        print(f"memlib: error: {safe_text(message, limit=400)}", file=sys.stderr)
        raise SystemExit(2)


def _emit(args, payload, table: str):
    if args.json:
        print(json.dumps(payload, indent=2, sort_keys=False))
    else:
        print(table)


def _int(text: str) -> int:
    """A whole number as typed: ``4096``, ``4_096``, ``1e4`` (if whole); else a one-line error."""
    t = text.strip().replace("_", "")
    try:
        return int(t)
    except ValueError:
        pass
    try:
        v = float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v != v or v in (float("inf"), float("-inf")) or not v.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(v)


def _float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def _note_shadowed(model):
    from .catalog import shadowed_catalog_name
    local = shadowed_catalog_name(model)
    if local:
        print(f"memlib: note: read the catalog's {model!r}, not {safe_text(local)}; "
              f"type ./{model} to read the local file", file=sys.stderr)


def cmd_params(args):
    """JSON: params, active_params, weight_bytes, dtype, components (params by component)."""
    from .params import count_params
    from .weights import weight_memory
    counts = count_params(args.model)
    w = weight_memory(args.model, args.dtype)
    payload = {"model": args.model, "params": counts.total, "active_params": counts.meta["active"],
               "weight_bytes": w.total, "dtype": args.dtype, "components": dict(counts.components)}
    _emit(args, payload, f"{counts.table()}\n\n{w.table()}")


def cmd_kv(args):
    """JSON: bytes, bytes_per_token, seq_len, batch_size, kv_dtype, runtime, components."""
    from .kv_cache import kv_cache
    kv = kv_cache(args.model, args.seq_len, args.batch_size, args.kv_dtype, mla_form=args.mla_form,
                  block_size=args.block_size, runtime=args.runtime)
    payload = {"model": args.model, "bytes": kv.total, "bytes_per_token": kv.meta["bytes_per_token"],
               "seq_len": args.seq_len, "batch_size": args.batch_size, "kv_dtype": args.kv_dtype,
               "runtime": args.runtime, "components": dict(kv.components)}
    _emit(args, payload, kv.table() + f"\n\nper token (all layers): {kv.meta['bytes_per_token']:,} bytes")


def cmd_catalog(args):
    """JSON: a list of rows, each :meth:`memlib.ModelSpec.describe` plus params and active_params."""
    from .catalog import catalog_names
    from .params import count_params
    from .spec import load_spec
    rows = []
    for name in catalog_names():
        counts = count_params(name)
        rows.append({**load_spec(name).describe(), "params": counts.total, "active_params": counts.meta["active"]})
    table = "\n".join(f"{r['name']:<26}{r['family']:<12}{r['params'] / 1e9:>9.3f}B  "
                      f"{r['active_params'] / 1e9:>8.3f}B active  {r['attention']}" for r in rows)
    _emit(args, rows, table)


def _breakdown_payload(args, b, **extra) -> dict:
    return {"model": args.model, "total": b.total, "components": dict(b.components), "kinds": dict(b.kinds),
            **extra}


def cmd_inference(args):
    """JSON: total (weights + prefill peak), components, prefill_peak, peak_at, runtime."""
    from .inference import inference_memory
    b = inference_memory(args.model, args.batch_size, args.seq_len, args.dtype, args.kv_dtype,
                         args.attention, runtime=args.runtime)
    payload = _breakdown_payload(args, b, prefill_peak=int(b.meta["prefill_peak"]), peak_at=b.peak_at,
                                 batch_size=args.batch_size, seq_len=args.seq_len, dtype=args.dtype,
                                 kv_dtype=args.kv_dtype or args.dtype, attention=b.meta["attention"],
                                 runtime=args.runtime)
    _emit(args, payload, b.table() + f"\n\npeak in the last layer's {b.peak_at}")


def _phase_payload(args, b, **extra):
    return _breakdown_payload(args, b, peak=b.total, peak_phase=b.peak_phase, phase_peak=dict(b.phases),
                              peak_at=b.peak_at, batch_size=args.batch_size, seq_len=args.seq_len,
                              runtime=args.runtime, **extra)


def cmd_train(args):
    """JSON: peak (bytes), peak_phase (forward|backward|step), peak_at, components, phase_peak
    (with a parallel plan, rank 0's, plus plan, ranks, max_peak, host: :mod:`memlib.parallel.cli`)."""
    from .parallel.cli import is_parallel, run_train
    if is_parallel(args):
        return run_train(args)
    from .training import train_memory
    b = train_memory(args.model, args.batch_size, args.seq_len, args.precision, args.optimizer,
                     args.recompute, args.attention, args.grad_accum, runtime=args.runtime,
                     optimizer_impl=args.optimizer_impl)
    payload = _phase_payload(args, b, precision=args.precision, optimizer=args.optimizer,
                             optimizer_impl=args.optimizer_impl, recompute=args.recompute,
                             attention=b.meta["attention"], grad_accum=args.grad_accum)
    _emit(args, payload, b.table())


def cmd_lora(args):
    """JSON: peak, peak_phase, peak_at, components, trainable_params."""
    from .lora import lora_memory
    b = lora_memory(args.model, args.batch_size, args.seq_len, args.rank, args.targets.split(","),
                    args.base, args.double_quant, adapter_dtype=args.adapter_dtype, optimizer=args.optimizer,
                    recompute=args.recompute, attention=args.attention, lora_dropout=args.lora_dropout,
                    grad_accum=args.grad_accum, optimizer_impl=args.optimizer_impl)
    payload = _phase_payload(args, b, trainable_params=b.meta["trainable_params"], rank=args.rank,
                             base=args.base, targets=b.meta["targets"], lora_dropout=args.lora_dropout)
    _emit(args, payload, b.table() + f"\n\ntrainable parameters: {b.meta['trainable_params']:,}")


#: Extra subcommands contributed by other modules: name -> "module" exposing add_parser(sub).
EXTRA_COMMANDS = ["memlib.measure.cli", "memlib.serving_cli", "memlib.rl.cli", "memlib.parallel.cli"]


def build_parser() -> argparse.ArgumentParser:
    from .kv_cache import KV_DTYPES, MLA_FORMS
    from .scenario import (ATTENTIONS, DEFAULT_OPTIMIZER_IMPL, OPTIMIZER_IMPLS, OPTIMIZERS, PRECISIONS, RECOMPUTE,
                           RUNTIMES, TRAIN_RUNTIMES)

    def optimizer_args(sp):
        sp.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS)
        sp.add_argument("--optimizer-impl", default=DEFAULT_OPTIMIZER_IMPL, choices=OPTIMIZER_IMPLS,
                        help="how optimizer.step() runs: loop (foreach=False), foreach (PyTorch's default on "
                             "CUDA) or fused (fused=True, the HF Trainer's default); default: %(default)s")

    p = _Parser(prog="python -m memlib", description="GPU memory of LLMs, byte-exact.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, required=True)

    def common(sp):
        sp.add_argument("model", help="catalog name (python -m memlib catalog) or path to a config.json")
        sp.add_argument("--json", action="store_true", help="print JSON instead of a table")

    sp = sub.add_parser("params", help="parameter count and weight bytes")
    common(sp)
    sp.add_argument("--dtype", default="bf16", help="fp32 fp16 bf16 fp8 int8 int4 gptq awq nf4 llm_int8 gguf:Q4_K ...")
    sp.set_defaults(func=cmd_params)

    sp = sub.add_parser("kv", help="KV-cache bytes")
    common(sp)
    sp.add_argument("--seq-len", type=_int, required=True)
    sp.add_argument("--batch-size", type=_int, default=1)
    sp.add_argument("--kv-dtype", default="bf16", choices=KV_DTYPES)
    sp.add_argument("--mla-form", default="latent", choices=MLA_FORMS)
    sp.add_argument("--block-size", type=_int, default=None, help="paged blocks of this many tokens")
    sp.add_argument("--runtime", default="minimal", choices=RUNTIMES,
                    help="minimal: the architecture's minimum (default); transformers: what HF transformers holds")
    sp.set_defaults(func=cmd_kv)

    def step(sp, runtimes, default_runtime):
        sp.add_argument("--batch-size", type=_int, required=True)
        sp.add_argument("--seq-len", type=_int, required=True)
        sp.add_argument("--attention", default="sdpa", choices=ATTENTIONS)
        sp.add_argument("--runtime", default=default_runtime, choices=runtimes,
                        help="whose allocations are predicted (default: %(default)s)")

    sp = sub.add_parser("inference", help="weights + prefill peak (KV cache included)")
    common(sp)
    step(sp, RUNTIMES, "minimal")
    sp.add_argument("--dtype", default="bf16", choices=["fp32", "fp16", "bf16"])
    sp.add_argument("--kv-dtype", default=None, choices=KV_DTYPES, help="defaults to --dtype")
    sp.set_defaults(func=cmd_inference)

    sp = sub.add_parser("train", help="peak of one training step, and its phase")
    common(sp)
    step(sp, TRAIN_RUNTIMES, "transformers")
    sp.add_argument("--precision", default="bf16", choices=PRECISIONS,
                    help="bf16 (default: every tensor bf16, the smallest and a lossy recipe) or mixed "
                         "(fp32 master weights, gradients and state, autocast forward)")
    optimizer_args(sp)
    sp.add_argument("--recompute", default="none", choices=RECOMPUTE)
    sp.add_argument("--grad-accum", type=_int, default=1)
    from .parallel.cli import add_train_flags
    add_train_flags(sp)
    sp.set_defaults(func=cmd_train)

    from .lora import ADAPTER_DTYPES, BASES
    sp = sub.add_parser("lora", help="peak of one LoRA / QLoRA training step")
    common(sp)
    step(sp, TRAIN_RUNTIMES, "transformers")
    sp.add_argument("--rank", type=_int, default=16)
    sp.add_argument("--targets", default="all-linear", help="all-linear, attention, mlp, or q,k,v,o,gate,up,down")
    sp.add_argument("--base", default="bf16", choices=BASES)
    sp.add_argument("--double-quant", action="store_true")
    sp.add_argument("--adapter-dtype", default="bf16", choices=ADAPTER_DTYPES)
    sp.add_argument("--lora-dropout", type=_float, default=0.0, help="dropout on the adapters' input, in [0, 1)")
    optimizer_args(sp)
    sp.add_argument("--recompute", default="none", choices=RECOMPUTE)
    sp.add_argument("--grad-accum", type=_int, default=1)
    sp.set_defaults(func=cmd_lora)

    sp = sub.add_parser("catalog", help="list the catalog models")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_catalog)

    import importlib
    for module in EXTRA_COMMANDS:
        try:
            importlib.import_module(module).add_parser(sub)
        except ModuleNotFoundError as e:
            if not module.startswith(str(e.name)):
                raise
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "model", None) is not None:
            _note_shadowed(args.model)
        rc = args.func(args)
        sys.stdout.flush()
    except ValueError as e:
        print(f"memlib: error: {safe_text(e, limit=600)}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"memlib: error: {safe_text(e, limit=600)}", file=sys.stderr)
        return 3
    except BrokenPipeError:          # `... | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as e:           # a bug: one line, not a traceback (MEMLIB_DEBUG=1 shows it)
        if os.environ.get("MEMLIB_DEBUG"):
            raise
        print(f"memlib: internal error: {type(e).__name__}: {safe_text(e, limit=400)} "
              f"(set MEMLIB_DEBUG=1 for the traceback; please report it)", file=sys.stderr)
        return 1
    return int(rc or 0)
