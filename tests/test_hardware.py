"""memlib.hardware: lookups, the three memory figures, and their sources (chapter 07)."""
import pytest

from memlib.hardware import (GPU, GPU_SMI_SOURCES, GPU_SOURCES, GPU_TABLE, GPUS, GPUS_SMI, get_gpu, gpu_bytes,
                             gpu_names, gpu_table)

MIB, GIB = 2**20, 2**30

ISSUE_13_GPUS = ["A10", "L4", "L40S", "A100-40GB", "A100-80GB", "H100-PCIe", "H100-80GB", "H200", "B200",
                 "GB200", "RTX-3090", "RTX-4090", "RTX-5090", "MI300X", "MI325X"]


def test_every_gpu_of_issue_13_is_there():
    assert set(ISSUE_13_GPUS) <= set(gpu_names())


@pytest.mark.parametrize("alias, name", [("h100", "H100-80GB"), ("NVIDIA H100 80GB HBM3", "H100-80GB"),
                                         ("A100-SXM4-40GB", "A100-40GB"), ("rtx 4090", "RTX-4090"),
                                         ("A10G", "A10"), ("Instinct MI300X", "MI300X"), ("H100 PCIe", "H100-PCIe")])
def test_aliases(alias, name):
    assert get_gpu(alias).name == name


def test_unknown_gpu_lists_the_known_names():
    with pytest.raises(ValueError) as e:
        get_gpu("V100")
    msg = str(e.value)
    assert msg.startswith("gpu:") and "V100" in msg and all(n in msg for n in ISSUE_13_GPUS)
    with pytest.raises(ValueError):
        get_gpu(80)


def test_a_gpu_object_passes_through():
    g = GPU_TABLE["L4"]
    assert get_gpu(g) is g


def test_a100_40gb_runtime_total_is_device_query_bytes():
    # deviceQuery on an A100-SXM4-40GB: "40339 MBytes (42298834944 bytes)" (bottlerocket#3873)
    g = get_gpu("A100-40GB")
    assert g.runtime_bytes == 42_298_834_944 and g.runtime_bytes // MIB == 40339
    assert round(g.runtime_bytes / GIB, 2) == 39.39
    assert g.usable_bytes == g.runtime_bytes and g.usable_source == "runtime"


def test_h100_runtime_is_the_vllm_log_total_and_below_nvidia_smi():
    g = get_gpu("H100-80GB")
    assert g.smi_bytes == 81559 * 1048576 == 85_520_809_984
    assert round(g.runtime_bytes / GIB, 2) == 79.19           # vLLM 'total_gpu_memory (79.19GiB)'
    assert g.runtime_bytes < g.smi_bytes                      # the driver keeps ~0.45 GiB


def test_runtime_total_is_below_every_nvidia_smi_total():
    for g in GPU_TABLE.values():
        if g.runtime_bytes is not None and g.smi_mib is not None:
            assert g.runtime_bytes < g.smi_bytes, g.name
            assert g.smi_bytes - g.runtime_bytes < 1 * GIB, g.name


def test_usable_falls_back_to_nvidia_smi_then_spec():
    a100 = get_gpu("A100-80GB")           # PyTorch's 'total capacity of 79.15 GiB' (vllm#4408)
    assert a100.usable_bytes == a100.runtime_bytes == round(79.15 * GIB) and a100.usable_source == "runtime"
    no_log = GPU("X", "NVIDIA", 80, 81920, None, 1, 1, None)
    assert no_log.usable_bytes == 81920 * MIB and no_log.usable_source == "nvidia-smi"
    gb200 = get_gpu("GB200")
    assert gb200.runtime_bytes is None and gb200.smi_mib is None
    assert gb200.usable_bytes == 186 * 10**9 and gb200.usable_source == "spec"


def test_every_figure_has_a_source():
    for g in GPU_TABLE.values():
        assert g.sources.get("spec"), g.name
        assert "runtime_bytes" in g.sources and g.sources["runtime_bytes"], g.name
        if g.runtime_bytes is None:
            assert "not" in g.sources["runtime_bytes"], g.name     # says why it is missing
        assert g.bandwidth_gbs > 0 and g.bf16_tflops > 0 and g.spec_gb > 0


