"""memlib.rl (chapter 06) by hand: roles, recipes, phases, colocation.

Expected values are hand arithmetic from the config (shown), or numbers the RL bench
measured (data/bench/rl.jsonl, named as such).
"""
import pytest

import memlib
from memlib.rl import PHASES, RECIPES, colocated_engine, rl_memory, rollout_memory, vocab_bytes

GiB = 2 ** 30
# Qwen3-0.6B's config.json: vocab 151936, hidden 1024, 28 layers, 16 query heads and 8 KV heads of 128,
# MLP 3072, tied embeddings, q/k norms.  Parameters by hand:
V, H, L, Q, KV, I = 151936, 1024, 28, 16 * 128, 8 * 128, 3072
PER_LAYER = H * Q + 2 * H * KV + Q * H + 3 * H * I + 2 * H + 2 * 128
P_QWEN = V * H + L * PER_LAYER + H                 # embedding (tied head) + layers + final norm


def test_hand_parameter_count_is_the_catalogs():
    assert P_QWEN == 596_049_920 == memlib.total_params("Qwen3-0.6B")


def test_peak_is_the_largest_phase_and_roles_add_up():
    r = rl_memory("Qwen3-0.6B", "grpo", 1, 512, group_size=4, beta=0.04)
    assert list(r.phases) == list(PHASES)
    assert r.total == max(r.phases.values()) == r.phases[r.peak_phase]
    for ph, total in r.phases.items():
        assert sum(c.at(ph) for c in r.children) == total
    assert [c.label for c in r.children] == ["policy", "reference", "rollout"]


def test_the_reference_adds_exactly_its_bf16_weights():
    live = rl_memory("Qwen3-0.6B", "dpo", 2, 512)              # 2 pairs -> B = 4 sequences
    pre = rl_memory("Qwen3-0.6B", "dpo", 2, 512, reference="precomputed")
    ref = {c.label: c for c in live.children}["reference"]
    assert ref["reference.weights"] == 2 * P_QWEN
    for ph in ("train.forward", "train.backward", "train.step"):
        # the frozen copy plus the reference's summed log-probs the loss reads (4 bytes x B)
        assert live.phases[ph] - pre.phases[ph] == 2 * P_QWEN + 4 * 4
    assert "score" in live.phases and "score" not in pre.phases
    assert [c.label for c in pre.children] == ["policy"]


def test_score_phase_is_ten_bsv_above_resident():
    # B = 1 prompt x G = 4, S = 512: the reference's bf16 logits, their fp32 copy and the fp32 log-softmax
    r = rl_memory("Qwen3-0.6B", "grpo", 1, 512, group_size=4, beta=0.04)
    ref = {c.label: c for c in r.children}["reference"]
    assert ref.components_at("score")["reference.logits"] == 10 * 4 * 512 * V == 3_111_649_280
    # the bench measured the same reference.logits (data/bench/rl.jsonl, Qwen3-0.6B grpo beta=0.04 S=512 B=4)
    resident = 2 * P_QWEN + 2 * 2 * P_QWEN + 2 * P_QWEN   # policy bf16 + AdamW bf16 state + reference
    assert r.phases["score"] == resident + 10 * 4 * 512 * V


def test_beta_zero_grpo_has_no_reference_and_no_score_phase():
    r = rl_memory("Qwen3-0.6B", "grpo", 1, 512, group_size=4, beta=0.0)
    assert [c.label for c in r.children] == ["policy", "rollout"]
    assert "score" not in r.phases
    with_ref = rl_memory("Qwen3-0.6B", "grpo", 1, 512, group_size=4, beta=0.04)
    assert with_ref.phases["train.backward"] - r.phases["train.backward"] == 2 * P_QWEN + 4 * 4 * 512


def test_lora_reference_costs_no_second_copy():
    r = rl_memory("Qwen3-0.6B", "grpo", 1, 512, group_size=4, beta=0.04, lora_rank=16)
    roles = {c.label: c for c in r.children}
    assert "reference.weights" not in roles["reference"].components_at("score")
    assert roles["policy"].components_at("score")["policy.weights"] == 2 * P_QWEN       # the bf16 base once
    # the adapters: r (in + out) per targeted projection, fp32 (PEFT's default)
    adapters = 16 * L * ((H + Q) + 2 * (H + KV) + (Q + H) + 2 * (H + I) + (I + H))
    assert roles["policy"].components_at("score")["policy.adapters"] == 4 * adapters
    assert r.meta["reference"] == "the policy with its adapters disabled"


