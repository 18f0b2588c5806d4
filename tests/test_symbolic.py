"""The compiled scalar path (memlib.symbolic): exact, refuses what it cannot express, and is
what train_memory, lora_memory and activation_breakdown use for every catalog model."""
import itertools

import numpy as np
import pytest

import memlib
from memlib.activations import _saved_parts
from memlib.lora import _lora_marks, resolve_targets
from memlib.symbolic import NotTraceable, compiled, evaluate, larger, trace
from memlib.training import _step_marks


def _toy(B, S, width):
    """A stand-in for an estimate: every construct the tracer supports."""
    T = B * S
    return {
        "hidden": 2 * T * width,                        # a polynomial
        "scores": 4 * B * 32 * S * S,
        "window_mask": 2 * B * S * S * (S >= 4096),     # a comparison
        "batch_one": (B == 1) * 7,
        "halved": (2 * T * width) // 2,                # exact: every coefficient is even
        "floored": (S * S) // 2,                       # not exact: a derived value
        "bigger": larger(3 * B, S - 1000),
        "list": [T, 5, "label", None],
    }


def test_toy_by_hand():
    fn = trace(_toy, 64)
    # B = 3, S = 5001: T = 15003
    out = fn(3, 5001)
    assert out["hidden"] == 2 * 15003 * 64 == 1920384
    assert out["scores"] == 4 * 3 * 32 * 5001 * 5001 == 9603840384
    assert out["window_mask"] == 2 * 3 * 5001 * 5001 == 150060006      # 5001 >= 4096
    assert out["batch_one"] == 0
    assert out["halved"] == 15003 * 64 == 960192
    assert out["floored"] == 25010001 // 2 == 12505000
    assert out["bigger"] == max(9, 4001) == 4001
    assert out["list"] == [15003, 5, "label", None]
    small = fn(1, 100)
    assert small["window_mask"] == 0 and small["batch_one"] == 7 and small["bigger"] == 3
    assert small["floored"] == 5000
    # ints come back as ints, never bools
    assert all(type(v) is int for k, v in small.items() if k != "list")


@pytest.mark.parametrize("misuse", [
    lambda B, S: {"x": 1 if B > 1 else 2},        # a branch on a traced value
    lambda B, S: {"x": int(B * S)},
    lambda B, S: {"x": f"b={B}"},
    lambda B, S: {"x": B / 2},
    lambda B, S: {"x": np.maximum(B, S)},
    lambda B, S: {"x": max(B, S)},                # builtins max needs a bool: use larger()
])
def test_refused_then_direct(misuse):
    with pytest.raises(NotTraceable):
        trace(misuse)
    assert compiled(misuse) is None
    assert evaluate(misuse, 2, 3)["x"] is not None       # evaluate falls back to the direct call


def test_arrays_take_the_direct_path():
    B = np.array([1, 2]).reshape(-1, 1)
    S = np.array([100, 5000])
    out = evaluate(_toy, B, S, 64)
    assert out["window_mask"].tolist() == [[0, 2 * 5000 * 5000], [0, 4 * 5000 * 5000]]


def test_results_are_fresh_objects():
    fn = trace(_toy, 64)
    a, b = fn(2, 10), fn(2, 10)
    a["list"].append(1)
    assert b["list"] == [20, 5, "label", None]


KNOBS = list(itertools.product(("bf16", "mixed"), ("none", "selective", "full"), ("sdpa", "eager"),
                               ("loop", "foreach", "fused")))


@pytest.mark.parametrize("model", memlib.catalog_names())
def test_every_catalog_model_compiles_and_agrees(model):
    """The compiled step is used (not a silent fallback) and equals the direct evaluation."""
    spec = memlib.load_spec(model)
    points = [(1, 256), (3, 4097), (2, min(8192, spec.max_position_embeddings))]
    for prec, rc, att, impl in KNOBS[::5]:
        key = (spec, prec, "adamw", rc, att, 1, None, False, impl)
        fn = compiled(_step_marks, *key)
        assert fn is not None, (model, key)
        for b, s in points:
            assert fn(b, s) == _step_marks(b, s, *key)
        key = (spec, prec, att, rc)
        assert compiled(_saved_parts, *key) is not None
        for b, s in points:
            assert compiled(_saved_parts, *key)(b, s) == _saved_parts(b, s, *key)
    targets = resolve_targets(spec, "all-linear")
    for base, dropout, accum in (("bf16", 0.0, 1), ("nf4", 0.1, 2)):
        key = (spec, 16, targets, base, False, "bf16", "adamw", "none", "sdpa", dropout, "foreach", True, accum)
        fn = compiled(_lora_marks, *key)
        assert fn is not None, (model, key)
        for b, s in points:
            assert fn(b, s) == _lora_marks(b, s, *key)
