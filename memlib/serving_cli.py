"""Command line for chapter 07: ``python -m memlib serve ...`` and ``python -m memlib gpus``.

``serve`` prints vLLM's per-GPU budget for a model (:func:`memlib.vllm.vllm_budget`); with
``--json`` the keys ``kv_cache_tokens``, ``kv_cache_bytes``, ``max_concurrency`` and
``components`` (bytes per GPU) are a contract other tools rely on.  ``gpus`` lists the
hardware table (JSON with ``--json``: a list of :meth:`memlib.hardware.GPU.to_dict`).
Registered by ``memlib.cli.EXTRA_COMMANDS``.
"""
from __future__ import annotations

import json

from .cli import _float, _int
from .units import GiB as GIB


def run_serve(args) -> int:
    """``serve``: :func:`memlib.vllm.vllm_budget` as a table or JSON."""
    from .vllm import vllm_budget
    total = int(round(args.total_gpu_memory_gib * GIB)) if args.total_gpu_memory_gib else None
    b = vllm_budget(args.model, args.gpu, tp=args.tp, gpu_memory_utilization=args.gpu_memory_utilization,
                    max_model_len=args.max_model_len, max_num_batched_tokens=args.max_num_batched_tokens,
                    max_num_seqs=args.max_num_seqs, kv_dtype=args.kv_dtype, dtype=args.dtype,
                    quantization=args.quantization, block_size=args.block_size, vllm_version=args.vllm_version,
                    engine=args.engine, enforce_eager=args.enforce_eager, sampler=args.sampler,
                    usage=args.usage, total_gpu_memory=total)
    m = b.meta
    payload = {"model": args.model, "gpu": m["gpu"], "tp": m["tp"], "vllm_version": m["vllm_version"],
               "engine": m["engine"], "family": m["family"], "kv_cache_tokens": m["kv_cache_tokens"],
               "kv_cache_bytes": m["kv_cache_bytes"], "max_concurrency": m["max_concurrency"],
               "num_blocks": m["num_blocks"], "available_kv_bytes": m["available_kv_bytes"],
               "components": dict(b.components), "budget": m["budget"], "total_gpu_memory": m["total_gpu_memory"],
               "total_source": m["total_source"], "gpu_memory_utilization": m["gpu_memory_utilization"],
               "max_model_len": m["max_model_len"], "max_num_batched_tokens": m["max_num_batched_tokens"],
               "max_num_seqs": m["max_num_seqs"], "sampler": m["sampler"], "block_size": m["block_size"],
               "kv_dtype": m["kv_dtype"], "outside_budget": m["outside_budget"]}
    if args.json:
        print(json.dumps(payload, indent=2))
        return 0
    print(b.table())
    print(f"\nKV cache: {m['kv_cache_tokens']:,} tokens in {m['num_blocks']:,} blocks of {m['block_size']}"
          f" ({m['kv_cache_bytes'] / GIB:.2f} GiB per GPU)")
    print(f"maximum concurrency at {m['max_model_len']:,} tokens per request: {m['max_concurrency']:.2f}x")
    print(f"accounting: vLLM {m['vllm_version']} {m['engine']} ({m['family']}); "
          f"profile run: {m['max_num_batched_tokens']} tokens, {m['max_num_seqs']} sequences")
    if m["outside_budget"]:
        extra = ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in m["outside_budget"].items())
        print(f"on top of the budget: {extra}")
    if m["available_kv_bytes"] <= 0:
        print("the model does not fit: no memory is left for the KV cache")
    return 0


def run_gpus(args) -> int:
    """``gpus``: the hardware table of :mod:`memlib.hardware`."""
    from .hardware import gpu_table
    rows = gpu_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = f"{'name':<11}{'vendor':<8}{'spec GB':>8}{'usable GiB':>12}{'(from)':>12}{'GB/s':>8}{'bf16 TF':>9}{'fp8 TF':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        fp8 = f"{r['fp8_tflops']:g}" if r["fp8_tflops"] is not None else "-"
        print(f"{r['name']:<11}{r['vendor']:<8}{r['spec_gb']:>8g}{r['usable_bytes'] / GIB:>12.2f}"
              f"{r['usable_source']:>12}{r['bandwidth_gbs']:>8g}{r['bf16_tflops']:>9g}{fp8:>8}")
    return 0


def add_parser(subparsers):
    """Register ``serve`` and ``gpus`` on an argparse ``subparsers`` object (chapter 07)."""
    from .hardware import gpu_names
    from .serving import QUANTIZATIONS
    from .vllm import DEFAULT_VERSION, ENGINES, KV_DTYPES, SAMPLERS, USAGES

    sp = subparsers.add_parser("serve", help="vLLM's per-GPU memory budget, KV-cache tokens and concurrency",
                               description="Predict what vLLM reserves on each GPU: weights, activation peak, "
                                           "non-torch memory, CUDA graphs and the KV cache left over.")
    sp.add_argument("model", help="catalog name (python -m memlib catalog) or path to a config.json")
    sp.add_argument("--gpu", default="H100-80GB", help="GPU name (python -m memlib gpus): " + ", ".join(gpu_names()))
    sp.add_argument("--tp", type=_int, default=1, help="tensor-parallel size (GPUs per replica)")
    sp.add_argument("--gpu-memory-utilization", type=_float, default=0.9)
    sp.add_argument("--max-model-len", type=_int, default=None, help="defaults to the model's context")
    sp.add_argument("--max-num-batched-tokens", type=_int, default=None, help="defaults to vLLM's")
    sp.add_argument("--max-num-seqs", type=_int, default=None, help="defaults to vLLM's")
    sp.add_argument("--kv-dtype", default="auto", choices=KV_DTYPES)
    sp.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    sp.add_argument("--quantization", default=None, choices=[q for q in QUANTIZATIONS if q])
    sp.add_argument("--block-size", type=_int, default=16)
    sp.add_argument("--vllm-version", default=DEFAULT_VERSION, help="release whose accounting to follow, e.g. 0.6.4, 0.10.2")
    sp.add_argument("--engine", default=None, choices=ENGINES, help="v0 or v1 (default: the release's)")
    sp.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    sp.add_argument("--sampler", default=None, choices=SAMPLERS, help="top-k/top-p path of the profile run")
    sp.add_argument("--usage", default="serve", choices=USAGES, help="vllm serve or the LLM class (defaults differ)")
    sp.add_argument("--total-gpu-memory-gib", type=_float, default=None,
                    help="override the GPU's total (the 'total_gpu_memory' your vLLM log prints)")
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sp.set_defaults(func=run_serve)

    gp = subparsers.add_parser("gpus", help="the GPU table: usable memory, bandwidth, bf16/fp8 TFLOP/s")
    gp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    gp.set_defaults(func=run_gpus)
    return sp