def test_dense_fp8_is_twice_bf16_where_the_sheets_give_both():
    # Hopper, Ada, Blackwell and CDNA3 datasheets: FP8 tensor rate = 2 x BF16 (dense).
    for name in ("H100-80GB", "H100-PCIe", "H200", "B200", "GB200", "RTX-4090", "RTX-5090", "MI300X", "MI325X"):
        g = get_gpu(name)
        assert g.fp8_tflops == pytest.approx(2 * g.bf16_tflops, rel=0.01), name
    for name in ("A10", "A100-40GB", "A100-80GB", "RTX-3090"):
        assert get_gpu(name).fp8_tflops is None


def test_chapters_02_and_04_table_is_the_runtime_total():
    # What a process can use: the total the runtime reports (torch.cuda.mem_get_info()[1], which vLLM
    # multiplies by gpu_memory_utilization), as printed by the logs in GPU_SOURCES:
    # H100 vLLM 'total_gpu_memory (79.19GiB)' (gateway-api-inference-extension#550), A100 80GB PyTorch
    # 'total capacity of 79.15 GiB' (vllm#4408), A100-SXM4-40GB deviceQuery '42298834944 bytes'
    # (bottlerocket#3873), L4 'total capacity of 22.04 GiB', RTX 4090 'GPU memory: 23.64GB' (LlamaFactory#7234).
    printed = {"H100 80GB": "79.19", "A100 80GB": "79.15", "A100 40GB": "42298834944", "L4 24GB": "22.04",
               "RTX 4090 24GB": "23.64"}
    runtime = {"H100 80GB": round(79.19 * GIB), "A100 80GB": round(79.15 * GIB), "A100 40GB": 42_298_834_944,
               "L4 24GB": round(22.04 * GIB), "RTX 4090 24GB": round(23.64 * GIB)}
    assert list(GPUS) == list(runtime) and GPUS == runtime
    assert all(printed[k] in GPU_SOURCES[k] for k in GPUS)
    # nvidia-smi totals, MiB, a displayed fact (NVIDIA/nccl#1264, modal-labs/modal-client#2797, RLinf/RLinf#255)
    smi = {"H100 80GB": 81_559, "A100 80GB": 81_920, "A100 40GB": 40_960, "L4 24GB": 23_034, "RTX 4090 24GB": 24_564}
    assert list(GPUS_SMI) == list(smi) and GPUS_SMI == {k: v * MIB for k, v in smi.items()}
    assert all(GPU_SMI_SOURCES[k].count(f"{v}MiB") == 1 for k, v in smi.items())
    for k in GPUS:                         # the driver keeps some of the nvidia-smi total for itself
        assert 0 < GPUS_SMI[k] - GPUS[k] < 1 * GIB, k
    # H100: 81,559 MiB = 79.65 GiB in nvidia-smi, 79.19 GiB for the runtime: 0.46 GiB apart
    assert round((GPUS_SMI["H100 80GB"] - GPUS["H100 80GB"]) / GIB, 2) == round(81_559 / 1024 - 79.19, 2) == 0.46
    assert gpu_bytes("L4 24GB") == round(22.04 * GIB) and gpu_bytes(10**9) == 10**9
    with pytest.raises(ValueError, match="gpu"):
        gpu_bytes("L4-24GB")               # the five-card table keeps its own labels
    for label in GPUS:                     # every label is also an alias of the full table
        g = get_gpu(label)
        assert g.usable_bytes == GPUS[label] and g.smi_bytes == GPUS_SMI[label] and g.usable_source == "runtime"


def test_table_is_json_ready():
    import json
    rows = gpu_table()
    assert [r["name"] for r in rows] == gpu_names()
    json.dumps(rows)
    assert all(isinstance(r["usable_bytes"], int) for r in rows)


def test_frozen():
    with pytest.raises(Exception):
        GPU_TABLE["L4"].spec_gb = 1
    assert isinstance(GPU_TABLE["L4"], GPU)
