"""Command line: ``python -m memlib params|kv|measure|inference|train|catalog ...``.

Every command prints a table, or JSON with ``--json``.  The JSON keys named in each
command's help are a contract other tools rely on.  Bad arguments exit with status 2
and a one-line message on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        print(f"memlib: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _emit(args, payload: dict, table: str):
    if args.json:
        print(json.dumps(payload, indent=2, sort_keys=False))
    else:
        print(table)


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
    """JSON: bytes, bytes_per_token, seq_len, batch_size, kv_dtype, components."""
    from .kv_cache import kv_cache
    kv = kv_cache(args.model, args.seq_len, args.batch_size, args.kv_dtype, mla_form=args.mla_form,
                  block_size=args.block_size)
    payload = {"model": args.model, "bytes": kv.total, "bytes_per_token": kv.meta["bytes_per_token"],
               "seq_len": args.seq_len, "batch_size": args.batch_size, "kv_dtype": args.kv_dtype,
               "components": dict(kv.components)}
    _emit(args, payload, kv.table() + f"\n\nper token (all layers): {kv.meta['bytes_per_token']:,} bytes")


def cmd_catalog(args):
    """JSON: a list of {name, model_type, params, active_params, attention}."""
    from .catalog import catalog_names
    from .params import count_params
    from .spec import load_spec
    rows = []
    for name in catalog_names():
        spec, c = load_spec(name), count_params(name)
        rows.append({"name": name, "model_type": spec.model_type, "params": c.total,
                     "active_params": c.meta["active"], "attention": spec.attention_kind})
    table = "\n".join(f"{r['name']:<26}{r['model_type']:<14}{r['params'] / 1e9:>9.3f}B  "
                      f"{r['active_params'] / 1e9:>8.3f}B active  {r['attention']}" for r in rows)
    _emit(args, rows, table)


def _breakdown_payload(args, b, **extra) -> dict:
    return {"model": args.model, "total": b.total, "components": dict(b.components), **extra}


def cmd_inference(args):
    """JSON: total (weights + prefill peak), components, prefill_peak, peak_at."""
    from .inference import inference_memory
    b = inference_memory(args.model, args.batch_size, args.seq_len, args.dtype, args.kv_dtype,
                         args.attention)
    payload = _breakdown_payload(args, b, prefill_peak=int(b.meta["prefill_peak"]), peak_at=b.meta["peak_at"],
                                 batch_size=args.batch_size, seq_len=args.seq_len, dtype=args.dtype,
                                 kv_dtype=args.kv_dtype or args.dtype, attention=b.meta["attention"])
    _emit(args, payload, b.table() + f"\n\npeak in the last layer's {b.meta['peak_at']}")


def _phase_payload(args, b, **extra):
    return _breakdown_payload(args, b, peak=b.total, peak_phase=b.peak_phase, phase_peak=dict(b.phases),
                              peak_at=b.meta["peak_at"], batch_size=args.batch_size, seq_len=args.seq_len,
                              **extra)


def cmd_train(args):
    """JSON: peak (bytes), peak_phase (forward|backward|step), components, phase_peak."""
    from .training import train_memory
    b = train_memory(args.model, args.batch_size, args.seq_len, args.precision, args.optimizer,
                     args.recompute, args.attention, args.grad_accum)
    payload = _phase_payload(args, b, precision=args.precision, optimizer=args.optimizer,
                             recompute=args.recompute, attention=b.meta["attention"], grad_accum=args.grad_accum)
    _emit(args, payload, b.table())


def cmd_lora(args):
    """JSON: peak, peak_phase, components, trainable_params."""
    from .lora import lora_memory
    b = lora_memory(args.model, args.batch_size, args.seq_len, args.rank, args.targets.split(","),
                    args.base, args.double_quant, optimizer=args.optimizer, recompute=args.recompute,
                    attention=args.attention)
    payload = _phase_payload(args, b, trainable_params=b.meta["trainable_params"], rank=args.rank,
                             base=args.base, targets=b.meta["targets"])
    _emit(args, payload, b.table() + f"\n\ntrainable parameters: {b.meta['trainable_params']:,}")


#: Extra subcommands contributed by other modules: name -> "module" exposing add_parser(sub).
EXTRA_COMMANDS = ["memlib.measure.cli", "memlib.serving_cli"]


def build_parser() -> argparse.ArgumentParser:
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
    sp.add_argument("--seq-len", type=int, required=True)
    sp.add_argument("--batch-size", type=int, default=1)
    sp.add_argument("--kv-dtype", default="bf16")
    sp.add_argument("--mla-form", default="latent", choices=["latent", "expanded"])
    sp.add_argument("--block-size", type=int, default=None, help="paged blocks of this many tokens")
    sp.set_defaults(func=cmd_kv)

    def step(sp):
        sp.add_argument("--batch-size", type=int, required=True)
        sp.add_argument("--seq-len", type=int, required=True)
        sp.add_argument("--attention", default="sdpa", choices=["sdpa", "eager"])

    sp = sub.add_parser("inference", help="weights + prefill peak (KV cache included)")
    common(sp)
    step(sp)
    sp.add_argument("--dtype", default="bf16", choices=["fp32", "fp16", "bf16"])
    sp.add_argument("--kv-dtype", default=None, help="defaults to --dtype")
    sp.set_defaults(func=cmd_inference)

    sp = sub.add_parser("train", help="peak of one training step, and its phase")
    common(sp)
    step(sp)
    sp.add_argument("--precision", default="bf16", choices=["bf16", "mixed"])
    sp.add_argument("--optimizer", default="adamw",
                    choices=["adamw", "sgd", "sgd_momentum", "adafactor", "adamw_8bit", "lion"])
    sp.add_argument("--recompute", default="none", choices=["none", "selective", "full"])
    sp.add_argument("--grad-accum", type=int, default=1)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("lora", help="peak of one LoRA / QLoRA training step")
    common(sp)
    step(sp)
    sp.add_argument("--rank", type=int, default=16)
    sp.add_argument("--targets", default="all-linear", help="all-linear, attention, mlp, or q,k,v,o,gate,up,down")
    sp.add_argument("--base", default="bf16", choices=["bf16", "nf4"])
    sp.add_argument("--double-quant", action="store_true")
    sp.add_argument("--optimizer", default="adamw",
                    choices=["adamw", "sgd", "sgd_momentum", "adafactor", "adamw_8bit", "lion"])
    sp.add_argument("--recompute", default="none", choices=["none", "selective", "full"])
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
        rc = args.func(args)
    except ValueError as e:
        print(f"memlib: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"memlib: error: {e}", file=sys.stderr)
        return 3
    return int(rc or 0)