def test_the_group_multiplies_the_rollout_kv_cache():
    # Llama-3.1-8B: 32 layers, 8 KV heads of 128; bf16; the cache ends with S - 1 positions
    kv = {G: rl_memory("Llama-3.1-8B", "grpo", 1, 2048, group_size=G).meta["kv_cache"] for G in (4, 16)}
    assert kv[16] == 2 * 32 * 16 * 2047 * 8 * 128 * 2 == 4_292_870_144      # the bench measured 4292870144
    assert kv[16] == 4 * kv[4]
    # and the log-prob tensors: N = B x K x V grows with G too
    n4 = rl_memory("Llama-3.1-8B", "grpo", 1, 2048, group_size=4).meta["vocab_bytes"]["saved"]
    n16 = rl_memory("Llama-3.1-8B", "grpo", 1, 2048, group_size=16).meta["vocab_bytes"]["saved"]
    assert n16 == 4 * n4 == 4 * 16 * 2048 * 128256


def test_ppo_holds_four_models_grpo_no_critic():
    ppo = rl_memory("Llama-3.1-8B", "ppo", 1, 512, group_size=4)
    grpo = rl_memory("Llama-3.1-8B", "grpo", 1, 512, group_size=4)
    assert [c.label for c in ppo.children] == ["policy", "reference", "reward", "critic", "rollout"]
    assert "critic" not in [c.label for c in grpo.children]
    # a scalar-head model: the causal LM without lm_head (128256 x 4096) plus the score head (4096)
    P = memlib.total_params("Llama-3.1-8B")
    value = P - 128256 * 4096 + 4096
    roles = {c.label: c for c in ppo.children}
    assert roles["reward"].components_at("generate")["reward.weights"] == 2 * value
    assert roles["critic"].components_at("generate")["critic.weights"] == 2 * value
    assert roles["critic"].components_at("generate")["critic.optimizer"] == 2 * 2 * value   # AdamW, bf16 state
    assert ppo.total > grpo.total


def test_selective_log_softmax_shrinks_the_vocabulary_tensors():
    n = 16 * 2048 * 151936
    full, sel = vocab_bytes("full", 16, 2048, 151936), vocab_bytes("selective", 16, 2048, 151936)
    assert (full.forward + full.saved, full.backward + full.backward_saved, full.no_grad) == (10 * n, 12 * n, 10 * n)
    assert (sel.forward + sel.saved, sel.backward + sel.backward_saved) == (4 * n, 4 * n)
    assert sel.no_grad == 2 * n + 2 * 2048 * 151936           # the logits and one row's log-softmax
    a = rl_memory("Qwen3-0.6B", "grpo", 1, 2048, group_size=16)
    b = rl_memory("Qwen3-0.6B", "grpo", 1, 2048, group_size=16, logprob="selective")
    assert a.phases["train.backward"] - b.phases["train.backward"] == 12 * n - 4 * n


def test_trl_dpo_order_holds_fourteen_bsv_in_the_forward():
    first = rl_memory("Qwen3-0.6B", "dpo", 2, 512)
    after = rl_memory("Qwen3-0.6B", "dpo", 2, 512, ref_order="after_policy")
    n = 4 * 512 * V
    assert "score" not in after.phases
    # the policy's saved 4N log-softmax plus the reference's 10N at once, instead of the policy's 10N
    # (and the reference's summed log-probs, 4 bytes x 4 sequences, do not exist yet)
    assert after.phases["train.forward"] - first.phases["train.forward"] == 4 * n - 4 * 4
    assert after.peak_phase == "train.forward"


def test_mixed_rollout_caches_bf16_weights_and_fp32_kv():
    bf16 = rl_memory("Llama-3.1-8B", "grpo", 1, 2048, group_size=16)
    mixed = rl_memory("Llama-3.1-8B", "grpo", 1, 2048, group_size=16, precision="mixed")
    assert mixed.meta["kv_cache"] == 2 * bf16.meta["kv_cache"]            # RoPE promotes K (and V) to fp32
    roll = {c.label: c for c in mixed.children}["rollout"].components_at("generate")
    # a bf16 copy of every matmul weight: 32 layers x (q, o 4096^2; k, v 4096 x 1024; gate, up, down 4096 x 14336)
    # plus lm_head 128256 x 4096
    matmul = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336) + 128256 * 4096
    assert roll["rollout.autocast_cache"] == 2 * matmul == 15_009_316_864


def test_rollout_alone_by_hand():
    # 16 sequences, prompt 512 + 1536 new: weights + cache (2047 positions) + one layer's K at 2046
    r = rollout_memory("Llama-3.1-8B", 1, 512, 1536, group_size=16)
    w = 2 * memlib.total_params("Llama-3.1-8B")
    kv = 2 * 32 * 16 * 2047 * 8 * 128 * 2
    assert r.total == w + kv + 16 * 2046 * 8 * 128 * 2
    assert abs(r.total - 20_421_288_840) / 20_421_288_840 < 0.001     # the bench's rollout, measured


