"""Units and the Breakdown result type."""
import numpy as np
import pytest

from memlib import Breakdown
from memlib.units import GB, GiB, fmt_bytes, to_unit


def test_gib_vs_gb():
    assert GiB == 1_073_741_824 and GB == 1_000_000_000
    assert fmt_bytes(16 * 10**9) == "14.90 GiB"   # 16e9 / 2^30 = 14.901
    assert to_unit(16 * 10**9, "GB") == 16.0
    with pytest.raises(ValueError, match="unit"):
        to_unit(1, "GiG")


def test_breakdown_total_table_and_dict():
    b = Breakdown({"weights": 3 * GiB, "kv_cache": GiB // 2}, title="t")
    assert b.total == 3 * GiB + GiB // 2
    t = b.table()
    assert "3.500" in t and "3.758" in t      # 3.5 GiB = 3.758 GB
    d = b.to_dict()
    assert d["total"] == b.total and d["components"]["kv_cache"] == GiB // 2


def test_shard_adds_back_up():
    b = Breakdown({"weights": 10**9 + 3, "kv_cache": 7, "context": 500})
    s = b.shard(4, replicated=("context",))
    assert s["context"] == 500
    assert 0 <= s["weights"] * 4 - (10**9 + 3) < 4
    assert s.total * 4 >= b.total


def test_add_merges_components():
    a = Breakdown({"weights": 1, "kv_cache": 2})
    c = a + Breakdown({"kv_cache": 3, "activations": 4})
    assert dict(c.components) == {"weights": 1, "kv_cache": 5, "activations": 4}


def test_array_components():
    b = Breakdown({"kv": np.array([1, 2, 3])})
    assert b.total.tolist() == [1, 2, 3]
    assert "array" in b.table()
