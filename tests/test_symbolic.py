"""The compiled scalar path (memlib.symbolic): exact, guarded, refuses what it cannot express,
and is what the scalar estimates use for every catalog model."""
import itertools

import numpy as np
import pytest

import memlib
from memlib import symbolic
from memlib.activations import _activation_result
from memlib.lora import _lora_result, resolve_targets
from memlib.symbolic import NotTraceable, compiled, evaluate, larger, to_float, to_int, trace
from memlib.training import train_result


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
        "title": f"b={B} s={S:,} T={T}",
        "branch": "long" if S > 4096 else "short",     # a decision: a guard
    }


def test_toy_by_hand():
    fn = trace(_toy, (3, 5001), 64)
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
    assert out["title"] == "b=3 s=5,001 T=15003"
    assert out["branch"] == "long"
    other = fn(1, 4097)                    # the same side of the guard S > 4096
    assert other["window_mask"] == 2 * 4097 * 4097 and other["batch_one"] == 7 and other["bigger"] == 3097
    assert other["floored"] == 16785409 // 2 == 8392704 and other["title"] == "b=1 s=4,097 T=4097"
    assert all(type(v) is int for k, v in other.items() if k not in ("list", "title", "branch"))
    assert fn(3, 5001)["window_mask"] == 150060006 and type(trace(lambda B, S: {"x": S >= 4096}, (1, 5000))(1, 10)["x"]) is bool


def test_a_failed_guard_traces_a_new_variant():
    fn = trace(_toy, (3, 5001), 64)
    assert fn(1, 100) is symbolic._MISS                 # S > 4096 no longer holds
    symbolic._VARIANTS.pop((_toy, (64,)), None)
    assert evaluate(_toy, (3, 5001), 64)["branch"] == "long"     # a key's first call runs directly ...
    assert symbolic._VARIANTS[(_toy, (64,))] == []
    assert evaluate(_toy, (3, 5001), 64)["branch"] == "long"     # ... its second is traced
    short = evaluate(_toy, (1, 100), 64)
    assert short["branch"] == "short" and short["window_mask"] == 0 and short["bigger"] == 3
    assert short["floored"] == 5000 and short["title"] == "b=1 s=100 T=100"
    assert len(symbolic._VARIANTS[(_toy, (64,))]) == 2


def test_too_many_variants_run_directly():
    def stepwise(B, S):
        return {"x": 1 if S > 10 else 0, "y": 1 if S > 20 else 0, "z": 1 if S > 30 else 0, "w": S}
    key = (stepwise, ())
    symbolic._VARIANTS.pop(key, None)
    for s in range(1, 200, 3):
        assert evaluate(stepwise, (1, s)) == {"x": int(s > 10), "y": int(s > 20), "z": int(s > 30), "w": s}
    assert len(symbolic._VARIANTS[key]) == 4              # one per side of the three guards


@pytest.mark.parametrize("misuse", [
    lambda B, S: {"x": int(B * S)},
    lambda B, S: {"x": B ** 2},
    lambda B, S: {"x": int(B / 2)},               # int() must return a number: memlib.symbolic.to_int
    lambda B, S: {"x": np.maximum(B, S)},
    lambda B, S: {"x": {B: 1}},                    # a traced value cannot be hashed
    lambda B, S: {"x": f"{B}"[:2]},               # a formatted value cut out of its string
])
def test_refused_then_direct(misuse):
    with pytest.raises(TypeError):
        trace(misuse, (2, 3))
    assert compiled(misuse, (2, 3)) is None
    assert evaluate(misuse, (2, 3))["x"] is not None       # evaluate falls back to the direct call


def test_floats_are_computed_as_written():
    def pool(L, n):
        blocks = (80 * 2**30 - 7 * L) // (16 * 4096)
        concurrency = blocks / -(-L // 16)
        return {"concurrency": to_float(concurrency), "tokens": to_int(concurrency * L), "util": 0.9 * n,
                "fits": concurrency >= n, "ratio": 1.5 + n / 3 - L * 0.25}
    fn = trace(pool, (4096, 3))
    for L, n in ((4096, 3), (8191, 7), (100, 1)):
        blocks = (80 * 2**30 - 7 * L) // (16 * 4096)
        c = blocks / -(-L // 16)
        out = fn(L, n)
        assert out == {"concurrency": c, "tokens": int(c * L), "util": 0.9 * n, "fits": c >= n,
                       "ratio": 1.5 + n / 3 - L * 0.25}
        assert type(out["fits"]) is bool and type(out["tokens"]) is int
    assert fn(4096, 10**6) is symbolic._MISS or fn(4096, 10**6)["fits"] == 0


def test_arrays_take_the_direct_path():
    B = np.array([1, 2]).reshape(-1, 1)
    S = np.array([100, 5000])

    def masks(B, S):
        return 2 * B * S * S * (S >= 4096)
    assert evaluate(masks, (B, S)).tolist() == [[0, 2 * 5000 * 5000], [0, 4 * 5000 * 5000]]


def test_results_are_fresh_objects():
    fn = trace(_toy, (2, 10), 64)
    a, b = fn(2, 10), fn(2, 10)
    a["list"].append(1)
    assert b["list"] == [20, 5, "label", None]


KNOBS = list(itertools.product(("bf16", "mixed"), ("none", "selective", "full"), ("sdpa", "eager"),
                               ("loop", "foreach", "fused")))


@pytest.mark.parametrize("model", memlib.catalog_names())
def test_every_catalog_model_compiles_and_agrees(model):
    """The compiled estimate is used (not a silent fallback) and equals the direct evaluation."""
    spec = memlib.load_spec(model)
    points = [(1, 256), (3, 4097), (2, min(8192, spec.max_position_embeddings))]
    for prec, rc, att, impl in KNOBS[::5]:
        for build, key in ((train_result, (spec, prec, "adamw", rc, att, 1, None, False, impl, "transformers")),
                           (_activation_result, (spec, prec, att, rc))):
            for b, s in points:
                fn = compiled(build, (b, s), *key)
                assert fn is not None, (model, build.__name__, key)
                assert fn(b, s) == build(b, s, *key)
    targets = resolve_targets(spec, "all-linear")
    for base, dropout, accum in (("bf16", 0.0, 1), ("nf4", 0.1, 2)):
        key = (spec, 16, targets, base, False, "bf16", "adamw", "none", "sdpa", dropout, "foreach", True, accum)
        for b, s in points:
            fn = compiled(_lora_result, (b, s), *key)
            assert fn is not None, (model, key)
            assert fn(b, s) == _lora_result(b, s, *key)
