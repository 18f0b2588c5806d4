"""The distributed bench (memlib.measure.parallel): one rank of a fake world of 2, byte-exact.

Every expected value below is hand arithmetic on the tiny configs' shapes, or PyTorch's own
``MemTracker`` / ``FSDPMemTracker`` (the cross-check must agree to the byte).  Needs torch
and transformers (skipped otherwise); about a minute on 2 cores.
"""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from memlib.measure.dist_counter import DistStorageCounter, local_tensors  # noqa: E402
from memlib.measure.expert_parallel import uniform_split  # noqa: E402
from memlib.measure.parallel import measure_parallel_train  # noqa: E402
from memlib.measure.pipeline import stage_layers  # noqa: E402

pytestmark = pytest.mark.bench

H, INTER, V, KV_DIM = 64, 128, 256, 32          # hidden, MLP, vocab, n_kv * head_dim = 2 * 16
LLAMA = {"model_type": "llama", "hidden_size": H, "intermediate_size": INTER, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": V,
         "max_position_embeddings": 256, "tie_word_embeddings": False}
LLAMA4 = {**LLAMA, "num_hidden_layers": 4}
QWEN3 = {"model_type": "qwen3", "vocab_size": V, "hidden_size": H, "num_attention_heads": 4, "num_key_value_heads": 2,
         "head_dim": 16, "num_hidden_layers": 2, "intermediate_size": 96, "max_position_embeddings": 256,
         "tie_word_embeddings": True}
B, S, W = 1, 32, 2

# hand count of the tiny Llama's parameters
EMBED = V * H                                    # 16384, and the same for lm_head
LAYER = (H * H + 2 * H * KV_DIM + H * H          # q, k, v, o
         + 3 * H * INTER                         # gate, up, down
         + 2 * H)                                # two RMSNorm weights
N_PARAMS = 2 * EMBED + 2 * LAYER + H             # + final norm
N_TENSORS = 3 + 2 * 9                            # embed, lm_head, norm + 9 per layer
STEP = 4                                          # AdamW's fp32 0-d ``step`` per parameter tensor


def test_hand_count():
    assert LAYER == 36992 and N_PARAMS == 106816


@pytest.fixture(scope="module")
def runs():
    """Each scenario measured once (bf16, W=2, b=1, s=32); mixed where a test needs it."""
    out = {}
    for sc in ("zero3", "zero2", "tp", "tp_sp", "ddp", "zero1"):
        out[sc] = measure_parallel_train(LLAMA, sc, W, B, S, "bf16")
    out["zero3_mixed"] = measure_parallel_train(LLAMA, "zero3", W, B, S, "mixed")
    # peaks at the start of the backward, before DDP's buckets are first written (see below)
    out["ddp_qwen3"] = measure_parallel_train(QWEN3, "ddp", W, B, S, "bf16")
    out["pp0"] = measure_parallel_train(LLAMA4, "pp", W, B, S, "bf16", microbatches=4, schedule="1f1b", rank=0)
    out["pp1"] = measure_parallel_train(LLAMA4, "pp", W, B, S, "bf16", microbatches=4, schedule="1f1b", rank=1)
    out["gpipe1"] = measure_parallel_train(LLAMA4, "pp", W, B, S, "bf16", microbatches=4, schedule="gpipe",
                                           rank=1)
    return out


# -- PyTorch's own tracker agrees to the byte, in every scenario -------------------------------------
@pytest.mark.parametrize("name", ["zero3", "zero2", "tp", "tp_sp", "ddp", "zero1", "zero3_mixed", "ddp_qwen3", "pp0",
                                  "pp1", "gpipe1"])
def test_memtracker_agrees(runs, name):
    # MemTracker only learns of a storage made before it started when an op returns it; the
    # bench hands it DDP's buckets and the pipeline's receive buffers, or it under-counts a peak
    # that comes before they are first written (ddp_qwen3 peaks in the backward's first ops)
    cc = runs[name].meta["crosscheck"]
    fsdp = name.startswith("zero3") or name == "zero2"
    assert cc["tracker"] == ("FSDPMemTracker" if fsdp else "MemTracker") + "(global peak)"
    assert cc["diff_bytes"] == 0, cc
    assert runs[name].meta["train_peak"] == cc["counter_peak"] - runs[name].meta["input_bytes"]
    assert runs[name].meta["input_bytes"] == B * S * 8 * (4 if name.startswith(("pp", "gpipe")) else 1)
    if name == "ddp_qwen3":
        assert runs[name].meta["peak_phase"] == "backward"


