"""memlib predicts every number real vLLM start-up logs printed (chapter 07).

The records in ``data/serving/vllm_logs`` are real logs with their sources.  Targets:

* weights within 1 % (vLLM prints "model weights take" / "Model loading took", in GiB);
* KV-cache tokens (or blocks, or KV GiB where only that is printed) within 5 % end to end
  for every record whose inputs are fully known (``fully_known``);
* the block arithmetic alone (the *logged* available memory -> blocks -> tokens ->
  concurrency) within the rounding of the printed GiB (±0.005 GiB) plus one block;
* the activation peak within 10 %: memlib's model (the larger of the forward pass and the
  dummy sampling step, module docstring of ``memlib.serving``) leaves out a few small
  buffers (attention metadata, the allocator's 512 B rounding, the sort's exact scratch);
  the observed errors are 0.1-4.9 %;
* non-torch memory is not predicted but measured: every logged value must lie in the
  range that ``data/serving/OVERHEADS.md`` reports, and memlib's constant inside it.

Misses are listed in ``EXPECTED`` with the reason (``data/serving/UNPREDICTED.md``); the
test checks each one against the looser bound written there, so a change that makes them
worse still fails.
"""
import pytest

from memlib import serving as S

RECORDS = {r["id"]: r for r in S.load_vllm_logs()}
PRED = {i: S.predict_vllm_log(r) for i, r in RECORDS.items()}
GIB = 2**30

#: record id -> {check: (bound, reason)}; mirrored in data/serving/UNPREDICTED.md
EXPECTED = {
    "09_llama-2-7b_8xmi300x_v0.6.3_tp8": {
        "weights": (0.015, "ROCm tp=8: each rank's load leaves 17.5 MiB more than its weight shards")},
    "12_phi-4-gptq_80gb_v0.6.5": {
        "kv_end_to_end": (0.10, "non-torch 0.26 GiB vs the 0.07 GiB median; on a 0.15 x 79 GiB budget "
                                "that 0.19 GiB is 9 % of the KV cache")},
    "06_qwen3-235b-a22b-fp8_4xh100_tp4": {
        "kv_from_logged": (0.015, "the pool is the minimum over 4 ranks; 8.11 GiB is one rank's figure")},
    "13_llama-2-7b_h100_v0.8-v0_lora": {
        "activation": (None, "LoRA dummy adapters in the profile run are not in the activation model")},
}

ids = sorted(RECORDS)


def rel(p, l):
    return (p - l) / l


def test_there_are_at_least_15_logs_across_gpus_versions_and_tp():
    assert len(RECORDS) >= 15
    gpus = {r["gpu"]["name"] for r in RECORDS.values()}
    versions = {r["vllm_version"] for r in RECORDS.values()}
    assert len(gpus) >= 8 and len(versions) >= 8
    assert {r["flags"]["tp"] for r in RECORDS.values()} >= {1, 4, 8}
    assert len({r["flags"]["gpu_memory_utilization"] for r in RECORDS.values()}) >= 4


@pytest.mark.parametrize("rid", ids)
def test_record_is_complete(rid):
    r = RECORDS[rid]
    for key in ("id", "source", "vllm_version", "engine", "model", "gpu", "flags", "known", "fully_known",
                "quote", "logged"):
        assert key in r, key
    assert r["id"] == rid and r["source"]["url"] and len(r["quote"]) > 80
    S.parse_version(r["vllm_version"])
    assert S.accounting_family(r["vllm_version"], r["engine"]) in S.FAMILIES
    assert any(v is not None for v in r["logged"].values())
    # every printed number we test is in the verbatim quote
    for key in ("num_blocks", "kv_cache_tokens", "cpu_blocks"):
        v = r["logged"].get(key)
        if v is not None:
            assert str(v) in r["quote"] or f"{v:,}" in r["quote"], key


@pytest.mark.parametrize("rid", [i for i in ids if RECORDS[i]["logged"].get("weights_gib") is not None])
def test_weights_within_one_percent(rid):
    p = PRED[rid]
    err = abs(rel(p["predicted"]["weights"], p["logged"]["weights"]))
    bound = EXPECTED.get(rid, {}).get("weights", (0.01, ""))[0]
    # the log prints 2 or 4 decimals: allow that rounding on top
    assert err <= bound + 0.005 / p["logged"]["weights"], (rid, err)


def _kv_pair(p, which):
    """(predicted, logged) of the most specific KV number the log printed."""
    src = p["predicted"] if which == "end_to_end" else p["from_logged_kv"]
    for key in ("kv_cache_tokens", "num_blocks", "kv_cache_gib"):
        if p["logged"].get(key) is not None and src.get(key) is not None:
            return key, src[key], p["logged"][key]
    return None, None, None


FULLY = [i for i in ids if RECORDS[i]["fully_known"]]


