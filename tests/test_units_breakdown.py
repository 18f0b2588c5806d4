"""Units and the Breakdown result type."""
import numpy as np
import pytest

from memlib import Breakdown, combine
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


def test_add_merges_components_and_kinds():
    a = Breakdown({"weights": 1, "kv_cache": 2}, kinds={"weights": "model_state", "kv_cache": "kv"})
    c = a + Breakdown({"kv_cache": 3, "activations": 4}, kinds={"kv_cache": "kv", "activations": "activation"})
    assert dict(c.components) == {"weights": 1, "kv_cache": 5, "activations": 4}
    assert c.kinds == {"weights": "model_state", "kv_cache": "kv", "activations": "activation"}
    assert c.by_kind() == {"model_state": 1, "activation": 4, "kv": 5}
    with pytest.raises(ValueError, match="kv_cache"):     # one name, two kinds
        a + Breakdown({"kv_cache": 1}, kinds="activation")


def test_every_component_has_a_known_kind():
    with pytest.raises(ValueError, match="without a kind"):
        Breakdown({"a": 1, "b": 2}, kinds={"a": "kv"})
    with pytest.raises(ValueError, match="kind"):
        Breakdown({"a": 1}, kinds="cache")


def _phased(label, forward, backward, step, resident=0):
    """A part whose live bytes are given per phase (its own peak in each), with one transient."""
    phases = {"forward": forward, "backward": backward, "step": step}
    pc = {ph: {"weights": resident, "transient": v - resident} for ph, v in phases.items()}
    peak = max(phases, key=phases.get)
    return Breakdown(pc[peak], kinds={"weights": "model_state", "transient": "transient"}, phases=phases,
                     peak_phase=peak, phase_components=pc, label=label)


def test_combine_peaks_over_phases_not_the_sum_of_peaks():
    # a peaks in the forward (10), b in the step (9): separately 19; together at most 13
    a = _phased("a", 10, 6, 3, resident=2)
    b = _phased("b", 2, 5, 9, resident=1)
    c = combine([a, b])
    assert c.phases == {"forward": 12, "backward": 11, "step": 12}
    assert c.total == 12 and c.peak_phase == "forward"            # the first of the tied maxima
    assert c.components == {"weights": 3, "transient": 9}          # a and b at the forward's peak
    assert [p.label for p in c.children] == ["a", "b"]
    assert a + b == c                                              # adding keeps the phases


def test_combine_an_unphased_part_is_live_in_every_phase():
    w = Breakdown({"weights": 100}, label="reference")
    c = combine([_phased("policy", 10, 20, 5), w])
    assert c.phases == {"forward": 110, "backward": 120, "step": 105} and c.peak_phase == "backward"
    assert c.components_at("step") == {"weights": 100, "transient": 5}


def test_combine_never_drops_a_phase():
    a = _phased("a", 1, 2, 3)
    b = Breakdown({"x": 5}, kinds="kv", phases={"generate": 5}, peak_phase="generate",
                  phase_components={"generate": {"x": 5}}, label="rollout")
    with pytest.raises(ValueError, match="no phase"):
        combine([a, b])


def test_array_components():
    b = Breakdown({"kv": np.array([1, 2, 3])})
    assert b.total.tolist() == [1, 2, 3]
    assert "array" in b.table()
