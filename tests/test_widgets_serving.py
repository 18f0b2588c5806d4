"""Chapter 07's explorer driven headless, and its plot functions on an Agg canvas."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from memlib.measure.vllm_logs import load_vllm_logs, predict_vllm_log  # noqa: E402
from memlib.widgets.serving import (budget_parts, plot_gpu_budgets, plot_log_errors,  # noqa: E402
                                    plot_logged_vs_predicted, which_gpu_explorer)

GIB = 2**30
# Llama-3.1-70B config.json: hidden 8192, 80 layers, 64 heads, 8 KV heads of 128, MLP 28672, vocab 128256
PER_LAYER_TP4 = 8192 * 2048 + 2 * 8192 * 256 + 2048 * 8192 + 3 * 8192 * 7168     # q, k, v, o, gate/up/down
WEIGHTS_TP4 = 2 * (80 * PER_LAYER_TP4 + 2 * (128256 // 4) * 8192 + 80 * 2 * 8192 + 8192 + 131072 * 128)


@pytest.fixture(scope="module")
def ex():
    return which_gpu_explorer()


def test_default_state_answers_for_every_card(ex):
    r = ex.result
    assert ex.error is None and len(r) == 15
    h100 = r["H100-80GB"]
    assert h100.meta["gpus"] == 4 and h100.meta["max_concurrency"] >= 16
    assert h100["weights"] == WEIGHTS_TP4                       # by hand, per GPU at tp=4
    assert r["RTX-4090"] is None                                # 8 x 23.6 GiB cannot hold 16 x 8K requests
    assert "does not fit" in ex.text.value and "H100-80GB" in ex.text.value


def test_quantized_weights_and_fp8_kv_need_fewer_gpus(ex):
    base = {g: b.meta["gpus"] for g, b in ex.result.items() if b is not None}
    r = ex.set(quantization="fp8", kv_dtype="fp8")
    assert ex.error is None
    fewer = {g: b.meta["gpus"] for g, b in r.items() if b is not None}
    assert all(fewer[g] <= n for g, n in base.items()) and fewer["H100-80GB"] < base["H100-80GB"]
    ex.set(quantization=None, kv_dtype="auto")


def test_bad_values_show_a_message():
    bad = which_gpu_explorer()                                  # never displayed
    bad.set(max_model_len=10**6)
    assert bad.result is None and "context" in bad.error and "max_model_len" in bad.error
    bad.set(max_model_len=8192, concurrency=0)
    assert bad.result is None and "concurrency" in bad.error
    bad.set(concurrency=4)
    assert bad.error is None and bad.result["H100-80GB"] is not None


def test_budget_parts_add_up(ex):
    b = ex.result["H100-80GB"]
    parts = budget_parts(b)
    inside = sum(v for k, v in parts.items() if "outside" not in k)
    assert inside == b.total == b.meta["budget"]
    assert parts["kv_cache: your requests"] == 16 * 8192 * 80 * 2 * 2 * 128 * 2     # 16 requests, 2 KV heads/GPU


def test_plot_functions_draw():
    from memlib.vllm import which_gpus
    fig, (a, b, c) = plt.subplots(1, 3)
    plot_gpu_budgets(which_gpus("Qwen3-8B", 4096, 4, gpus=["L4", "H100-80GB"]), a)
    preds = [(predict_vllm_log(r), r["fully_known"]) for r in load_vllm_logs()]
    plot_logged_vs_predicted(preds, b)
    plot_log_errors(preds, c)
    bars = sum(len(col.get_paths()) for col in a.collections if hasattr(col, "get_facecolor") and col.get_paths())
    assert bars > 4 and len(a.get_legend().get_texts()) > 4                 # H100's segments, one entry per part
    assert len(b.lines) >= 3 and len(c.get_yticklabels()) >= 14
    plt.close(fig)
