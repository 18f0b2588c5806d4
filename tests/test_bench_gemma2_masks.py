"""Gemma 2's two causal masks against the bench, on a tiny Gemma 2 (chapter 03).

Gemma 2 alternates sliding-window and full-attention layers; in eager attention transformers
builds one (B, 1, S, S) mask for each kind, whatever the sequence length (traced: two
``where`` outputs of 2·B·S² bytes in bf16).  Under full recompute each mask is a checkpoint
input of its kind's layers: when the backward reaches layer 0 the other kind's last layer
(layer 1) is done and its mask is freed.
"""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from memlib.activations import causal_mask_bytes, eager_masks  # noqa: E402
from memlib.inference import inference_memory  # noqa: E402
from memlib.measure.scenarios import measure_prefill  # noqa: E402
from memlib.scenario import Scenario  # noqa: E402
from memlib.spec import load_spec  # noqa: E402
from memlib.training import train_memory  # noqa: E402

pytestmark = pytest.mark.bench

TINY_GEMMA2 = {"model_type": "gemma2", "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4,
               "num_key_value_heads": 2, "head_dim": 16, "num_hidden_layers": 2, "intermediate_size": 96,
               "max_position_embeddings": 4096, "sliding_window": 256}


def test_two_masks_by_hand():
    spec = load_spec(TINY_GEMMA2)
    assert eager_masks(spec) == 2
    # two (2, 1, 512, 512) bf16 masks = 2 · 2·2·512² = 2,097,152 bytes; below the window as well
    assert causal_mask_bytes(spec, Scenario(2, 512, "bf16", "eager")) == 2 * 2 * 2 * 512 ** 2 == 2097152
    assert causal_mask_bytes(spec, Scenario(2, 128, "bf16", "eager")) == 2 * 2 * 2 * 128 ** 2
    assert eager_masks(load_spec({**TINY_GEMMA2, "model_type": "mistral"})) == 1      # one kind of layer


@pytest.mark.parametrize("S", [128, 512])          # below and beyond the window
def test_prefill_matches_bench(S):
    measured = measure_prefill(TINY_GEMMA2, 2, S, attention="eager")
    predicted = inference_memory(TINY_GEMMA2, 2, S, attention="eager", runtime="transformers")
    assert predicted.peak_at == "attention"
    assert measured.meta["prefill_peak"] == predicted.meta["prefill_peak"]


def _layer0_backward_peak(B, S):
    """Bytes alive at the peak of layer 0's backward (weights and buffers aside), one bf16 step
    with full recompute and eager attention, the bench's counter reset once layer 1's
    backward has produced the gradient of layer 0's output."""
    from memlib.measure.scenarios import Session
    with Session(TINY_GEMMA2, torch.bfloat16, "eager") as s:
        m = s.model
        m.train()
        enable = getattr(m, "activation_checkpointing_enable", None) or m.gradient_checkpointing_enable
        enable({"use_reentrant": False})
        ids = s.input_ids(B, S)
        counter = s.counter()

        def on_output(module, args, out):
            o = out[0] if isinstance(out, tuple) else out
            if o.requires_grad:
                o.register_hook(lambda g: counter.reset_peak())
        m.model.layers[0].register_forward_hook(on_output)
        with counter:
            counter.set_phase("forward")
            loss = m(input_ids=ids, labels=ids, use_cache=False).loss
            counter.set_phase("backward")
            loss.backward()
        return sum(r.nbytes for r in counter.live_at_peak() if r.cat not in ("weights", "buffers"))


def test_layer0_backward_without_the_other_kinds_mask():
    """bf16, full recompute, B = 1, S = 512: at layer 1's backward both masks are alive; at
    layer 0's the full layers' mask (2·512² = 524,288 B) is gone."""
    kw = dict(precision="bf16", recompute="full", attention="eager", optimizer_impl="fused")
    marks = {mk.label: mk for mk in train_memory(TINY_GEMMA2, 1, 512, **kw).meta["marks"]}
    assert marks["layer 1 attention"].activations - marks["layer 0 attention"].activations == \
        2 * 512 * 64 + 2 * 512 ** 2           # layer 1's checkpointed input and the full layers' mask
    layer0 = marks["layer 0 attention"]
    predicted = layer0.gradients + layer0.activations + layer0.transient
    measured = _layer0_backward_peak(1, 512)
    assert 0 <= measured - predicted <= 64     # the loss scalars the bench counts
