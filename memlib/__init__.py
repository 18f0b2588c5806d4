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
"""
from .breakdown import Breakdown
from .catalog import catalog_names, load_config
from .kv_cache import bytes_per_token, kv_bytes, kv_cache, max_concurrency
from .params import active_params, count_params, linear_layers, total_params
from .spec import ModelSpec, load_spec, supported_model_types
from .units import GB, GiB, fmt_bytes
from .weights import bits_per_param, weight_formats, weight_memory
from .inference import inference_memory
from .training import train_memory
from .lora import lora_memory, lora_params

__version__ = "0.1.0"

_LAZY = {
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
        return getattr(mod, attr) if attr else mod
    raise AttributeError(f"module 'memlib' has no attribute {name!r}")


__all__ = ["Breakdown", "ModelSpec", "load_spec", "load_config", "catalog_names",
           "supported_model_types", "count_params", "total_params", "active_params",
           "linear_layers", "weight_memory", "weight_formats", "bits_per_param", "kv_cache",
           "kv_bytes", "bytes_per_token", "max_concurrency", "inference_memory", "train_memory",
           "lora_memory", "lora_params", "fmt_bytes", "GiB", "GB",
           *_LAZY]
