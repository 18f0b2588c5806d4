"""memlib's weight and KV-cache bytes equal the bench's measurement for every catalog model.

The bench builds each real config with transformers under fake tensors and counts
storages (``memlib.measure``); these tests need the ``measure`` extra.
"""
import pytest

pytestmark = pytest.mark.bench

import memlib

pytest.importorskip("torch")
pytest.importorskip("transformers")
from memlib.measure import measure_prefill, measure_weights  # noqa: E402
from memlib.measure.compare import predict_like_bench  # noqa: E402

CATALOG = memlib.catalog_names()


@pytest.mark.parametrize("name", CATALOG)
def test_weight_bytes_equal_bench(name):
    measured = measure_weights(name, "bf16")
    assert predict_like_bench(dict(model=name, dtype="bf16"), "weights").total == measured["weights"]
    assert memlib.weight_memory(name, "bf16").total == measured["weights"]


@pytest.mark.parametrize("name", CATALOG)
def test_kv_bytes_equal_bench(name):
    # 2 sequences of 24 tokens: below every sliding window, so every layer holds them all
    measured = measure_prefill(name, batch_size=2, seq_len=24)
    # transformers' sliding-window layers also keep an 8-byte int64 window-size tensor each
    window_scalars = 8 * memlib.load_spec(name).num_sliding_layers
    assert memlib.kv_bytes(name, 24, 2) + window_scalars == measured.meta["kv_cache"]
    assert predict_like_bench(dict(model=name, batch_size=2, seq_len=24), "kv").total == measured.meta["kv_cache"]