# -- ZeRO-3 / ZeRO-2: the sharded state is the full state / W to the byte ----------------------------
def test_zero3_shards_exactly(runs):
    held = runs["zero3"].meta["held"]
    assert held["params"] == N_PARAMS * 2 // W                       # bf16, every dim-0 divisible by 2
    assert held["optimizer"] == 2 * N_PARAMS * 2 // W + STEP * N_TENSORS
    mixed = runs["zero3_mixed"].meta["held"]
    assert mixed["params"] == N_PARAMS * 4 // W                      # fp32 master shards
    assert mixed["optimizer"] == 2 * N_PARAMS * 4 // W + STEP * N_TENSORS


def test_zero3_resizes_are_counted(runs):
    m = runs["zero3"].meta
    assert m["resize_events"] > 0                     # FSDP2 frees/refills with storage.resize_
    # during the forward the root (embed, lm_head, final norm) is unsharded: bf16 bytes by hand
    assert m["phase_components"]["forward"]["unsharded_params"] >= (2 * EMBED + H) * 2
    # a decoder layer's flat all-gather buffer is one layer's bf16 parameters
    assert m["phase_components"]["forward"]["fsdp_all_gather"] == LAYER * 2
    # after the forward the layers are resharded, the root is not (FSDP2's root default)
    assert m["end_of_forward_components"]["unsharded_params"] == (2 * EMBED + H) * 2


def test_zero2_keeps_every_unit_unsharded_after_forward(runs):
    eof = runs["zero2"].meta["end_of_forward_components"]
    assert eof["unsharded_params"] == N_PARAMS * 2                # the whole model in bf16
    assert runs["zero2"].meta["held"] == runs["zero3"].meta["held"]


def test_mixed_zero3_gathers_bf16(runs):
    eof = runs["zero3_mixed"].meta["end_of_forward_components"]
    assert eof["unsharded_params"] == (2 * EMBED + H) * 2         # param_dtype=bf16 copies of an fp32 model


# -- TP: q/k/v/o shards, replicated norms ----------------------------------------------------------
def test_tp_shards_and_replicated_norms(runs):
    plan = runs["tp"].meta["tp_plan"]
    assert plan["sharded"] == {"self_attn.q_proj": "colwise", "self_attn.k_proj": "colwise",
                               "self_attn.v_proj": "colwise", "self_attn.o_proj": "rowwise",
                               "mlp.gate_proj": "colwise", "mlp.up_proj": "colwise", "mlp.down_proj": "rowwise"}
    norms = 2 * 2 * H + H                                           # per-layer norms + final norm, whole
    assert runs["tp"].meta["held"]["params_numel"] == (N_PARAMS - norms) // W + norms
    assert runs["tp_sp"].meta["held"] == runs["tp"].meta["held"]
    assert runs["tp_sp"].meta["tp_plan"]["sp_norms"] == ["input_layernorm", "post_attention_layernorm"]


