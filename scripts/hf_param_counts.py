#!/usr/bin/env python
"""Reference parameter counts from Hugging Face ``transformers``, built on the meta device.

For every catalog config (``memlib/models/*.json`` by default, or the paths given on the
command line) this builds ``AutoModelForCausalLM.from_config(...)`` under
``torch.device("meta")`` -- no weights are allocated and no remote code runs
(``trust_remote_code`` is never passed) -- and prints

    name  total

where ``total`` is ``sum(p.numel() for p in model.parameters())``.  ``parameters()``
yields each Parameter object once, so tied weights (GPT-2, Qwen3-0.6B, Gemma-2 ...)
are counted once.  Persistent buffers (tensors that a checkpoint stores but that are
not Parameters, e.g. DeepSeek-V3's ``e_score_correction_bias``) are listed separately
and are NOT in ``total``.

Options:
  --groups   also print the numel of every named parameter, with layer indices folded
             (``model.layers.*.mlp.up_proj.weight  <sum over layers>``)
  --json F   also write {name: {"total": int, "groups": {...}, "tied": bool, ...}} to F

Configs are cleaned exactly as the bench cleans them
(:func:`memlib.measure.build.clean_config`): RefinedWeb-era Falcon key names are mapped to
``falcon``, ``quantization_config`` and ``auto_map`` are dropped (no remote code runs).

This script is a development aid for memlib's tests: it needs ``torch`` and
``transformers``, which memlib itself does not depend on.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import traceback
from collections import OrderedDict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_GLOBS = [ROOT / "memlib" / "models", ROOT / "tests" / "data" / "falcon-7b-refinedweb.json"]


def build(path: Path):
    """``(model on the meta device, notes)``: the config cleaned and read as the bench does
    (:func:`memlib.measure.build.clean_config`: RefinedWeb names mapped to falcon,
    ``quantization_config`` and ``auto_map`` dropped), built with no remote code."""
    import torch
    import transformers

    from memlib.measure.build import clean_config, hf_config
    name, cfg, notes = clean_config(str(path))
    config = hf_config(name, cfg)
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config), notes


def fold(name: str) -> str:
    return re.sub(r"\.(\d+)\.", ".*.", name)


def persistent_buffers(model) -> "OrderedDict[str, int]":
    """Persistent buffers (saved in checkpoints but not Parameters), layer-folded.

    Example: DeepSeek-V3's per-MoE-layer ``mlp.gate.e_score_correction_bias``.
    Non-persistent buffers (rotary ``inv_freq``, Gemma's ``embed_scale``) are skipped.
    """
    nonpers = set()
    for mn, mod in model.named_modules():
        for b in getattr(mod, "_non_persistent_buffers_set", ()):
            nonpers.add(f"{mn}.{b}" if mn else b)
    out: "OrderedDict[str, int]" = OrderedDict()
    for n, b in model.named_buffers():
        if n not in nonpers:
            k = fold(n)
            out[k] = out.get(k, 0) + b.numel()
    return out


def count(model) -> tuple[int, "OrderedDict[str, int]", bool]:
    total = sum(p.numel() for p in model.parameters())
    groups: "OrderedDict[str, int]" = OrderedDict()
    # named_parameters() also de-duplicates shared Parameters (remove_duplicate=True)
    for n, p in model.named_parameters():
        k = fold(n)
        groups[k] = groups.get(k, 0) + p.numel()
    tied = False
    try:
        inp, out = model.get_input_embeddings(), model.get_output_embeddings()
        tied = out is not None and inp is not None and out.weight is inp.weight
    except Exception:  # pragma: no cover - models without the accessors
        pass
    return total, groups, tied


def catalog_paths(args_paths: list[str]) -> list[Path]:
    if args_paths:
        return [Path(p) for p in args_paths]
    out: list[Path] = []
    for g in DEFAULT_GLOBS:
        if g.is_dir():
            out.extend(sorted(g.glob("*.json")))
        elif g.is_file():
            out.append(g)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", help="config.json files (default: the memlib catalog)")
    ap.add_argument("--groups", action="store_true", help="print per-parameter (layer-folded) numel")
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args(argv)

    import torch
    import transformers

    print(f"# transformers {transformers.__version__}, torch {torch.__version__}")
    results = OrderedDict()
    failures = 0
    width = max((len(p.stem) for p in catalog_paths(args.paths)), default=10)
    for path in catalog_paths(args.paths):
        name = path.stem
        try:
            model, notes = build(path)
        except Exception as e:  # report and continue
            failures += 1
            print(f"{name:<{width}}  FAILED: {type(e).__name__}: {e}")
            if args.groups:
                traceback.print_exc()
            results[name] = {"error": f"{type(e).__name__}: {e}"}
            continue
        total, groups, tied = count(model)
        bufs = persistent_buffers(model)
        extra = [f"class={type(model).__name__}", f"tied={tied}"]
        if bufs:
            extra.append("persistent buffers " + ", ".join(f"{k}={v}" for k, v in bufs.items()))
        extra += notes
        print(f"{name:<{width}}  {total:>16,d}   {total}   ({'; '.join(extra)})")
        if args.groups:
            for k, v in groups.items():
                print(f"    {k:<72} {v:>16,d}")
        results[name] = {"total": total, "tied_embeddings": tied, "class": type(model).__name__,
                         "persistent_buffers": bufs, "notes": notes, "groups": groups}
        del model
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