@pytest.mark.parametrize("rid", FULLY)
def test_kv_cache_end_to_end_within_five_percent(rid):
    key, pv, lv = _kv_pair(PRED[rid], "end_to_end")
    assert key is not None, "a fully known record must print a KV number"
    bound = EXPECTED.get(rid, {}).get("kv_end_to_end", (0.05, ""))[0]
    assert abs(rel(pv, lv)) <= bound, (rid, key, pv, lv)


def test_most_fully_known_logs_meet_the_target():
    ok = [i for i in FULLY if abs(rel(*_kv_pair(PRED[i], "end_to_end")[1:])) <= 0.05]
    assert len(FULLY) >= 9 and len(ok) >= len(FULLY) - 1


@pytest.mark.parametrize("rid", [i for i in ids if PRED[i]["from_logged_kv"]])
def test_block_arithmetic_from_the_logged_kv_memory(rid):
    p = PRED[rid]
    kv_gib = p["logged"]["kv_cache_gib"]
    for key in ("num_blocks", "kv_cache_tokens"):
        lv, pv = p["logged"].get(key), p["from_logged_kv"][key]
        if lv is None:
            continue
        unit = pv / p["from_logged_kv"]["num_blocks"] if key == "kv_cache_tokens" else 1
        rounding = 0.005 / kv_gib * lv + unit          # printed GiB rounding + one block
        bound = EXPECTED.get(rid, {}).get("kv_from_logged")
        if bound:
            assert abs(rel(pv, lv)) <= bound[0], (rid, key, pv, lv)
        else:
            assert abs(pv - lv) <= rounding, (rid, key, pv, lv)
    if p["logged"].get("max_concurrency") is not None:
        lv, pv = p["logged"]["max_concurrency"], p["from_logged_kv"]["max_concurrency"]
        assert abs(pv - lv) <= 0.005 + 0.005 / kv_gib * lv + 0.01, (rid, pv, lv)


@pytest.mark.parametrize("rid", [i for i in ids if PRED[i]["logged"].get("activation") is not None])
def test_activation_peak_within_ten_percent(rid):
    p = PRED[rid]
    pv, lv = p["predicted"]["activation"], p["logged"]["activation"]
    if "activation" in EXPECTED.get(rid, {}):
        assert pv < lv                       # LoRA adds to the peak; the model without it must be below
        return
    assert abs(rel(pv, lv)) <= 0.10, (rid, pv, lv)


def test_the_activation_model_covers_both_phases():
    phases = {PRED[i]["scheduler"]["activation_phase"] for i in ids
              if PRED[i]["logged"].get("activation") is not None and i not in EXPECTED}
    assert phases == {"forward", "sampler"}


#: Measured non-torch ranges (data/serving/OVERHEADS.md), GiB per GPU.
NON_TORCH_RANGE = {"tp1": (0.0, 0.30), "tpN": (0.15, 0.30)}


#: 02/03 calibrated CUDA_CONTEXT (0.6.4 charges the context inside "non_torch_memory"), and 04 is a
#: development build that printed 1.79 GiB at tp=1 (UNPREDICTED.md): none of them can test the range.
NOT_RANGE_CHECKED = {"02_llama-3.1-8b_rtx3090_v0.6.4_20k", "03_llama-3.1-8b_rtx3090_v0.6.4_29k",
                     "04_llama-3-8b_h100_v0.6.5dev_tp1"}


@pytest.mark.parametrize("rid", [i for i in ids if RECORDS[i]["logged"].get("non_torch_gib") is not None
                                 and i not in NOT_RANGE_CHECKED])
def test_non_torch_in_the_measured_range(rid):
    r = RECORDS[rid]
    assert S.accounting_family(r["vllm_version"], r["engine"]) == "profiling"   # context not included
    lo, hi = NON_TORCH_RANGE["tp1" if r["flags"]["tp"] == 1 else "tpN"]
    assert lo <= r["logged"]["non_torch_gib"] <= hi, rid


def test_memlib_constants_lie_in_the_measured_ranges():
    assert NON_TORCH_RANGE["tp1"][0] <= S.NON_TORCH_TP1 / GIB <= NON_TORCH_RANGE["tp1"][1]
    assert NON_TORCH_RANGE["tpN"][0] <= S.NON_TORCH_TPN / GIB <= NON_TORCH_RANGE["tpN"][1]


@pytest.mark.parametrize("rid", [i for i in ids if RECORDS[i]["logged"].get("cpu_blocks") is not None])
def test_cpu_swap_blocks_exact(rid):
    """V0's '# CPU blocks' = ⌊4 GiB swap space / block bytes⌋: a pure check of the block size."""
    r = RECORDS[rid]
    f = r["flags"]
    spec = S._record_model(r)
    assert S.swap_blocks(spec, 4.0, f["tp"], f["kv_cache_dtype"], f["dtype"]) == r["logged"]["cpu_blocks"]


def test_mla_kv_needed_for_one_request():
    p = PRED["18_deepseek-v2-lite_v0.8.3dev_kv-needed"]
    assert round(p["predicted"]["kv_needed_gib"], 2) == p["logged"]["kv_needed_gib"]


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
