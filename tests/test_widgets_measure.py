"""Chapter 08's explorer driven headless, and its plot functions on an Agg canvas."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from memlib.measure.accuracy import bench_rows, committed_points  # noqa: E402
from memlib.widgets.measure import accuracy_figure, measure_explorer, plot_point, plot_signed_errors  # noqa: E402


@pytest.fixture(scope="module")
def ex():
    return measure_explorer("train", "Llama-3.1-8B")


def test_default_state_is_a_committed_point(ex):
    r = ex.result
    assert ex.error is None and r["kind"] == "train" and r["point"]["model"] == "Llama-3.1-8B"
    assert ex.values["point"] in committed_points("train")["Llama-3.1-8B"]
    m, p = r["total"]
    assert sum(v[0] for v in r["parts"].values()) == m and sum(v[1] for v in r["parts"].values()) == p
    assert "peak phase" in ex.text.value and ex.image.value


def test_kind_model_and_point_drive_the_result(ex):
    start = dict(ex.values)
    pts = committed_points("prefill")["gemma-2-9b"]
    label = list(pts)[-1]
    r = ex.set(kind="prefill", model="gemma-2-9b", point=label)
    assert ex.error is None and r["kind"] == "prefill" and r["label"] == f"gemma-2-9b {label}"
    assert list(ex.controls["point"].options) == list(pts)
    ex.set(model="gpt2")                       # the point list follows the model
    assert ex.values["point"] in committed_points("prefill")["gpt2"] and ex.result["point"]["model"] == "gpt2"
    ex.set(kind="train")
    assert ex.values["point"] in committed_points("train")["gpt2"] and ex.result["kind"] == "train"
    r = ex.set(**start)
    assert ex.error is None and r["point"]["model"] == "Llama-3.1-8B"


def test_bad_values_show_a_message():
    bad = measure_explorer("train", "Llama-3.1-405B")        # in the catalog, no bench point committed
    assert bad.result is None and bad.error.startswith("model") and "Llama-3.1-405B" in bad.error
    bad.set(model="Qwen3-0.6B")
    assert bad.error is None and bad.result["point"]["model"] == "Qwen3-0.6B"
    odd = measure_explorer("train", "Qwen3-0.6B", point="b=9 s=1")
    assert odd.result is None and odd.error.startswith("point") and "b=9 s=1" in odd.error


def test_plot_functions_draw():
    rows = bench_rows("prefill")
    fig = accuracy_figure(rows, "prefill")
    left, right = fig.axes
    assert len(left.lines) >= 2 and len(right.get_yticklabels()) == len({r["group"] for r in rows if r["error"] is not None})
    plt.close(fig)
    fig, (a, b) = plt.subplots(1, 2)
    plot_signed_errors([{**rows[0], "error": 0.5}, *rows[1:]], a)             # > 10 %: a symmetric-log axis
    assert a.get_xscale() == "symlog"
    train = committed_points("train")["Qwen3-0.6B"]
    from memlib.measure.accuracy import point_comparison
    plot_point(point_comparison(next(iter(train.values())), "train"), b)
    assert len(b.patches) >= 6
    plt.close(fig)
