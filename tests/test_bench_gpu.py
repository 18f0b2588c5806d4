"""The bench on a real CUDA GPU: skipped cleanly on a machine without one.

On a GPU these check that the real run is measured by the same counter as the fake one
(weights, KV cache and optimizer state agree to the byte), that the allocator's numbers
are consistent with it, and that scripts/gpu_bench.py writes its JSON with provenance.
"""
import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from memlib.measure import measure_prefill, measure_train, measure_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY = {"model_type": "llama", "vocab_size": 256, "hidden_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 256,
        "max_position_embeddings": 1024, "tie_word_embeddings": False}


def _gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "scripts" / "gpu_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_bench_lists_and_refuses_without_gpu(tmp_path, capsys):
    bench = _gpu_bench()
    assert bench.main(["--list"]) == 0
    assert "qwen3-0.6b-train-b4-s2048-bf16" in capsys.readouterr().out
    assert bench.main(["--only", "no-such-scenario"]) == 2
    if not torch.cuda.is_available():
        assert bench.main(["--out", str(tmp_path), "--quick"]) == 2
        assert not any(tmp_path.iterdir())


@needs_gpu
def test_gpu_weights_match_fake():
    g, f = measure_weights(TINY, device="cuda"), measure_weights(TINY)
    assert g.components == f.components
    c = g.meta["cuda"]
    assert c["context_bytes"] > 0 and c["total_bytes"] > c["context_bytes"]
    assert g.meta["device"] == "cuda" and g.meta["fake"] is False


@needs_gpu
def test_gpu_prefill():
    g, f = measure_prefill(TINY, 2, 256, device="cuda"), measure_prefill(TINY, 2, 256)
    assert g["weights"] == f["weights"] and g["kv_cache"] == f["kv_cache"]
    assert g.meta["attention"] == "sdpa" and g.meta["math_path"] is False
    assert g.meta["attention_kernel"] in ("flash", "efficient", "cudnn")
    c = g.meta["cuda"]
    # the allocator rounds every block up to 512 bytes and sees the cuBLAS workspace too
    assert c["peak_above_start"] >= g.meta["prefill_peak"]
    assert c["max_reserved"] >= c["max_allocated"] >= g["weights"]


@needs_gpu
@pytest.mark.parametrize("precision", ["bf16", "mixed"])
def test_gpu_train(precision):
    g = measure_train(TINY, 2, 256, precision=precision, device="cuda")
    f = measure_train(TINY, 2, 256, precision=precision)
    assert g["weights"] == f["weights"] and g.meta["weights"] == f.meta["weights"]
    # AdamW's per-parameter `step` scalars live on the host on a GPU (foreach=False, not fused)
    assert g.meta["optimizer_host_bytes"] == f.meta["optimizer_scalar_step_bytes"]
    assert g.meta["optimizer_state"] == f.meta["optimizer_state"] - f.meta["optimizer_scalar_step_bytes"]
    assert g.meta["autocast_policy"] in (None, "cuda (native)")
    assert g.total == g.meta["train_peak"] == max(g.phases.values())
    c = g.meta["cuda"]
    assert c["max_allocated"] >= g.meta["train_peak"]
    assert c["non_pytorch_bytes"] > 0
    # the fake CPU run predicts the GPU's peak closely (kernels' small outputs differ)
    assert abs(g.total - f.total) <= 0.1 * f.total, (g.total, f.total)
    assert "loss" in g.meta and g.meta["loss"] == g.meta["loss"]   # finite, not NaN


@needs_gpu
def test_gpu_bench_writes_json(tmp_path):
    bench = _gpu_bench()
    assert bench.main(["--out", str(tmp_path), "--only", "qwen3-0.6b-weights"]) == 0
    files = list(tmp_path.rglob("*.json"))
    assert len(files) == 1
    rec = json.loads(files[0].read_text())
    assert rec["device"]["name"] and rec["torch"] and rec["transformers"]
    assert rec["gpu"]["components"] == rec["fake_cpu"]["components"]
    assert rec["gpu"]["meta"]["cuda"]["max_allocated"] > 0


def test_allocator_report_arithmetic(monkeypatch):
    """memlib.measure.gpu's bookkeeping, with torch.cuda's functions faked (runs anywhere)."""
    from memlib.measure import gpu
    state = {"reserved": 0, "allocated": 0}
    monkeypatch.setattr(torch.cuda, "init", lambda: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: state["reserved"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: state["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 7_000)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a: 8_192)
    total = 100_000
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (total - 500 - state["reserved"], total))
    before = gpu.cuda_baseline()
    assert before == {"context_bytes": 500, "total_bytes": total, "allocated_at_start": 0}
    state.update(allocated=3_000, reserved=4_096)
    start = gpu.cuda_reset_peak()
    rep = gpu.cuda_report(before, start)
    assert start == 3_000 and rep["peak_above_start"] == 4_000
    assert rep["used_end"] == 500 + 4_096 and rep["non_pytorch_bytes"] == 500
    assert rep["max_reserved"] == 8_192 and rep["context_bytes"] == 500


def test_device_resolution():
    from memlib.measure.gpu import resolve_device
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