def test_colocated_engine_sleep_modes():
    kw = dict(group_size=8, rollout="vllm", gpu="H100-80GB", gpu_memory_utilization=0.3)
    runs = {s: rl_memory("Qwen3-8B", "grpo", 1, 2048, sleep=s, **kw) for s in ("none", "kv", "all")}
    eng = colocated_engine(memlib.load_spec("Qwen3-8B"), 8, 2048, "H100-80GB", 0.3)
    b = eng["budget"]
    idle = {s: {c.label: c for c in r.children}["rollout"].at("train.backward") for s, r in runs.items()}
    graphs = b.components.get("cuda_graphs", 0) + b.meta["outside_budget"].get("cuda_graphs", 0)
    assert idle["all"] == b["non_torch"] + graphs
    assert idle["kv"] - idle["all"] == b["weights"] == memlib.weights_per_gpu("Qwen3-8B").total   # chapter 07
    assert idle["none"] - idle["kv"] == b["kv_cache"]
    gen = {c.label: c for c in runs["none"].children}["rollout"].at("generate")
    assert gen == b["weights"] + b["kv_cache"] + b["activation_peak"] + b["non_torch"] + graphs
    assert runs["all"].total <= runs["kv"].total <= runs["none"].total
    shared = colocated_engine(memlib.load_spec("Qwen3-8B"), 8, 2048, "H100-80GB", 0.3, weights="shared")
    page = shared["budget"].meta["page_bytes_per_token"] * 16
    assert 0 <= shared["budget"]["kv_cache"] - b["kv_cache"] - b["weights"] < page    # the weights' room, in blocks


def test_separate_rollout_leaves_only_the_trainer_in_generate():
    r = rl_memory("Qwen3-0.6B", "grpo", 1, 512, group_size=4, beta=0.0, rollout="separate")
    assert [c.label for c in r.children] == ["policy"]
    assert r.phases["generate"] == 2 * P_QWEN + 4 * P_QWEN                 # weights + AdamW state, waiting


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_runs_and_sft_equals_the_training_step(recipe):
    r = rl_memory("gpt2", recipe, 2, 256, beta=0.1 if recipe != "sft" else None)
    assert r.total > 0 and r.peak_phase in r.phases
    if recipe == "sft":
        t = memlib.train_memory("gpt2", 2, 256)
        assert {f"train.{k}": v for k, v in t.phases.items()} == r.phases


@pytest.mark.parametrize("kwargs,field", [
    (dict(recipe="rlhf"), "recipe"),
    (dict(recipe="dpo", group_size=4), "group_size"),
    (dict(recipe="rloo", group_size=1), "group_size"),
    (dict(recipe="grpo", beta=-0.1), "beta"),
    (dict(recipe="grpo", beta="x"), "beta"),
    (dict(recipe="grpo", precision="fp8"), "precision"),
    (dict(recipe="grpo", lora_rank=16, precision="mixed"), "precision"),
    (dict(recipe="grpo", lora_rank=0), "lora_rank"),
    (dict(recipe="grpo", reference="precomputed"), "reference"),
    (dict(recipe="grpo", ref_order="after_policy"), "ref_order"),
    (dict(recipe="grpo", critic_model="gpt2"), "critic_model"),
    (dict(recipe="grpo", critic_shares_base=True), "critic_shares_base"),
    (dict(recipe="dpo", rollout="vllm"), "rollout"),
    (dict(recipe="grpo", rollout="sglang"), "rollout"),
    (dict(recipe="grpo", rollout="vllm", sleep="deep"), "sleep"),
    (dict(recipe="grpo", rollout="vllm", gpu_memory_utilization=1.5), "gpu_memory_utilization"),
    (dict(recipe="grpo", rollout="vllm", gpu_memory_utilization=0.01), "gpu_memory_utilization"),
    (dict(recipe="grpo", prompt_len=256), "prompt_len"),
    (dict(recipe="grpo", logits_to_keep=1000), "logits_to_keep"),
    (dict(recipe="grpo", logprob="chunked"), "logprob"),
])
def test_bad_knobs_name_the_field(kwargs, field):
    kw = dict(kwargs)
    recipe = kw.pop("recipe")
    with pytest.raises(ValueError, match=f"^{field}"):
        rl_memory("Qwen3-0.6B", recipe, 1, 256, **kw)
