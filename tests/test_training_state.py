"""Training state, the step timeline and LoRA fits (chapter 04), against hand arithmetic on configs.

The tiny config (``tiny_llama`` in conftest) is small enough to count by hand:
V=128, H=64, 4 heads of 16, 2 KV heads, 2 layers, I=96, untied embeddings.
"""
import pytest

import memlib
from memlib.hardware import GPUS
from memlib.lora import lora_fit
from memlib.training import Stage, state_bytes, train_memory

# -- the tiny model, by hand ------------------------------------------------------------------
from tiny_params_by_hand import H, I, L, MATRICES, PER_LAYER, P_TINY, RTX4090, V, VECTORS


def test_tiny_count_by_hand(tiny_llama):
    assert PER_LAYER == 30_720 and VECTORS == 320
    assert P_TINY == 78_144 == memlib.total_params(tiny_llama)
    assert RTX4090 == 25_383_256_719                            # 23.64 x 2**30, rounded


# -- state bytes per recipe and optimizer -----------------------------------------------------
def test_state_bytes_by_hand(tiny_llama):
    bf16 = state_bytes(tiny_llama, "bf16", "adamw")
    assert bf16["weights"] == 2 * P_TINY == 156_288
    assert bf16["gradients"] == 2 * P_TINY
    assert bf16["optimizer"] == 2 * 2 * P_TINY == 312_576           # exp_avg + exp_avg_sq in bf16
    assert "autocast_cache" not in bf16 and bf16.total == 8 * P_TINY
    mixed = state_bytes(tiny_llama, "mixed", "adamw")
    assert mixed["weights"] + mixed["gradients"] + mixed["optimizer"] == 16 * P_TINY
    # autocast caches a bf16 copy of every Linear weight and lm_head (not the embedding, not norms)
    assert mixed["autocast_cache"] == 2 * (L * PER_LAYER + V * H) == 139_264
    assert state_bytes(tiny_llama, "mixed", "sgd")["optimizer"] == 0
    assert state_bytes(tiny_llama, "mixed", "sgd_momentum")["optimizer"] == 4 * P_TINY
    assert state_bytes(tiny_llama, "mixed", "lion")["optimizer"] == 4 * P_TINY
    # Adafactor: a row and a column statistic per matrix, a full second moment per vector
    rows_cols = L * sum(r + c for r, c in MATRICES.values()) + 2 * (V + H)
    assert rows_cols == 2 * 928 + 384
    assert state_bytes(tiny_llama, "mixed", "adafactor")["optimizer"] == 4 * (rows_cols + VECTORS) == 10_240
    # 8-bit AdamW: two uint8 states per matrix value + one fp32 absmax per 256 values; vectors fp32
    matrix_params = L * PER_LAYER + 2 * V * H                       # 77_824 = 304 blocks of 256
    assert state_bytes(tiny_llama, "bf16", "adamw_8bit")["optimizer"] == \
        2 * (matrix_params + 4 * matrix_params // 256) + 2 * 4 * VECTORS == 160_640


def test_state_bytes_per_param_llama():
    P = 8_030_261_248                                               # Llama-3.1-8B, chapter 01
    b = state_bytes("Llama-3.1-8B", "mixed", "adamw")
    assert (b["weights"] + b["gradients"] + b["optimizer"]) == 16 * P
    assert state_bytes("Llama-3.1-8B", "bf16", "adamw").total == 8 * P
    with pytest.raises(ValueError, match="precision"):
        state_bytes("Llama-3.1-8B", "fp8")


def test_mixed_precision_recipes_by_hand(tiny_llama):
    # weights + gradients + fp32 master + AdamW's two fp32 moments, per parameter:
    # PyTorch AMP 4 + 4 + 0 + 8, the ZeRO paper (DeepSpeed) 2 + 2 + 4 + 8, Megatron-LM's bf16
    # (fp32 main gradients) 2 + 4 + 4 + 8 = 18, FSDP2 (fp32 shards are the master) 4 + 4 + 0 + 8
    by_hand = {"amp": (4, 4, 0, 8), "deepspeed": (2, 2, 4, 8), "megatron": (2, 4, 4, 8), "fsdp2": (4, 4, 0, 8)}
    for recipe, (w, g, master, opt) in by_hand.items():
        b = state_bytes(tiny_llama, "mixed", "adamw", recipe=recipe)
        assert b["weights"] == w * P_TINY and b["gradients"] == g * P_TINY
        assert b.get("master_weights", 0) == master * P_TINY
        assert b["optimizer"] == opt * P_TINY
        assert b.meta["recipe"] == recipe
    assert state_bytes(tiny_llama, "mixed", recipe="megatron").total == 18 * P_TINY == 1_406_592
    assert state_bytes(tiny_llama, "mixed", recipe="deepspeed").total == 16 * P_TINY
    # only AMP casts per op and caches the bf16 copies: 2 bytes per Linear weight and lm_head
    assert state_bytes(tiny_llama, "mixed", recipe="amp")["autocast_cache"] == 2 * (L * PER_LAYER + V * H)
    assert "autocast_cache" not in state_bytes(tiny_llama, "mixed", recipe="fsdp2")
    # the default mixed recipe is AMP; the master copy also serves SGD with momentum
    assert state_bytes(tiny_llama, "mixed").components == state_bytes(tiny_llama, "mixed", recipe="amp").components
    assert state_bytes(tiny_llama, "mixed", "sgd_momentum", recipe="megatron").total == (2 + 4 + 4 + 4) * P_TINY
    P = 8_030_261_248                                               # Llama-3.1-8B, chapter 01
    assert state_bytes("Llama-3.1-8B", "mixed", recipe="megatron").total == 18 * P == 144_544_702_464
    with pytest.raises(ValueError, match="recipe"):
        state_bytes(tiny_llama, "bf16", recipe="megatron")
    with pytest.raises(ValueError, match="recipe"):
        state_bytes(tiny_llama, "mixed", recipe="apex")


# -- the step, by hand ---------------------------------------------------------------------------
def test_step_tiny_by_hand(tiny_llama):
    r = train_memory(tiny_llama, 1, 16, optimizer_impl="loop")
    assert r["weights"] == 2 * P_TINY
    assert r.meta["optimizer_state"] == 2 * 2 * P_TINY
    # the step: weights + gradients + state + the loop's temporaries: at up_proj, its sqrt and
    # division and gate_proj's denom: 3 x H x I = 18,432 values, more than 2 x V x H = 16,384
    assert r.phases["step"] == 2 * P_TINY + 2 * P_TINY + 4 * P_TINY + 3 * (H * I) * 2 == 662_016
    r = train_memory(tiny_llama, 1, 16, precision="mixed", optimizer_impl="loop")
    assert r["weights"] == 4 * P_TINY and r.meta["optimizer_state"] == 8 * P_TINY
    assert r.meta["autocast_cache"] == 2 * (L * PER_LAYER + V * H)
    assert r.phases["step"] == 4 * P_TINY + 4 * P_TINY + 8 * P_TINY + 3 * (H * I) * 4
    r = train_memory(tiny_llama, 1, 16, precision="mixed", optimizer="sgd_momentum")
    assert r.meta["optimizer_state"] == 4 * P_TINY
    assert r.phases["step"] == (4 + 4 + 4) * P_TINY                 # SGD updates in place


def test_optimizer_state_does_not_grow_with_batch(tiny_llama):
    one, eight = (train_memory(tiny_llama, b, 64) for b in (1, 8))
    assert one.meta["optimizer_state"] == eight.meta["optimizer_state"] == 4 * P_TINY
    assert eight.meta["activations_saved"] > 7 * one.meta["activations_saved"]


def test_grad_accumulation_keeps_gradients_through_the_forward(tiny_llama):
    plain, accum = (train_memory(tiny_llama, 2, 32, grad_accum=g) for g in (1, 4))
    # the later micro-batches run their forward with every bf16 gradient alive
    assert accum.phases["forward"] - plain.phases["forward"] == 2 * P_TINY
    assert accum.phases["step"] == plain.phases["step"]


def test_timeline_marks_add_up_to_the_result():
    for args in [("Llama-3.1-8B", 1, 2048, "bf16"), ("Qwen3-0.6B", 2, 1024, "mixed", "adamw", "full"),
                 ("DeepSeek-V2-Lite", 1, 512, "mixed", "adafactor", "selective", "eager", 2)]:
        kw = dict(zip(["precision", "optimizer", "recompute", "attention", "grad_accum"], args[3:]))
        r = train_memory(*args[:3], **kw)
        marks = r.meta["marks"]
        assert [mk.total for mk in marks] == [v for _, _, v in r.meta["timeline"]]
        best = max(marks, key=lambda mk: mk.total)
        assert {k: v for k, v in best.components.items() if v} == {k: v for k, v in r.components.items() if v}
        # each phase's peak is a mark's total, and what is live then is recorded
        for ph, v in r.phases.items():
            assert v == max(mk.total for mk in marks if mk.phase == ph)
            assert sum(r.phase_components[ph].values()) == v


def test_gradients_at_the_step_are_the_parameters():
    # every parameter has a gradient when the optimizer runs: bf16, 2 bytes each
    for model in ("DeepSeek-V2-Lite", "Qwen3-0.6B", "gpt2"):
        r = train_memory(model, 1, 128)
        step = next(mk for mk in r.meta["marks"] if mk.phase == "step")
        assert step.gradients == 2 * memlib.total_params(model)


def test_peak_moves_from_step_to_backward():
    r = train_memory("Llama-3.1-8B", 1, 2048, optimizer_impl="loop")
    P = 8_030_261_248
    assert r.peak_phase == "step" and r.peak_at == "optimizer"
    # + the loop's temporaries: lm_head's sqrt and division, and the final norm's denom (4096)
    assert r.total == 2 * P + 2 * P + 4 * P + (4096 + 2 * 128_256 * 4096) * 2 == 66_343_444_480
    r = train_memory("Llama-3.1-8B", 1, 4096, optimizer_impl="loop")
    assert r.peak_phase == "backward" and r.get("gradients") == 0


def test_optimizer_implementations_by_hand(tiny_llama):
    # the step phase: weights + gradients + AdamW state (bf16: 2 + 2 + 4 bytes/param) + temporaries
    step = {impl: train_memory(tiny_llama, 1, 16, optimizer_impl=impl).phases["step"]
            for impl in ("loop", "foreach", "fused")}
    states = 8 * P_TINY
    assert step["fused"] == states                                  # one kernel, in place
    assert step["foreach"] == states + 2 * P_TINY                  # _foreach_sqrt: a whole second moment
    # loop: the largest neighbours, embedding first (nothing before it) and lm_head after the final norm
    assert step["loop"] == states + 2 * max(2 * V * H, H + 2 * V * H, I * H + 2 * I * H)
    # SGD with momentum updates in place, whatever the implementation
    sgd = {train_memory(tiny_llama, 1, 16, optimizer="sgd_momentum", optimizer_impl=i).phases["step"]
           for i in ("loop", "foreach", "fused")}
    assert sgd == {2 * P_TINY + 2 * P_TINY + 2 * P_TINY}
    with pytest.raises(ValueError, match="optimizer_impl"):
        train_memory(tiny_llama, 1, 16, optimizer_impl="triton")


def test_loop_temporaries_take_three_mlp_matrices_when_they_are_the_largest_neighbours():
    # Llama-2-70b: up (8192 x 28672) after gate: 3 x 234,881,024 > 2 x the embedding (32000 x 8192)
    r = train_memory("Llama-2-70b", 1, 512, optimizer_impl="loop")
    P = memlib.total_params("Llama-2-70b")
    assert r.phases["step"] == 8 * P + 2 * 3 * 8192 * 28672 > 8 * P + 2 * 2 * 32000 * 8192


def test_mixed_precision_frees_the_autocast_copies_in_the_backward(tiny_llama):
    """Autocast wraps the forward only (PyTorch's AMP recipe): its cache of bf16 weight copies
    lives until the forward ends; the copies autograd saved die with each layer's backward."""
    r = train_memory(tiny_llama, 1, 16, precision="mixed", optimizer_impl="fused")
    marks = {(mk.phase, mk.label): mk.autocast_cache for mk in r.meta["marks"]}
    layer = 2 * PER_LAYER                                          # bf16 copies of one layer's matrices
    mlp = 2 * (3 * H * I)
    head = 2 * V * H
    assert marks[("forward", "layer 1")] == 2 * layer               # both layers cast (the run's end)
    assert marks[("forward", "end")] == 2 * layer + head            # + lm_head, at the loss
    assert marks[("backward", "lm_head")] == 2 * layer + head
    assert marks[("backward", "layer 1 mlp")] == 2 * layer          # lm_head's copy is gone
    assert marks[("backward", "layer 1 attention")] == 2 * layer - mlp
    assert marks[("backward", "layer 0 mlp")] == layer
    assert marks[("backward", "embedding")] == 0
    full = train_memory(tiny_llama, 1, 16, precision="mixed", recompute="full", optimizer_impl="fused")
    fmarks = {(mk.phase, mk.label): mk.autocast_cache for mk in full.meta["marks"]}
    assert fmarks[("forward", "end")] == 2 * layer + head           # the forward caches as before...
    assert fmarks[("backward", "lm_head")] == head                  # ... but checkpointed layers saved none
    assert fmarks[("backward", "layer 0 mlp")] == layer             # a recomputed layer casts its own again


def test_a_stage_of_the_whole_model_is_the_model(tiny_llama):
    whole = train_memory(tiny_llama, 2, 32, precision="mixed")
    staged = train_memory(tiny_llama, 2, 32, precision="mixed", stage=Stage(0, 2, True, True))
    assert staged.total == whole.total and staged.phases == whole.phases
    assert staged.components == whole.components and staged.peak_at == whole.peak_at


def test_a_pipeline_stage_holds_its_own_parameters(tiny_llama):
    # the first stage: the embedding and layer 0; the last: layer 1, the final norm and lm_head
    first = train_memory(tiny_llama, 1, 16, stage=Stage(0, 1, True, False))
    last = train_memory(tiny_llama, 1, 16, stage=Stage(1, 2, False, True))
    assert first["weights"] == 2 * (V * H + PER_LAYER + 2 * H)
    assert last["weights"] == 2 * (PER_LAYER + 2 * H + H + V * H)
    assert first["weights"] + last["weights"] == 2 * P_TINY
    with pytest.raises(ValueError, match="stage"):
        train_memory(tiny_llama, 1, 16, stage=Stage(1, 3))


# -- LoRA against a GPU --------------------------------------------------------------------------
def test_lora_llama2_7b_peft_count_and_fit():
    r = lora_fit("Llama-2-7b", rank=8, targets=["q_proj", "v_proj"], base="bf16")
    assert r.meta["trainable_params"] == 32 * 2 * 8 * (4096 + 4096) == 4_194_304   # what PEFT prints
    assert r.meta["base_weights"] == 2 * 6_738_415_616 > 12 * 10**9              # the 12 GB of "Understanding LLM GPU Memory Requirements"
    assert r.meta["gpu_memory"] == RTX4090
    assert r.meta["fits"] == (r.total <= RTX4090) and r.meta["margin"] == RTX4090 - r.total
    q = lora_fit("Llama-2-7b", rank=8, targets=["q_proj", "v_proj"], base="nf4", double_quant=True)
    assert q.meta["base_weights"] < r.meta["base_weights"] / 3
    assert q.meta["fits"] and q.meta["margin"] > 0
    full = lora_fit("Llama-2-7b", rank=8, targets=["q_proj", "v_proj"], base="nf4", double_quant=True,
                    recompute="full")
    assert q.total > 12 * 10**9 > full.total                         # 2048 tokens: 12 GB needs recompute
    small = lora_fit("Llama-2-7b", "L4 24GB", 8, 4096, rank=8, targets=["q_proj", "v_proj"], base="bf16")
    assert not small.meta["fits"] and small.meta["margin"] < 0 and small.meta["gpu_memory"] == GPUS["L4 24GB"]


def test_lora_fit_gpu_and_defaults_agree_with_lora_memory():
    with pytest.raises(ValueError, match="gpu"):
        lora_fit("Llama-2-7b", gpu="TPU v9")
    assert lora_fit("Llama-2-7b", gpu=12 * 10**9).meta["gpu_memory"] == 12 * 10**9
    # lora_fit's defaults are lora_memory's (nf4 base, no double quantisation unless asked)
    r = lora_fit("Llama-2-7b")
    assert r.total == memlib.lora_memory("Llama-2-7b", 1, 2048, base="nf4").total
