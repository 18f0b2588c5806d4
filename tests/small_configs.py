"""A small Llama-style config (MHA, 4 layers of 512) for hand arithmetic on the KV cache and
the serving budget (chapters 02 and 07); ``cfg(num_key_value_heads=2)`` and so on vary it."""


def cfg(**over):
    base = {"model_type": "llama", "vocab_size": 1000, "hidden_size": 512, "num_attention_heads": 8,
            "num_key_value_heads": 8, "num_hidden_layers": 4, "intermediate_size": 1024,
            "max_position_embeddings": 4096}
    base.update(over)
    return base
