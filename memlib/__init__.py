"""memlib: where every byte of an LLM's GPU memory goes.

The core imports only numpy.  Plotting (matplotlib), widgets (ipywidgets) and the bench
(``memlib.measure``: torch + transformers) are imported lazily, when first used.

    >>> import memlib
    >>> memlib.total_params("gpt2")
    124439808
    >>> memlib.kv_cache("Llama-3.1-8B", seq_len=8192).total  # bytes
    1073741824
    >>> memlib.train_memory("Llama-3.1-8B", batch_size=1, seq_len=2048).peak_phase
    'step'
    >>> memlib.parallel_train_memory("Llama-3.1-8B", 1, 2048, dp=8, zero=3).peak_phase
    'backward'
    >>> b = memlib.vllm_budget("Qwen3-8B", "A100-40GB", max_model_len=40960, vllm_version="0.9.2",
    ...                        sampler="sort")     # vLLM 0.9.2 printed "num_gpu_blocks is: 8505"
    >>> abs(b.meta["num_blocks"] - 8505) / 8505 < 0.01
    True
"""
from . import spec as _spec
from .breakdown import KINDS, Breakdown, combine
from .catalog import catalog_names, load_config
from .kv_cache import bytes_per_token, kv_bytes, kv_cache, kv_summary
from .params import active_params, count_params, linear_layers, total_params
from .scenario import Scenario
from .spec import *  # noqa: F401,F403  (ModelSpec, load_spec and the supported families)
from .units import GB, GiB, fmt_bytes
from .weights import bits_per_param, weight_formats, weight_memory

__version__ = "0.1.0"

#: Names imported on first use (PEP 562), so ``import memlib`` stays light: the chapters'
#: estimate modules (03-07) and the optional plotting, widgets and bench.
_LAZY = {
    "inference_memory": ("memlib.inference", "inference_memory"),
    "Stage": ("memlib.training", "Stage"),
    "state_bytes": ("memlib.training", "state_bytes"),
    "train_memory": ("memlib.training", "train_memory"),
    **{n: ("memlib.lora", n) for n in ("lora_fit", "lora_memory", "lora_params")},
    **{n: ("memlib.serving", n) for n in ("draft_model_cost", "kv_bytes_per_request", "lora_slot_bytes",
                                          "max_concurrency", "preemption_cost", "prefix_cache_kv",
                                          "serving_breakdown", "weights_per_gpu")},
    "gpus_needed": ("memlib.vllm", "gpus_needed"),
    "vllm_budget": ("memlib.vllm", "vllm_budget"),
    "rl_memory": ("memlib.rl", "rl_memory"),
    "rollout_memory": ("memlib.rl", "rollout_memory"),
    **{n: ("memlib.parallel", n) for n in ("Plan", "parallel_train_memory", "plan")},
    **{n: ("memlib.hardware", n) for n in ("GPU_TABLE", "GPUS", "get_gpu", "gpu_bytes")},
    "save_fig": ("memlib.plotting", "save_fig"),
    "stacked_bar": ("memlib.plotting", "stacked_bar"),
    "setup_notebook": ("memlib.notebook", "setup_notebook"),
    "measure": ("memlib.measure", None),
    "widgets": ("memlib.widgets", None),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        value = getattr(mod, attr) if attr else mod
        globals()[name] = value          # later lookups are plain attribute reads
        return value
    raise AttributeError(f"module 'memlib' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["Breakdown", "combine", "KINDS", "Scenario", *_spec.__all__, "load_config", "catalog_names",
           "count_params", "total_params", "active_params", "linear_layers", "weight_memory", "weight_formats",
           "bits_per_param", "kv_cache", "kv_bytes", "kv_summary", "bytes_per_token", "fmt_bytes", "GiB", "GB",
           *_LAZY]
