"""The tiny config (``tiny_llama`` in conftest) counted by hand: parameters and the GPU line used
by the chapter 04 tests (shared by test_training_state.py and test_widgets_training.py).

V=128, H=64, 4 heads of 16, 2 KV heads, 2 layers, I=96, untied embeddings.
"""

V, H, L, I, D, KV = 128, 64, 2, 96, 16, 2
MATRICES = {  # (rows, cols) per layer, as the model lays them out
    "q": (H, 4 * D), "k": (H, KV * D), "v": (H, KV * D), "o": (4 * D, H),
    "gate": (H, I), "up": (H, I), "down": (I, H),
}
PER_LAYER = sum(r * c for r, c in MATRICES.values())           # 4096+2048+2048+4096+3*6144 = 30_720
VECTORS = L * 2 * H + H                                         # two RMSNorms per layer + final norm = 320
P_TINY = V * H + L * PER_LAYER + VECTORS + V * H                # embed + layers + norms + lm_head
RTX4090 = round(23.64 * 2**30)                                  # runtime total of an RTX 4090 (LlamaFactory#7234)
