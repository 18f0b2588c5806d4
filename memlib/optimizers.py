"""Optimizer state per parameter (chapter 04).

For trainable tensors with states stored in ``state_dtype`` (``s`` bytes per value)::

    adamw          2·s·P            exp_avg + exp_avg_sq
    sgd            0                plain SGD keeps nothing
    sgd_momentum   s·P              momentum_buffer
    lion           s·P              exp_avg only
    adafactor      s·(r + c)        per r×c matrix: factored second moment (row and column
                                    statistics); a vector keeps a full s·n; no first moment
    adamw_8bit     2·(1 + 4/256)·P  bitsandbytes: two uint8 states per matrix value with one
                                    fp32 absmax per 256-value block; vectors (norms, biases)
                                    keep 32-bit states, as bitsandbytes does for small tensors

The state depends only on the trainable parameters: not on batch size or sequence
length ("How Much GPU Memory Do LLMs Really Need?" says it grows with batch size; it does not).  PyTorch's AdamW also keeps
a 4-byte ``step`` scalar per parameter tensor, on the CPU unless ``capturable``/``fused``;
memlib leaves those few bytes out.
"""
from __future__ import annotations

from functools import lru_cache

from .params import param_tensors
from .spec import load_spec
from .validation import choice

OPTIMIZERS = ("adamw", "sgd", "sgd_momentum", "adafactor", "adamw_8bit", "lion")
_FULL_STATES = {"adamw": 2, "sgd": 0, "sgd_momentum": 1, "lion": 1}
_8BIT_BLOCK = 256


def tensor_state_bytes(matrices, vector_params: int, optimizer: str = "adamw",
                       state_bytes: int = 4) -> int:
    """Optimizer state of ``matrices`` (``(rows, cols, count)``) and ``vector_params`` (chapter 04)."""
    choice("optimizer", optimizer, OPTIMIZERS)
    matrix_params = sum(r * c * n for r, c, n in matrices)
    if optimizer in _FULL_STATES:
        return _FULL_STATES[optimizer] * state_bytes * (matrix_params + vector_params)
    if optimizer == "adamw_8bit":
        quantised = sum(n * (r * c + 4 * -(-(r * c) // _8BIT_BLOCK)) for r, c, n in matrices)
        return 2 * quantised + 2 * 4 * vector_params
    return state_bytes * (sum((r + c) * n for r, c, n in matrices) + vector_params)  # adafactor


def optimizer_state_bytes(model, optimizer: str = "adamw", state_bytes: int = 4) -> int:
    """Bytes of optimizer state when every parameter of ``model`` trains (chapter 04): the
    per-optimizer formula of the module docstring, e.g. AdamW ``2 · state_bytes · params``."""
    return _model_state_bytes(load_spec(model), optimizer, state_bytes)


@lru_cache(maxsize=1024)
def _model_state_bytes(spec, optimizer: str, state_bytes: int) -> int:
    matrices, vectors = param_tensors(spec)
    return tensor_state_bytes(matrices, vectors, optimizer, state_bytes)
