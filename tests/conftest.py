"""Shared test setup: a headless matplotlib backend, and catalog helpers."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402



@pytest.fixture
def tiny_llama():
    """A tiny Llama-family config: small enough to build for real on the CPU."""
    return {"model_type": "llama", "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 96,
            "max_position_embeddings": 256, "tie_word_embeddings": False}
