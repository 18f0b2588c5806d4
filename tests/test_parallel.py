"""memlib.parallel (chapter 05): hand arithmetic on real configs, bad input, the planner's
rules, and the committed distributed-bench records against their accuracy targets.

Expected values are hand arithmetic on the config shown in each test (Llama-3.1-8B:
hidden 4096, 32 layers, 32 heads / 8 KV heads of 128, MLP 14336, vocabulary 128256) or the
bench's measurements (the last tests).
"""
import json
import statistics
from pathlib import Path

import pytest

import memlib
from memlib.measure.compare import compare
from memlib.parallel import Plan, parallel_train_memory, plan, rank_memory
from memlib.parallel.activations import tp_records
from memlib.parallel.context import ring_buffers
from memlib.parallel.experts import dispatch_bytes
from memlib.parallel.pipeline import in_flight, receive_buffers
from memlib.parallel.planner import layouts, parse_gpus
from memlib.parallel.state import held_elements, rank_tensors, stage_layers, zero1_partition
from memlib.scenario import Scenario
from memlib.activations import layer_tensors

ROOT = Path(__file__).resolve().parent.parent
H, L, V, I, HD = 4096, 32, 128256, 14336, 128

# one Llama-3.1-8B layer by hand: q, o (H x H), k, v (H x 8*128), gate, up, down (H x I), two RMSNorms
LAYER = 2 * H * H + 2 * H * 8 * HD + 3 * H * I + 2 * H          # 218,112,000
EMBED = V * H                                                     # 525,336,576 (and lm_head: untied)
TOTAL = L * LAYER + 2 * EMBED + H                                 # + the final norm


def test_hand_count_matches_memlib():
    assert LAYER == 218_112_000 and TOTAL == 8_030_261_248 == memlib.total_params("Llama-3.1-8B")


# -- model state by ZeRO stage ------------------------------------------------------------------------
def test_zero3_model_state_by_hand():
    # FSDP2 over 8 ranks: every first dimension of Llama-3.1-8B divides by 8, so a rank holds TOTAL / 8
    b = rank_memory("Llama-3.1-8B", 1, 512, Plan(dp=8, zero=3), "bf16")
    assert b.meta["held_params"] == TOTAL // 8 == 1_003_782_656
    assert b["weights"] == 2 * TOTAL // 8                          # bf16
    assert b["optimizer"] == 2 * 2 * TOTAL // 8                    # AdamW: two bf16 moments
    mixed = rank_memory("Llama-3.1-8B", 1, 512, Plan(dp=8, zero=3), "mixed")
    assert mixed["weights"] == 4 * TOTAL // 8 and mixed["optimizer"] == 2 * 4 * TOTAL // 8


def test_zero3_seed_claim_12_gb_leaves_out_the_buffers():
    # "FSDP over 8 GPUs: 14 GB / 8 + 28 GB / 8 + 56 GB / 8 = 12 GB per device" (14 bytes/param, no buffers)
    b = rank_memory("Llama-3.1-8B", 1, 512, Plan(dp=8, zero=3), "mixed")
    states = b["weights"] + b["optimizer"] + 4 * TOTAL // 8          # + the fp32 gradient shards
    assert states == 16 * TOTAL // 8                                  # 16 bytes/param, not 14
    assert b.total > states                                           # gathered layers, buffers, activations on top
    assert {"unsharded_params", "fsdp_all_gather", "fsdp_reduce_scatter", "unsharded_grads"} <= set(b.components)


def test_zero2_keeps_every_layer_gathered_through_the_forward():
    b = rank_memory("Llama-3.1-8B", 1, 512, Plan(dp=8, zero=2), "bf16")
    fwd = b.phase_components["forward"]
    # root (embedding, lm_head, final norm) + 32 layers, gathered in bf16
    assert fwd["unsharded_params"] == 2 * TOTAL
    z3 = rank_memory("Llama-3.1-8B", 1, 512, Plan(dp=8, zero=3), "bf16").phase_components["forward"]
    assert z3["unsharded_params"] == 2 * (2 * EMBED + H + LAYER)       # root + the running layer


