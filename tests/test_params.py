"""Parameter counts: exact for every catalog model (chapter 01).

Two independent references:
* published counts with their sources (``tests/data/published_params.json``);
* transformers' own count, ``sum(p.numel() for p in model.parameters())`` of the model
  built from the same config.json on the meta device (needs the ``measure`` extra).
"""
import json
from pathlib import Path

import pytest

import memlib
from memlib.params import param_tensors

DATA = Path(__file__).resolve().parent / "data"
PUBLISHED = json.loads((DATA / "published_params.json").read_text())


@pytest.mark.parametrize("entry", PUBLISHED, ids=lambda e: f"{e['model']}-{e['kind']}-{e['precision']}")
def test_published_counts(entry):
    c = memlib.count_params(entry["model"])
    got = c.total if entry["kind"] == "total" else c.meta[entry["kind"]]
    if entry["precision"] == "exact":
        assert got == entry["params"], entry["source"]
    else:
        assert got == pytest.approx(entry["params"], rel=entry["rel_tol"]), entry["source"]


def _transformers_count(model) -> int:
    """``sum(p.numel() for p in model.parameters())`` of the transformers model built from the
    config on the meta device (the bench's config cleaning: RefinedWeb names, no quantisation)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from memlib.measure.build import clean_config, hf_config
    name, cfg, _ = clean_config(model)
    with torch.device("meta"):
        built = transformers.AutoModelForCausalLM.from_config(hf_config(name, cfg))
    return sum(p.numel() for p in built.parameters())


@pytest.mark.bench
@pytest.mark.parametrize("name", memlib.catalog_names())
def test_matches_transformers_on_meta_device(name):
    assert memlib.total_params(name) == _transformers_count(name)


@pytest.mark.bench
def test_refinedweb_key_names_match_transformers():
    path = DATA / "falcon-7b-refinedweb.json"
    if not path.exists():
        pytest.skip("no RefinedWeb fixture")
    assert memlib.total_params(str(path)) == _transformers_count(str(path))


def test_gpt2_by_hand():
    # wte 50257x768 + wpe 1024x768; per layer: ln_1, ln_2 (2x768 each), c_attn 768x2304 + 2304,
    # c_proj 768x768 + 768, c_fc 768x3072 + 3072, mlp c_proj 3072x768 + 768; ln_f 2x768; tied head
    per_layer = 2 * 2 * 768 + (768 * 2304 + 2304) + (768 * 768 + 768) + (768 * 3072 + 3072) + (3072 * 768 + 768)
    assert memlib.total_params("gpt2") == 50257 * 768 + 1024 * 768 + 12 * per_layer + 2 * 768 == 124_439_808


def test_llama31_8b_by_hand():
    H, I, V, L, kv = 4096, 14336, 128256, 32, 8 * 128
    per_layer = H * H + 2 * H * kv + H * H + 3 * H * I + 2 * H
    assert memlib.total_params("Llama-3.1-8B") == 2 * V * H + L * per_layer + H == 8_030_261_248


def test_moe_active_by_hand():
    # Mixtral: 2 of 8 experts per token; each expert 3 x 4096 x 14336 per layer, 32 layers
    total, active = memlib.total_params("Mixtral-8x7B-v0.1"), memlib.active_params("Mixtral-8x7B-v0.1")
    assert total - active == 32 * 6 * 3 * 4096 * 14336


def test_linear_layers_plus_rest_is_total():
    for name in memlib.catalog_names():
        mats, vectors = param_tensors(name)
        assert vectors >= 0
        assert sum(r * c * n for r, c, n in mats) + vectors == memlib.total_params(name)