def test_tp_local_shapes():
    from memlib.measure.fake_dist import cpu_mesh, fake_world
    from memlib.measure.scenarios import Session
    from memlib.measure.tp_plan import apply_tp, shard_shapes
    with fake_world(W):
        mesh = cpu_mesh(W)
        with Session(LLAMA, torch.bfloat16, "sdpa") as s:
            apply_tp(s.model, mesh)
            shapes = shard_shapes(s.model)
    a = "model.layers.0.self_attn."
    assert shapes[a + "q_proj.weight"] == ((H, H), (H // W, H))
    assert shapes[a + "k_proj.weight"] == ((KV_DIM, H), (KV_DIM // W, H))
    assert shapes[a + "v_proj.weight"] == ((KV_DIM, H), (KV_DIM // W, H))
    assert shapes[a + "o_proj.weight"] == ((H, H), (H, H // W))
    assert shapes["model.embed_tokens.weight"] == ((V, H), (V // W, H))      # vocabulary-parallel
    assert shapes["lm_head.weight"] == ((V, H), (V // W, H))


# -- DDP and ZeRO-1 ---------------------------------------------------------------------------------
def test_ddp_buckets_hold_every_gradient_once(runs):
    comps = runs["ddp"].meta["phase_components"]["step"]
    assert comps["ddp_buckets"] == N_PARAMS * 2
    assert comps["gradients"] == N_PARAMS * 2                     # gradient_as_bucket_view=False: a copy
    assert runs["ddp"].meta["held"]["optimizer"] == 2 * N_PARAMS * 2 + STEP * N_TENSORS


def test_zero1_greedy_partition(runs):
    # ZeroRedundancyOptimizer: largest parameter first, to the rank with the fewest elements
    sizes = [EMBED, EMBED, H] + [H * H, H * KV_DIM, H * KV_DIM, H * H, H * INTER, H * INTER, H * INTER, H, H] * 2
    load, mine = [0, 0], []
    for n in sorted(sizes, reverse=True):
        r = load.index(min(load))
        load[r] += n
        if r == 0:
            mine.append(n)
    held = runs["zero1"].meta["held"]
    assert held["optimizer"] == 2 * sum(mine) * 2 + STEP * len(mine)
    assert held["params"] == N_PARAMS * 2                            # parameters stay whole


# -- a pipeline stage -------------------------------------------------------------------------------
def test_stage_split():
    assert [stage_layers(32, 4, r) for r in range(4)] == [(0, 8), (8, 16), (16, 24), (24, 32)]
    assert [stage_layers(30, 4, r) for r in range(4)] == [(0, 7), (7, 15), (15, 22), (22, 30)]


def test_pp_stages_hold_their_layers_and_buffers(runs):
    m0, m1 = runs["pp0"].meta, runs["pp1"].meta
    assert m0["layers"] == [0, 2] and m1["layers"] == [2, 4]
    assert m0["held"]["params_numel"] == EMBED + 2 * LAYER                # first stage: embedding
    assert m1["held"]["params_numel"] == 2 * LAYER + H + EMBED            # last: norm + head
    mb_act = B * S * H * 2                                                  # one micro-batch's hidden, bf16
    # first stage: one gradient receive buffer per micro-batch; last: one activation buffer each
    assert m0["phase_components"]["step"]["pp_buffers"] == 4 * mb_act
    assert m1["phase_components"]["step"]["pp_buffers"] == 4 * mb_act


def test_gpipe_holds_more_than_1f1b_on_the_last_stage(runs):
    # the last stage of 1F1B runs each micro-batch's backward right after its forward;
    # GPipe keeps all 4 forwards (and their fp32 logits) before the first backward
    logits = B * S * V * 4
    assert runs["gpipe1"].meta["train_peak"] - runs["pp1"].meta["train_peak"] >= 3 * logits


# -- expert parallelism ---------------------------------------------------------------------------------
def test_ep_uniform_split():
    assert uniform_split(10, 4) == [3, 3, 2, 2] and sum(uniform_split(4096 * 8, 8)) == 4096 * 8


MOE = {"model_type": "qwen3_moe", "hidden_size": H, "intermediate_size": INTER, "moe_intermediate_size": 32,
       "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
       "vocab_size": V, "max_position_embeddings": 256, "num_experts": 8, "num_experts_per_tok": 2,
       "decoder_sparse_step": 1, "mlp_only_layers": [], "tie_word_embeddings": False}
MOE_EXPERTS = 8 * (2 * 32 * H + H * 32)                   # gate_up + down, per layer
MOE_ATTN = H * H + 2 * H * 32 + H * H                     # q, k, v, o (4 heads x 16, 2 kv heads x 16)
MOE_SMALL = 2 * 16 + 8 * H + 2 * H                        # q/k norms, router, two layer norms


def test_ep_experts_are_split():
    r = measure_parallel_train(MOE, "ep", W, B, S, "bf16")
    assert r.meta["crosscheck"]["diff_bytes"] == 0
    # experts split over the EP ranks, everything else FSDP-sharded over the same W ranks
    local = 2 * (MOE_EXPERTS // W + (MOE_ATTN + MOE_SMALL) // W) + (2 * EMBED + H) // W
    assert r.meta["held"]["params_numel"] == local


def test_moe_tp_sp_leaves_experts_whole():
    r = measure_parallel_train(MOE, "tp_sp", W, B, S, "bf16")
    assert r.meta["crosscheck"]["diff_bytes"] == 0
    assert r.meta["tp_plan"]["replicated"]["layers.*.mlp.experts"] == "moe_tp_experts"
    # attention sharded; experts, router and norms whole; vocabulary sharded
    local = 2 * (MOE_ATTN // W + MOE_EXPERTS + MOE_SMALL) + 2 * EMBED // W + H
    assert r.meta["held"]["params_numel"] == local


# -- the counter's distributed traps, by hand ---------------------------------------------------------
def test_counter_sees_storage_resize_on_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        c = DistStorageCounter()
        with c:
            t = torch.empty(1000, dtype=torch.bfloat16)          # 2000 bytes
            assert c.live_bytes == 2000
            t.untyped_storage().resize_(0)                        # what FSDP2's free_storage does
            assert c.live_bytes == 0
            t.untyped_storage().resize_(2000)                     # and alloc_storage
            assert c.live_bytes == 2000 and c.peak == 2000
        assert c.resize_events == 2


def test_counter_counts_dtensor_local_shard():
    from torch.distributed.tensor import Shard, distribute_tensor

    from memlib.measure.fake_dist import cpu_mesh, fake_world
    with fake_world(4):
        mesh = cpu_mesh(4)
        d = distribute_tensor(torch.zeros(8, 16), mesh, [Shard(0)])   # global 512 bytes, local 128
        c = DistStorageCounter()
        assert c.register([d], "weights") == 2 * 16 * 4
        assert [t.shape for t in local_tensors([d, None])] == [torch.Size([2, 16])]
        with c:
            e = d * 2                                                # a local op on the shard
            assert c.live_bytes == 2 * (2 * 16 * 4)
        del e
