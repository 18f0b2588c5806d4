"""memlib predicts every number real vLLM start-up logs printed (chapter 07).

The records in ``data/serving/vllm_logs`` are real logs with their sources.  Every logged
number of every record is compared (``test_every_logged_number``), against these targets:

* weights within 1 % (vLLM prints "model weights take" / "Model loading took", in GiB);
* the KV cache (GiB, blocks, tokens, concurrency) within 5 % end to end, from the config,
  the GPU total, the flags and the release only;
* the activation peak within 10 %: memlib's model (the larger of the forward pass and the
  dummy sampling step, :mod:`memlib.vllm`) leaves out a few small buffers;
* the KV bytes one request needs: exact to the printed digits;
* non-torch memory is calibrated, not predicted: every logged value must lie in the measured
  range of ``data/serving/OVERHEADS.md``, and memlib's constant inside it.

Printed numbers are rounded: half a unit of their last printed digit is allowed on top.
What memlib does not predict is listed in ``memlib.measure.vllm_logs.KNOWN_MISSES`` with the
reason (mirrored in ``data/serving/UNPREDICTED.md``; chapter 07 prints it) and a bound that is asserted, so a change that makes a
miss worse fails; a listed miss that starts to meet its target fails too (remove it).
"""
import pytest

from memlib import vllm as V
from memlib.measure.vllm_logs import (KNOWN_MISSES, NON_TORCH_NOT_TESTED, QUANTITIES, kv_pair, load_vllm_logs,
                                      log_rows, predict_vllm_log, record_model, relative_error)

RECORDS = {r["id"]: r for r in load_vllm_logs()}
PRED = {i: predict_vllm_log(r) for i, r in RECORDS.items()}
ROWS = log_rows(list(RECORDS.values()))
GIB = 2**30
KV_KEYS = ("kv_cache_gib", "num_blocks", "kv_cache_tokens", "max_concurrency")
TARGET = {"weights": 0.01, "activation": 0.10, "kv_needed_gib": 0.0, **dict.fromkeys(KV_KEYS, 0.05)}

#: Measured non-torch ranges (data/serving/OVERHEADS.md), GiB per GPU.
NON_TORCH_RANGE = {"tp1": (0.0, 0.30), "tpN": (0.15, 0.30)}
def _decimals(x) -> int:
    text = repr(float(x))
    return len(text.split(".")[1]) if "." in text and not float(x).is_integer() else 0


def _rounding(row) -> float:
    """Half a unit of the logged number's last printed digit, relative to it."""
    if isinstance(row["logged"], int):
        return 0.0
    return 0.5 * 10 ** -_decimals(row["logged"]) / abs(row["logged"])


def _listed(row):
    key = "kv" if row["quantity"] in KV_KEYS else row["quantity"]
    return KNOWN_MISSES.get((row["id"], key))


def _rid(row):
    return f"{row['id'][:2]}-{row['quantity']}"


def test_there_are_at_least_15_logs_across_gpus_versions_and_tp():
    assert len(RECORDS) >= 15
    assert len({r["gpu"]["name"] for r in RECORDS.values()}) >= 8
    assert len({r["vllm_version"] for r in RECORDS.values()}) >= 8
    assert {r["flags"]["tp"] for r in RECORDS.values()} >= {1, 4, 8}
    assert len({r["flags"]["gpu_memory_utilization"] for r in RECORDS.values()}) >= 4


@pytest.mark.parametrize("rid", sorted(RECORDS))
def test_record_is_complete_and_compared(rid):
    r = RECORDS[rid]
    for key in ("id", "source", "vllm_version", "engine", "model", "gpu", "flags", "known", "fully_known",
                "quote", "logged"):
        assert key in r, key
    assert r["id"] == rid and r["source"]["url"] and len(r["quote"]) > 80
    assert V.accounting_family(r["vllm_version"], r["engine"]) in V.FAMILIES
    for key in ("num_blocks", "kv_cache_tokens", "cpu_blocks"):      # every printed count is in the quote
        v = r["logged"].get(key)
        if v is not None:
            assert str(v) in r["quote"] or f"{v:,}" in r["quote"], key
    assert any(row["id"] == rid for row in ROWS) or PRED[rid]["from_logged_kv"], "a record nothing compares"