def test_ddp_buckets_are_one_more_copy_of_the_gradients():
    b = rank_memory("Llama-3.1-8B", 1, 512, Plan(dp=2), "bf16")
    assert b["ddp_buckets"] == 2 * TOTAL and b["weights"] == 2 * TOTAL


# every Llama-3.1-8B tensor in registration order: embedding, 32 x (q, k, v, o, gate, up, down, 2 norms),
# final norm, lm_head
TENSORS = [V * H] + [H * H, 8 * HD * H, 8 * HD * H, H * H, I * H, I * H, I * H, H, H] * L + [H, V * H]


def _greedy(sizes, ranks):
    """ZeroRedundancyOptimizer's rule by hand: largest first, to the rank with the fewest elements."""
    totals = [0] * ranks
    for n in sorted(sizes, reverse=True):
        totals[min(range(ranks), key=lambda r: (totals[r], r))] += n
    return totals


@pytest.mark.parametrize("precision, w, o", [("bf16", 2, 4), ("mixed", 4, 8)])
def test_model_state_per_zero_stage_by_hand(precision, w, o):
    # during the optimizer step, over 8 ranks: DDP holds everything plus its buckets (a gradient copy);
    # ZeRO-1 only its greedy share of the optimizer state; FSDP2 (zero 2, 3) an eighth of each
    assert sum(TENSORS) == TOTAL
    share0 = _greedy(TENSORS, 8)[0]
    expected = {0: (w * TOTAL, w * TOTAL, o * TOTAL, w * TOTAL), 1: (w * TOTAL, w * TOTAL, o * share0, w * TOTAL),
                2: (w * TOTAL // 8, w * TOTAL // 8, o * TOTAL // 8, 0), 3: (w * TOTAL // 8, w * TOTAL // 8,
                                                                          o * TOTAL // 8, 0)}
    for zero, want in expected.items():
        step = rank_memory("Llama-3.1-8B", 1, 512, Plan(dp=8, zero=zero), precision).phase_components["step"]
        got = (step["weights"], step["gradients"], step["optimizer"], step.get("ddp_buckets", 0))
        assert got == want, zero


def test_zero1_heaviest_rank_is_a_child():
    totals = _greedy(TENSORS, 8)
    heavy = max(range(8), key=lambda r: (totals[r], -r))
    b = parallel_train_memory("Llama-3.1-8B", 1, 512, dp=8, zero=1)
    assert [c.label for c in b.children] == ["rank 0", f"rank {heavy}"]
    assert b.children[1].phase_components["step"]["optimizer"] == 4 * totals[heavy]


def test_zero1_partition_is_pytorchs_greedy_rule():
    # sizes 5, 3, 3, 1 over 2 ranks, largest first to the rank with the fewest elements
    # (ties: the lowest rank): 5 -> r0, 3 -> r1, 3 -> r1 (3 < 5), 1 -> r0 (5 < 6)
    assert zero1_partition([3, 5, 1, 3], 2, rank=0) == [1, 2]
    assert zero1_partition([3, 5, 1, 3], 2, rank=1) == [0, 3]


# -- tensor parallelism ---------------------------------------------------------------------------------
def test_tp_head_split_by_hand():
    # tp=4: q, k, v, gate, up split by rows, o and down by columns, norms whole,
    # embedding and lm_head by vocabulary rows (128256 / 4 = 32064)
    layer = (H // 4) * H * 2 + (8 * HD // 4) * H * 2 + 3 * (I // 4) * H + 2 * H
    total = L * layer + 2 * (V // 4) * H + H
    assert held_elements(memlib.load_spec("Llama-3.1-8B"), 4, 1, 1, 1, 0)[0] == total == 2_007_764_992


def test_kv_heads_copied_when_tp_exceeds_them():
    spec = memlib.load_spec("Qwen3-30B-A3B")                       # 32 heads, 4 KV heads of 128
    k = {t.p.name: t for t in rank_tensors(spec, 8) if t.layer == 0}["k"]
    assert k.rows == 1 * 128                                       # one whole KV head per rank, not 512 / 8 = 64
    k4 = {t.p.name: t for t in rank_tensors(spec, 4) if t.layer == 0}["k"]
    assert k4.rows == 128                                          # 4 heads / 4 ranks: one each, split


def test_tp_activations_split_heads_and_mlp_not_the_residual_stream():
    spec = memlib.load_spec("Llama-3.1-8B")
    sc = Scenario(1, 512)
    T = 512
    one = layer_tensors(spec, sc)
    two = tp_records(spec, one, 2)
    assert two["attn.q"].nbytes == 2 * T * (H // 2)                 # query heads halve
    assert two["mlp.gate"].nbytes == 2 * T * (I // 2)
    assert two["input_norm.input_fp32"].nbytes == 4 * T * H         # the norm's fp32 copy stays whole
    sp = tp_records(spec, one, 2, sp=True)
    assert sp["input_norm.input_fp32"].nbytes == 4 * T * H // 2      # SP splits the norm's inside ...
    assert sp["input_norm.output"].nbytes == 2 * T * H               # ... not its (gathered) output
    # what SP saves per layer: two norms x (fp32 copy 4TH + rsqrt 4T + normalised 2TH) / 2
    saved = sum(t.nbytes for t in two.values()) - sum(t.nbytes for t in sp.values())
    assert saved == 2 * (4 * T * H + 4 * T + 2 * T * H) // 2


# -- pipeline ---------------------------------------------------------------------------------------------
def test_pipeline_stage_imbalance_by_hand():
    spec = memlib.load_spec("Llama-3.1-8B")
    assert [stage_layers(spec, 4, s) for s in range(4)] == [(0, 8), (8, 16), (16, 24), (24, 32)]
    held = [held_elements(spec, 1, 1, 1, 4, s)[0] for s in range(4)]
    assert held[0] == EMBED + 8 * LAYER                             # the embedding on the first stage
    assert held[1] == held[2] == 8 * LAYER
    assert held[3] == 8 * LAYER + H + EMBED                          # final norm and lm_head on the last


def test_in_flight_micro_batches_per_schedule():
    assert [in_flight("1f1b", 4, 8, s) for s in range(4)] == [4, 3, 2, 1]
    assert [in_flight("gpipe", 4, 8, s) for s in range(4)] == [8, 8, 8, 8]
    spec = memlib.load_spec("Llama-3.1-8B")
    sc = Scenario(1, 512, "mixed")
    # fp32 hidden states in, fp32 gradients back: 8 buffers each of 512 x 4096 x 4 bytes
    assert receive_buffers(spec, sc, 4, 8, 1) == 2 * 8 * 512 * H * 4
    assert receive_buffers(spec, sc, 4, 8, 0) == 8 * 512 * H * 4


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
def test_in_flight_activations_by_hand(schedule):
    # Llama-3.1-8B, 4 stages of 8 layers, 8 micro-batches of one 4,096-token sequence, bf16.  One layer saves
    # per token (chapter 03): two norms x (fp32 copy 4H + rsqrt 4 + normalised 2H + output 2H), q 2*32*128,
    # k and v 2*8*128 each, attention output 2*32*128, logsumexp 4*32, four MLP tensors 2*I each
    T = 4096
    layer_tok = 2 * (4 * H + 4 + 2 * H + 2 * H) + 2 * 4096 + 2 * 2 * 1024 + 2 * 4096 + 4 * 32 + 4 * 2 * I
    assert layer_tok == 200_840
    saved = 8 * layer_tok * T + 2 * HD * 2 * T          # 8 layers + RoPE's cos and sin per position
    kept = saved + 2 * T * H                            # + the stage output kept for its backward (bf16)
    b = parallel_train_memory("Llama-3.1-8B", 1, T, pp=4, microbatches=8, schedule=schedule)
    for s in range(3):                                  # the last stage keeps logits instead (chapter 03)
        k = 8 if schedule == "gpipe" else 4 - s
        assert b.children[s]["in_flight_activations"] == (k - 1) * kept
        assert b.children[s].meta["activations_saved"] == saved


def test_parallel_train_memory_children_per_stage():
    b = parallel_train_memory("Llama-3.1-8B", 1, 1024, pp=4, microbatches=8)
    assert [c.label for c in b.children] == ["stage 0", "stage 1", "stage 2", "stage 3"]
    assert b.total == b.children[0].total and b.meta["max_peak"] == max(c.total for c in b.children)
    assert b.meta["global_batch"] == 8
    assert parallel_train_memory("Llama-3.1-8B", 2, 1024, dp=4, zero=3).meta["global_batch"] == 8


def test_offload_moves_bytes_to_the_host():
    on = rank_memory("Llama-3.1-8B", 1, 512, Plan(dp=8, zero=3), "bf16")
    off = rank_memory("Llama-3.1-8B", 1, 512, Plan(dp=8, zero=3, offload="optimizer"), "bf16")
    assert off["optimizer"] == 0 and off.meta["host"]["optimizer"] == on["optimizer"] == 2 * 2 * TOTAL // 8
    both = rank_memory("Llama-3.1-8B", 1, 512, Plan(dp=8, zero=3, offload="both"), "bf16")
    assert both.meta["host"]["weights"] == on["weights"] and both["weights"] == 0


def test_context_parallel_splits_the_sequence():
    full = rank_memory("Llama-3.1-8B", 1, 8192, Plan(), "bf16")
    cp = rank_memory("Llama-3.1-8B", 1, 8192, Plan(cp=4), "bf16")
    assert cp.meta["tokens_per_rank"] == 2048
    assert cp.meta["activations_saved"] < full.meta["activations_saved"] / 3
    # each rank's activations are a 2,048-token step's (the same records, evaluated at S / cp)
    assert cp.meta["activations_saved"] == memlib.train_memory("Llama-3.1-8B", 1, 2048).meta["activations_saved"]


def test_ring_attention_buffers_by_hand():
    # all-gathered K and V of the whole sequence (bf16, 8 KV heads of 128) + this rank's packed copy;
    # the backward adds fp32 dK and dV blocks of the rank's tokens
    S, cp, kv = 32768, 8, 8 * HD
    fwd = 2 * 2 * S * kv + 2 * 2 * (S // cp) * kv
    spec = memlib.load_spec("Llama-3.1-8B")
    assert ring_buffers(spec, 1, S, cp) == fwd == 150_994_944
    assert ring_buffers(spec, 1, S, cp, backward=True) == fwd + 2 * 4 * (S // cp) * kv
    marks = rank_memory(spec, 1, S, Plan(cp=cp), "bf16").meta["marks"]
    assert max(m.parts.get("comm", 0) for m in marks if m.phase == "forward") == fwd


def test_expert_parallel_by_hand():
    # Qwen3-30B-A3B: 48 layers, 128 experts (gate, up, down of 2048 x 768), top-8, hidden 2048
    spec = memlib.load_spec("Qwen3-30B-A3B")
    experts = sum(t.numel for t in rank_tensors(spec, 1, 8) if t.p.name.startswith("experts."))
    assert experts == 48 * (128 // 8) * 3 * 2048 * 768
    T = 4096
    assert dispatch_bytes(spec, Scenario(1, T)) == 2 * 2 * T * 8 * 2048       # sent + received, bf16
    marks = rank_memory(spec, 1, T, Plan(dp=8, ep=8, zero=3), "bf16").meta["marks"]
    assert max(m.parts.get("comm", 0) for m in marks if m.phase == "forward") == 2 * 2 * T * 8 * 2048


# -- bad input: one line naming the field ---------------------------------------------------------------
@pytest.mark.parametrize("kw, field", [
    (dict(zero=4), "zero"), (dict(schedule="zb"), "schedule"), (dict(offload="disk"), "offload"),
    (dict(sp=True), "sp"), (dict(pp=4, microbatches=2), "microbatches"), (dict(dp=0), "dp"),
    (dict(dp=2, zero=3, reshard_after_forward=False), "reshard_after_forward"), (dict(zero=2), "zero"),
    (dict(dp=4, ep=3), "ep"), (dict(microbatches=4), "microbatches")])
def test_bad_plan(kw, field):
    with pytest.raises(ValueError) as e:
        Plan(**kw)
    msg = str(e.value)
    assert msg.startswith(field) and "\n" not in msg


@pytest.mark.parametrize("kw, field", [(dict(tp=3), "tp"), (dict(pp=33), "pp"), (dict(dp=2, ep=2), "ep"),
                                       (dict(cp=3), "seq_len")])
def test_plan_checked_against_the_model(kw, field):
    with pytest.raises(ValueError) as e:
        parallel_train_memory("Llama-3.1-8B", 1, 512, **kw)
    assert str(e.value).startswith(field)


def test_bad_keyword_and_gpus():
    with pytest.raises(ValueError, match="^plan: unknown field 'dpp'"):
        parallel_train_memory("Llama-3.1-8B", 1, 512, dpp=2)
    with pytest.raises(ValueError, match="^gpus"):
        parse_gpus("eight H100s")
    assert parse_gpus("128x8xH100-80GB")[:2] == (128, 8)


# -- the planner's rules ----------------------------------------------------------------------------------
def test_planner_layouts_follow_divisibility():
    spec = memlib.load_spec("Llama-3.1-405B")                        # 128 heads, 8 KV heads, 126 layers
    out = layouts(spec, 128, 8, 8192, 2048)
    assert {p.tp for p, _ in out} == {1, 2, 4, 8}                     # within a node of 8
    assert {p.pp for p, _ in out} == {1, 2}                            # divisors of 126 that divide 1024
    assert all(p.world_size == 1024 and 2048 % p.dp == 0 for p, _ in out)
    moe = memlib.load_spec("Qwen3-30B-A3B")                           # 128 experts, 4 KV heads
    eps = {p.ep for p, _ in layouts(moe, 1, 8, 4096, 64)}
    assert eps == {1, 2, 4, 8}


def test_planner_answers_and_ranks():
    r = plan("Llama-3.1-8B", gpus="8xH100-80GB", seq_len=4096, global_batch_size=64)
    assert r.fits and all(x.peak <= r.gpu_bytes for x in r.fits)
    keys = [(x.plan.tp * x.plan.pp * x.plan.cp * x.plan.ep, x.plan.zero) for x in r.fits]
    assert keys == sorted(keys)
    best = r.fits[0]
    # the layout's peak is the largest rank's, recomputed
    again = parallel_train_memory("Llama-3.1-8B", 1, 4096, plan=best.plan, grad_accum=best.accumulation
                                  if best.plan.pp == 1 else 1)
    assert best.peak == again.meta["max_peak"]


# -- the committed bench records: the accuracy targets (fast: no torch) ----------------------------------
def _records():
    path = ROOT / "data" / "bench" / "parallel.jsonl"
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return [json.loads(ln) for ln in lines]


def test_committed_records_meet_the_targets():
    rows = [compare(r, "parallel") for r in _records()]
    ok = [r for r in rows if "excluded" not in r]
    errs = [abs(r["error"]) for r in ok]
    assert len(ok) >= 150
    assert max(errs) <= 0.05                                          # every point within 5 %
    assert statistics.median(errs) <= 0.02                            # median within 2 %
    assert all(r["phase"] == r["predicted_phase"] for r in ok)        # the peak phase right
    # the matrix: five architectures, W in {2, 4, 8}, bf16 and mixed, the scenarios
    pts = [r["point"] for r in ok]
    assert len({p["model"] for p in pts}) >= 5 and {p["world_size"] for p in pts} >= {2, 4, 8}
    assert {p["precision"] for p in pts} == {"bf16", "mixed"}
    assert {"zero2", "zero3", "tp", "tp_sp", "pp"} <= {p["scenario"] for p in pts}


def test_excluded_points_keep_their_reason():
    rows = [compare(r, "parallel") for r in _records()]
    failed = [r for r in _records() if "error" in r["measured"]]
    excluded = [r for r in rows if "excluded" in r]
    assert len(excluded) == len(failed)
    assert all(r["excluded"].startswith("bench error:") and len(r["excluded"]) > 20 for r in excluded)
