"""Chapter 06's explorer driven headless, and its plot functions; numbers by hand from the configs."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import memlib  # noqa: E402
from memlib.rl import rl_memory  # noqa: E402
from memlib.widgets.rl import explore_rl, plot_phases, plot_recipes, rl_explorer  # noqa: E402

P_QWEN06 = 596_049_920          # Qwen3-0.6B, counted by hand in tests/test_rl.py


def test_explorer_default_fits_and_shows_every_phase():
    ex = rl_explorer()
    assert ex.error is None
    r = ex.result
    assert list(r.phases) == ["generate", "score", "train.forward", "train.backward", "train.step"]
    assert r.total <= r.meta["gpu_memory"]                       # the state it is displayed in fits
    assert "fits on one H100-80GB" in ex.text.value
    assert [c.label for c in r.children] == ["policy", "reference", "rollout"]
    # LoRA: the reference is the policy's own base (no weights of its own)
    ref = {c.label: c for c in r.children}["reference"]
    assert "reference.weights" not in ref.components_at("score")


def test_explorer_follows_its_controls():
    ex = rl_explorer()
    r = ex.set(model="Qwen3-0.6B", lora_rank=0, recompute="none", rollout="hf", beta=0.0, seq_len=512,
               group_size=4)
    assert [c.label for c in r.children] == ["policy", "rollout"]        # beta = 0: no reference
    assert r.phases["train.step"] >= 2 * P_QWEN06 + 2 * P_QWEN06 + 4 * P_QWEN06   # weights, grads, AdamW bf16
    assert r.total == rl_memory("Qwen3-0.6B", "grpo", 1, 512, group_size=4, beta=0.0).total
    r = ex.set(recipe="ppo")
    assert "critic" in [c.label for c in r.children] and "reward" in [c.label for c in r.children]
    r = ex.set(recipe="dpo")                           # no groups, no rollout: those controls are ignored
    assert r.meta["sequences"] == 2 and r.meta["rollout"] is None


def test_sleep_modes_free_the_engine_between_generations():
    ex = rl_explorer()
    r = {s: ex.set(sleep=s) for s in ("none", "kv", "all")}
    idle = {s: {c.label: c for c in v.children}["rollout"].at("train.step") for s, v in r.items()}
    assert idle["none"] > idle["kv"] > idle["all"] > 0
    assert idle["kv"] - idle["all"] == memlib.weights_per_gpu("Qwen3-8B").total   # its own weight copy


def test_bad_values_show_a_message_not_a_traceback():
    ex = rl_explorer()
    assert ex.set(batch_size=0) is None and "batch_size" in ex.error
    assert ex.set(batch_size=1, precision="mixed") is None and "precision" in ex.error   # with LoRA
    ex.set(precision="bf16", gpu_memory_utilization=0.01)
    assert ex.result is None and "gpu_memory_utilization" in ex.error
    ex.set(gpu_memory_utilization=0.3, seq_len=10**6)
    assert ex.result is None and "seq_len" in ex.error
    assert ex.set(seq_len=2048) is not None and ex.error is None


def test_plot_functions_draw():
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    r = explore_rl("Qwen3-0.6B", "grpo", 1, 512, group_size=4)
    plot_phases(r, a)
    assert len(a.patches) >= 5 and a.get_legend() is not None
    results = {"SFT": rl_memory("Qwen3-0.6B", "sft", 4, 512), "PPO": rl_memory("Qwen3-0.6B", "ppo", 1, 512,
                                                                                group_size=4)}
    plot_recipes(results, b, gpu_memory=memlib.get_gpu("H100-80GB").usable_bytes, gpu_name="H100-80GB")
    assert [t.get_text() for t in b.get_xticklabels()] == ["SFT", "PPO"]
    plt.close(fig)


def test_every_failure_shows_one_line_and_nothing_stale():
    ex = rl_explorer()                                  # never displayed
    good = dict(ex.values)
    for bad in (dict(batch_size=0), dict(seq_len=0), dict(group_size=-1), dict(beta=-0.5),
                dict(gpu_memory_utilization=1.5), dict(model="gpt2", seq_len=4096)):
        assert ex.set(**bad) is None, bad
        assert ex.result is None and ex.error and "\n" not in ex.error, (bad, ex.error)
        assert ex.image.layout.display == "none" and ex.text.value == "" and "⚠" in ex.message.value
        assert ex.set(**good) is not None and ex.error is None