@pytest.mark.parametrize("row", [r for r in ROWS if r["quantity"] != "non_torch"], ids=_rid)
def test_every_logged_number(row):
    listed = _listed(row)
    if listed is not None:
        bound, reason = listed
        assert reason
        if bound is None:                    # not predicted at all: say so, and check it really is not
            if row["quantity"] == "activation":
                assert row["predicted"] < row["logged"]      # the model without the LoRA buffers stays below
            else:
                assert row["predicted"] is None
            return
        err = abs(row["error"])
        assert err <= bound, (row, reason)
        assert err > TARGET[row["quantity"]] + _rounding(row), "this miss now meets its target: unlist it"
        return
    assert row["predicted"] is not None, row
    assert abs(row["error"]) <= TARGET[row["quantity"]] + _rounding(row), row


def test_every_listed_miss_is_a_logged_number():
    listed = {(r["id"], "kv" if r["quantity"] in KV_KEYS else r["quantity"]) for r in ROWS}
    assert set(KNOWN_MISSES) <= listed


FULLY = [i for i in sorted(RECORDS) if RECORDS[i]["fully_known"]]


def test_fully_known_logs_meet_the_kv_target_but_one():
    """Issue target: KV tokens within 5 % for the logs whose inputs are fully known.  One
    (12) misses it, because its non-torch memory is far from the median (KNOWN_MISSES)."""
    errors = {i: relative_error(*kv_pair(PRED[i])[1:]) for i in FULLY}
    assert len(FULLY) >= 10 and all(e is not None for e in errors.values())
    missed = [i for i, e in errors.items() if abs(e) > 0.05]
    assert missed == ["12_phi-4-gptq_80gb_v0.6.5"]


@pytest.mark.parametrize("rid", [i for i in sorted(RECORDS) if PRED[i]["from_logged_kv"]])
def test_block_arithmetic_from_the_logged_kv_memory(rid):
    """The logged KV GiB -> blocks -> tokens -> concurrency, within the GiB's rounding and one block."""
    p = PRED[rid]
    kv_gib = p["logged"]["kv_cache_gib"]
    for key in ("num_blocks", "kv_cache_tokens"):
        lv, pv = p["logged"].get(key), p["from_logged_kv"][key]
        if lv is None:
            continue
        unit = pv / p["from_logged_kv"]["num_blocks"] if key == "kv_cache_tokens" else 1
        if rid.startswith("06_"):        # one rank's figure; the pool is the minimum over 4 ranks
            assert abs(relative_error(pv, lv)) <= 0.015, (key, pv, lv)
        else:
            assert abs(pv - lv) <= 0.005 / kv_gib * lv + unit, (key, pv, lv)
    if p["logged"].get("max_concurrency") is not None:
        lv, pv = p["logged"]["max_concurrency"], p["from_logged_kv"]["max_concurrency"]
        assert abs(pv - lv) <= 0.005 + 0.005 / kv_gib * lv + 0.01, (pv, lv)


def test_the_activation_model_covers_both_phases():
    phases = {PRED[r["id"]]["scheduler"]["activation_phase"] for r in ROWS
              if r["quantity"] == "activation" and not _listed(r)}
    assert phases == {"forward", "sampler"}


