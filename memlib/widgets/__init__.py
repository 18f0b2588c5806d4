"""Explorers: thin ipywidgets wrappers over memlib's pure compute and plot functions.

Every explorer follows three layers (model and view apart, so the logic is testable without a UI):

1. a pure compute function (in the chapter's module, e.g. :func:`memlib.kv_cache`);
2. a plot function that draws a result on a matplotlib ``ax``;
3. an :class:`~memlib.widgets.base.Explorer` that wires controls to the two.

An explorer exposes ``.result`` (the latest Breakdown or value) and ``.error`` (the
message shown instead of a traceback for invalid input), and ``.set(**values)`` to
drive it without a browser.  ipywidgets and matplotlib are imported only when an
explorer is built.
"""
import importlib

_EXPLORERS = {
    "weights_explorer": "memlib.widgets.weights",
    "quantization_explorer": "memlib.widgets.weights",
    "kv_explorer": "memlib.widgets.kv",
    "concurrency_explorer": "memlib.widgets.kv",
    "anatomy_explorer": "memlib.widgets.weights",
    "activation_explorer": "memlib.widgets.activations",
    "training_explorer": "memlib.widgets.training",
    "lora_explorer": "memlib.widgets.training",
    "which_gpu_explorer": "memlib.widgets.serving",
    "measure_explorer": "memlib.widgets.measure",
    "rl_explorer": "memlib.widgets.rl",
    "parallel_explorer": "memlib.widgets.parallel",
    "plan_explorer": "memlib.widgets.parallel",
    "Explorer": "memlib.widgets.base",
}


def __getattr__(name):
    if name in _EXPLORERS:
        return getattr(importlib.import_module(_EXPLORERS[name]), name)
    raise AttributeError(f"module 'memlib.widgets' has no attribute {name!r}")
