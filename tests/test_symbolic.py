"""The compiled scalar path (memlib.symbolic): exact, guarded, refuses what it cannot express,
and is what the scalar estimates use for every catalog model."""
import itertools

import numpy as np
import pytest

import memlib
from memlib import symbolic
from memlib.activations import _activation_result
from memlib.lora import _lora_result, resolve_targets
from memlib.symbolic import compiled, evaluate, larger, trace
from memlib.validation import as_float, as_int
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


def test_the_table_of_compiled_functions_is_bounded(monkeypatch):
    monkeypatch.setattr(symbolic, "MAX_COMPILED", 5)
    symbolic._VARIANTS.clear()
    monkeypatch.setattr(symbolic, "_compiled_count", 0)
    for width in range(20):                       # 20 keys, each called three times
        for _ in range(3):
            assert evaluate(_toy, (3, 5001), width)["hidden"] == 2 * 15003 * width
        compiled_now = sum(len(v) for v in symbolic._VARIANTS.values() if v)
        assert compiled_now <= 5 and compiled_now == symbolic._compiled_count


@pytest.mark.parametrize("misuse", [
    lambda B, S: {"x": int(B * S)},
    lambda B, S: {"x": B ** 2},
    lambda B, S: {"x": int(B / 2)},               # int() must return a number: memlib.validation.as_int
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
        return {"concurrency": as_float(concurrency), "tokens": as_int(concurrency * L), "util": 0.9 * n,
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


def test_inputs_below_one_take_the_direct_path():
    """The compiled forms assume every input >= 1 (no guard for B - 1 < 0); anything else is
    the build's to judge, here with its error."""
    def checked(B, S):
        if B < 1:
            raise ValueError("batch_size: must be >= 1")
        return {"bytes": 2 * B * S}
    for _ in range(3):
        assert evaluate(checked, (2, 10)) == {"bytes": 40}
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(checked, (0, 10))
    with pytest.raises(ValueError, match="batch_size"):
        memlib.parallel_train_memory("gpt2", 0, 64, dp=2)


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


def _agree(fn_call, points):
    """``fn_call(b, s)`` through the compiled path (third call of a key) equals the direct build."""
    symbolic._VARIANTS.clear()
    for b, s in points:
        fast = [fn_call(b, s) for _ in range(3)][-1]
        symbolic_variants = dict(symbolic._VARIANTS)
        saved, symbolic._VARIANTS = symbolic._VARIANTS, {}
        try:
            symbolic._VARIANTS = _NoCache()
            slow = fn_call(b, s)
        finally:
            symbolic._VARIANTS = saved
        assert fast == slow, (b, s)
    # compiled (an estimate it calls inside may have seen one direct call only), nothing refused
    assert any(symbolic_variants.values()) and None not in symbolic_variants.values(), symbolic_variants


class _NoCache(dict):
    """A variants table that never keeps anything: every call runs the build directly."""

    def __setitem__(self, key, value):
        pass

    def get(self, key, default=None):
        return None


@pytest.mark.parametrize("model", ["Llama-3.1-8B", "Qwen3-30B-A3B", "gpt2", "gemma-2-9b", "DeepSeek-V2-Lite",
                                   "falcon-7b-instruct", "Phi-3-mini-4k-instruct", "Mixtral-8x7B-v0.1"])
def test_composite_estimates_compile_and_agree(model):
    """rl_memory, parallel_train_memory, vllm_budget, gpus_needed, inference_memory and
    rollout_memory: the compiled result equals the direct one, and a variant was compiled."""
    spec = memlib.load_spec(model)
    cap = min(2048, spec.max_position_embeddings)
    pts = [(1, cap // 4), (3, cap // 2), (2, cap)]
    _agree(lambda b, s: memlib.rl_memory(spec, "grpo", b, s, group_size=4), pts)
    _agree(lambda b, s: memlib.rl_memory(spec, "ppo", b, s, group_size=2, precision="mixed"), pts)
    _agree(lambda b, s: memlib.rl_memory(spec, "dpo", b, s, lora_rank=8), pts)
    _agree(lambda b, s: memlib.rl_memory(spec, "grpo", b, s, group_size=2, rollout="vllm", gpu="H200-141GB",
                                         gpu_memory_utilization=0.9), pts)
    _agree(lambda b, s: memlib.parallel_train_memory(spec, b, s, dp=4, zero=3), pts)
    _agree(lambda b, s: memlib.parallel_train_memory(spec, b, s, dp=2, zero=1, precision="mixed"), pts)
    if spec.num_layers >= 4:
        _agree(lambda b, s: memlib.parallel_train_memory(spec, b, s, pp=2, microbatches=4), pts)
    _agree(lambda b, s: memlib.vllm_budget(spec, "H200-141GB", max_model_len=s, max_num_seqs=b), pts)
    _agree(lambda b, s: memlib.gpus_needed(spec, "H100-80GB", max_model_len=s, concurrency=b), pts)
    _agree(lambda b, s: memlib.inference_memory(spec, b, s, attention="eager"), pts)
    _agree(lambda b, s: memlib.rollout_memory(spec, b, s // 4, s - s // 4, group_size=2), pts)
