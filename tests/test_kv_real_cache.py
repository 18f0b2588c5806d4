"""KV bytes against the cache tensors transformers really builds, one tiny config per family.

Each config is built with real (not fake) tensors on the CPU and run for a prefill; the
bench sums the storages the returned cache holds.  transformers' sliding layers keep a view
of the whole prefill plus one 8-byte window-size tensor each (memlib's ``runtime="transformers"``).
"""
import pytest

pytestmark = pytest.mark.bench


pytest.importorskip("torch")
pytest.importorskip("transformers")
from memlib.measure import measure_prefill  # noqa: E402
from memlib.measure.compare import predict_like_bench  # noqa: E402

BASE = {"vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 2, "intermediate_size": 96, "max_position_embeddings": 256}
FAMILIES = {
    "llama": {**BASE, "model_type": "llama"},
    "mistral (sliding)": {**BASE, "model_type": "mistral", "sliding_window": 8},
    "qwen3": {**BASE, "model_type": "qwen3", "head_dim": 32},
    "qwen3_moe": {**BASE, "model_type": "qwen3_moe", "head_dim": 32, "moe_intermediate_size": 32,
                  "num_experts": 4, "num_experts_per_tok": 2},
    "mixtral": {**BASE, "model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2},
    "deepseek_v3 (MLA)": {**BASE, "model_type": "deepseek_v3", "num_key_value_heads": 4, "kv_lora_rank": 16,
                          "q_lora_rank": 24, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
                          "moe_intermediate_size": 32, "n_routed_experts": 4, "num_experts_per_tok": 2,
                          "n_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1},
    "gemma2 (hybrid)": {**BASE, "model_type": "gemma2", "head_dim": 16, "sliding_window": 8},
    "phi3": {**BASE, "model_type": "phi3", "num_key_value_heads": 4, "pad_token_id": 0, "bos_token_id": 1,
             "eos_token_id": 2},
    "gpt2": {"model_type": "gpt2", "vocab_size": 128, "n_embd": 64, "n_head": 4, "n_layer": 2, "n_positions": 256},
    "opt": {"model_type": "opt", "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4,
            "num_hidden_layers": 2, "ffn_dim": 96, "max_position_embeddings": 256, "word_embed_proj_dim": 64},
    "falcon (MQA)": {"model_type": "falcon", "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4,
                     "num_hidden_layers": 2, "multi_query": True, "parallel_attn": True, "bias": False,
                     "new_decoder_architecture": False},
}


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_equals_transformers_cache(family):
    cfg = FAMILIES[family]
    measured = measure_prefill(cfg, batch_size=2, seq_len=20, fake=False).meta["kv_cache"]
    # runtime="transformers": sliding layers keep the whole prefill (a view), plus 8 bytes each
    assert predict_like_bench(dict(model=cfg, batch_size=2, seq_len=20), "kv").total == measured
