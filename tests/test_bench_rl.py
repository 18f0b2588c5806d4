"""The RL bench (memlib.measure.rl, chapter 06) against hand arithmetic on tiny configs.

Every expected number below is computed by hand from the tiny config (shown in the
comments), never copied from a run.  Needs torch and transformers (skipped otherwise);
about a minute on 2 cores.
"""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from memlib.measure.rl import measure_rl, measure_rollout  # noqa: E402

pytestmark = pytest.mark.bench

# V=128, H=64, 4 heads of 16, 2 KV heads, 2 layers, MLP 96, untied head.
TINY = {"model_type": "llama", "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 96,
        "max_position_embeddings": 256, "tie_word_embeddings": False}
TINY_GPT2 = {"model_type": "gpt2", "vocab_size": 128, "n_embd": 64, "n_head": 4, "n_layer": 2,
             "n_positions": 64}
V, H, L = 128, 64, 2
# per layer: q 64x64 + k 64x32 + v 64x32 + o 64x64 + gate/up/down 3 x 64x96 + 2 norms of 64
LAYER = 4096 + 2048 + 2048 + 4096 + 3 * 6144 + 2 * 64                   # 30848
CAUSAL_LM = 128 * 64 + 128 * 64 + L * LAYER + 64                        # embed + head + layers + norm = 78144
SCALAR_HEAD = 128 * 64 + L * LAYER + 64 + 64                            # embed + layers + norm + score(64->1) = 70016
TENSORS_LM, TENSORS_SCALAR = 1 + 1 + L * 9 + 1, 1 + L * 9 + 1 + 1       # parameter tensors: 21 and 21
BF16, FP32 = 2, 4


def adamw_state(n_params, n_tensors, itemsize):
    """AdamW: exp_avg + exp_avg_sq in the parameters' dtype, plus one fp32 ``step`` scalar per tensor."""
    return 2 * n_params * itemsize + 4 * n_tensors


def every_component(r):
    keys = set(r.components) | set(r.meta["resident_components"])
    for c in r.meta["phase_components"].values():
        keys |= set(c)
    return keys


# -- the reference: present, absent, precomputed ---------------------------------------------------
def test_dpo_reference_adds_exactly_its_bf16_weights():
    live = measure_rl("dpo", TINY, 2, 32)
    pre = measure_rl("dpo", TINY, 2, 32, reference="precomputed")
    res_live, res_pre = live.meta["resident_components"], pre.meta["resident_components"]
    assert res_live["reference.weights"] == CAUSAL_LM * BF16 == 156288
    assert not any(k.startswith("reference.") for k in every_component(pre))
    assert pre.meta["reference"] == "precomputed" and "score" not in pre.phases
    # the only resident difference is the frozen copy (its weights and its rotary buffers)
    diff = sum(res_live.values()) - sum(res_pre.values())
    assert diff == res_live["reference.weights"] + res_live["reference.buffers"]
    assert res_live["reference.buffers"] == res_live["policy.buffers"]
    # the policy: bf16 weights and bf16 AdamW state
    assert res_live["policy.weights"] == CAUSAL_LM * BF16
    assert res_live["policy.optimizer"] == adamw_state(CAUSAL_LM, TENSORS_LM, BF16) == 312660
    # DPO keeps only the reference's summed log-probs: 2b = 4 fp32 numbers
    assert live.meta["phase_components"]["train.forward"]["reference.logps"] == 4 * 4


def test_grpo_beta_zero_has_no_reference():
    b, G, S = 2, 4, 32
    with_ref = measure_rl("grpo", TINY, b, S, group_size=G, beta=0.04, generate=False)
    no_ref = measure_rl("grpo", TINY, b, S, group_size=G, beta=0.0, generate=False)
    assert not any(k.startswith("reference.") for k in every_component(no_ref))
    assert "score" not in no_ref.phases and no_ref.meta["reference"] == "none"
    assert with_ref.meta["resident_components"]["reference.weights"] == CAUSAL_LM * BF16
    # GRPO's k3 KL needs the reference's per-token log-probs: B x S fp32, kept into the train phase
    assert with_ref.meta["phase_components"]["train.backward"]["reference.logps"] == b * G * S * FP32


# -- the log-prob tensors -------------------------------------------------------------------------
def test_full_logprob_tensor_is_4BSV_and_reference_forward_holds_10BSV():
    b, G, S = 2, 4, 32
    B = b * G
    r = measure_rl("grpo", TINY, b, S, group_size=G, generate=False)
    BSV = B * S * V
    # after the forward only the saved log-softmax output (fp32) is vocabulary-wide
    assert r.meta["end_of_forward_components"]["policy.logits"] == 4 * BSV == 131072
    assert {"component": "policy.logits", "op": "aten._log_softmax.default", "bytes": 4 * BSV} in \
        r.meta["largest_at_peak"]
    # the reference forward's peak: bf16 logits (2) + their fp32 copy (4) + log-softmax output (4)
    assert r.meta["phase_components"]["score"]["reference.logits"] == (2 + 4 + 4) * BSV


def test_logits_to_keep_shrinks_the_logprob_tensor():
    b, G, S, k = 2, 4, 32, 8
    r = measure_rl("grpo", TINY, b, S, group_size=G, generate=False, logits_to_keep=k)
    assert r.meta["end_of_forward_components"]["policy.logits"] == 4 * b * G * k * V


def test_selective_logprob_saves_bf16_rows():
    b, G, S = 2, 4, 32
    r = measure_rl("grpo", TINY, b, S, group_size=G, generate=False, logprob="selective")
    # TRL's row-by-row form on bf16 logits: every row's bf16 log-softmax is saved, no fp32 copy
    assert r.meta["end_of_forward_components"]["policy.logits"] == 2 * b * G * S * V