@pytest.mark.parametrize("rid", [r["id"] for r in ROWS if r["quantity"] == "non_torch"])
def test_non_torch_in_the_measured_range(rid):
    r = RECORDS[rid]
    if rid in NON_TORCH_NOT_TESTED:
        assert NON_TORCH_NOT_TESTED[rid]
        assert rid.startswith(("02_", "03_")) or r["logged"]["non_torch_gib"] > NON_TORCH_RANGE["tp1"][1]
        return
    assert V.accounting_family(r["vllm_version"], r["engine"]) == "profiling"   # context not included
    lo, hi = NON_TORCH_RANGE["tp1" if r["flags"]["tp"] == 1 else "tpN"]
    assert lo <= r["logged"]["non_torch_gib"] <= hi


def test_memlib_constants_lie_in_the_measured_ranges():
    assert NON_TORCH_RANGE["tp1"][0] <= V.NON_TORCH_TP1 / GIB <= NON_TORCH_RANGE["tp1"][1]
    assert NON_TORCH_RANGE["tpN"][0] <= V.NON_TORCH_TPN / GIB <= NON_TORCH_RANGE["tpN"][1]


@pytest.mark.parametrize("rid", [i for i in sorted(RECORDS) if RECORDS[i]["logged"].get("cpu_blocks") is not None])
def test_cpu_swap_blocks_exact(rid):
    """V0's '# CPU blocks' = ⌊4 GiB swap space / block bytes⌋: a pure check of the block size."""
    r = RECORDS[rid]
    f = r["flags"]
    assert V.swap_blocks(record_model(r), 4.0, f["tp"], f["kv_cache_dtype"], f["dtype"]) == r["logged"]["cpu_blocks"]


def test_cuda_graphs_sit_on_top_of_the_budget_before_0_21():
    """Log 01 also printed nvidia-smi after start-up: 39062 MiB in use.  That is the budget
    (0.9 x 39.39 GiB) plus the 2.24 GiB of CUDA graphs captured *after* the KV cache was
    sized, plus the CUDA context: what is left must be a context-sized 0.2-0.6 GiB."""
    r = RECORDS["01_qwen3-8b_a100-40gb_v0.9.2"]
    used = r["logged"]["smi_used_mib"] / 1024
    budget = 0.9 * 42_298_834_944 / GIB
    rest = used - budget - r["logged"]["cuda_graph_gib"]
    assert 0.2 <= rest <= 0.6
    assert used - budget > 1.0          # graphs inside the budget would leave only the context


def test_quantities_are_the_tables_columns():
    assert set(TARGET) | {"non_torch"} == set(QUANTITIES)


def test_memlib_constants_are_the_medians_of_the_measured_overheads():
    """NON_TORCH_* and CUDA_GRAPHS are medians of real logs (data/serving/overheads.json), not
    rules of thumb; CUDA_CONTEXT is the one calibrated reading (log 02) and lies in the range."""
    import statistics
    from memlib.measure.vllm_logs import load_overheads, overhead_ranges
    rows = [r for r in load_overheads() if r["released"]]
    nt1 = [r["gib"] for r in rows if r["overhead"] == "non_torch" and r["tp"] == 1]
    ntn = [r["gib"] for r in rows if r["overhead"] == "non_torch" and r["tp"] > 1]
    assert len(nt1) == 9 and V.NON_TORCH_TP1 == int(statistics.median(nt1) * GIB)
    assert V.NON_TORCH_TPN == int(statistics.median(ntn) * GIB)
    graphs = {e: [r["gib"] for r in rows if r["overhead"] == "cuda_graphs" and r["context"].startswith(e.upper())]
              for e in ("v0", "v1")}
    assert all(V.CUDA_GRAPHS[e] == int(statistics.median(g) * GIB) for e, g in graphs.items())
    ctx = overhead_ranges(rows)["cuda_context"]
    assert ctx["low"] <= round(V.CUDA_CONTEXT / GIB, 6) <= ctx["high"] and ctx["n"] == 3
    gap = overhead_ranges(rows)["allocator_gap"]
    assert gap["high_share"] < 0.08          # reserved-but-unallocated: well under the "20-30 %" of the articles