# -- PPO: four models -----------------------------------------------------------------------------
def test_ppo_roles():
    b, G, S = 1, 4, 32
    r = measure_rl("ppo", TINY, b, S, group_size=G, generate=False)
    res = r.meta["resident_components"]
    assert res["policy.weights"] == res["reference.weights"] == CAUSAL_LM * BF16
    assert res["reward.weights"] == res["critic.weights"] == SCALAR_HEAD * BF16 == 140032
    assert res["critic.optimizer"] == adamw_state(SCALAR_HEAD, TENSORS_SCALAR, BF16)
    assert res["policy.optimizer"] == adamw_state(CAUSAL_LM, TENSORS_LM, BF16)
    # kept into the train phase: old values, advantages, returns (3 x B x S fp32)
    assert r.meta["phase_components"]["train.forward"]["critic.values"] == 3 * b * G * S * FP32
    assert set(r.phases) == {"score", "train.forward", "train.backward", "train.step"}


# -- LoRA: the reference is the base model ----------------------------------------------------------
def test_lora_policy_has_no_reference_copy():
    rank = 8
    m = measure_rl("grpo", TINY, 2, 32, group_size=4, generate=False, lora_rank=rank)
    res = m.meta["resident_components"]
    # all-linear: per layer q (64+64), k (64+32), v (64+32), o (64+64), gate/up (64+96) x 2, down (96+64)
    per_layer = (128 + 96 + 96 + 128 + 160 + 160 + 160) * rank
    adapters = L * per_layer
    assert res["policy.adapters"] == adapters * FP32 == 59392          # PEFT's default: fp32 adapters
    assert res["policy.weights"] == CAUSAL_LM * BF16                  # the frozen base
    assert res["policy.optimizer"] == adamw_state(adapters, L * 7 * 2, FP32)
    assert not {"reference.weights", "reference.buffers"} & every_component(m)   # no second copy
    assert m.meta["phase_components"]["score"]["reference.logits"] == 10 * 8 * 32 * V  # but a forward
    assert m.meta["reference"] == "adapter-disabled policy"
    assert m.meta["phase_components"]["train.forward"]["reference.logps"] == 8 * 32 * FP32


# -- mixed precision -----------------------------------------------------------------------------
def test_mixed_policy_fp32_reference_bf16():
    m = measure_rl("dpo", TINY, 2, 32, precision="mixed")
    res = m.meta["resident_components"]
    assert res["policy.weights"] == CAUSAL_LM * FP32
    assert res["policy.optimizer"] == adamw_state(CAUSAL_LM, TENSORS_LM, FP32)
    assert res["reference.weights"] == CAUSAL_LM * BF16


# -- the rollout --------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg,kv_width", [(TINY, 2 * 16), (TINY_GPT2, 4 * 16)], ids=["llama", "gpt2"])
def test_rollout_kv_cache_and_fast_forward(cfg, kv_width):
    b, G, p, n = 2, 2, 2, 16
    full = measure_rollout(cfg, b, p, n, group_size=G, exact_steps=None)
    fast = measure_rollout(cfg, b, p, n, group_size=G, exact_steps=2)
    # K and V, 2 layers, 4 sequences, prompt + n - 1 positions, kv_heads x head_dim, bf16
    kv = 2 * L * b * G * (p + n - 1) * kv_width * BF16
    assert full.meta["kv_cache"] == fast.meta["kv_cache"] == kv
    assert full.components["rollout.kv_cache"] == kv          # the peak is at the last decode step
    assert fast.meta["decode_steps_counted"] == 4 and full.meta["decode_steps_counted"] == n - 1
    # skipping the middle decode steps changes no byte
    assert dict(full.components) == dict(fast.components)
    assert full.meta["end_live"] == fast.meta["end_live"]


def test_grpo_generate_phase_holds_the_cache():
    b, G, S, p = 2, 4, 32, 8
    r = measure_rl("grpo", TINY, b, S, group_size=G, prompt_len=p)
    assert r.meta["kv_cache"] == 2 * L * b * G * (S - 1) * (2 * 16) * BF16
    assert r.phases["generate"] >= sum(r.meta["resident_components"].values()) + r.meta["kv_cache"]


# -- consistency with other instruments -------------------------------------------------------------
def test_fake_equals_real():
    kw = dict(group_size=2, generate=False)
    fake = measure_rl("ppo", TINY, 1, 16, **kw)
    real = measure_rl("ppo", TINY, 1, 16, fake=False, **kw)
    assert fake.total == real.total and fake.phases == real.phases
    assert dict(fake.components) == dict(real.components)


def test_sft_equals_measure_train():
    from memlib.measure import measure_train
    r = measure_rl("sft", TINY, 2, 16)
    t = measure_train(TINY, 2, 16, precision="bf16", optimizer="adamw", optimizer_impl="loop")   # RL: loop
    assert r.total == t.meta["train_peak"]


# -- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,kw,field", [
    (("rlhf", TINY, 1, 16), {}, "recipe"),
    (("dpo", TINY, 1, 16), {"group_size": 4}, "group_size"),
    (("grpo", TINY, 1, 16), {"reference": "precomputed"}, "reference"),
    (("grpo", TINY, 1, 16), {"prompt_len": 16}, "prompt_len"),
    (("grpo", TINY, 1, 16), {"logprob": "chunky"}, "logprob"),
    (("grpo", TINY, 0, 16), {}, "batch_size"),
    (("grpo", TINY, 1, 16), {"beta": -1}, "beta"),
    (("dpo", TINY, 1, 16), {"generate": True}, "generate"),
])
def test_bad_input_names_the_field(args, kw, field):
    with pytest.raises(ValueError, match=field):
        measure_rl(*args, **kw)
