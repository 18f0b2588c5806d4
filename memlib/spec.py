"""Model specs: a Hugging Face ``config.json`` read into one normalised shape (chapter 01).

``load_spec(model)`` takes a catalog name, a path to a config.json, a dict, or a
``ModelSpec`` and returns a frozen :class:`ModelSpec`.  Each supported ``model_type``
has a small reader below that maps its own key names onto the shared fields; the
parameter, weight and KV formulas then work on the shared fields only.  Configs are
read as JSON data: no remote code ever runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from .catalog import load_config


@dataclass(frozen=True)
class ModelSpec:
    """The architecture facts that memory depends on, in one shape for every family.

    Attention: ``num_heads`` query heads, ``num_kv_heads`` key/value heads of size
    ``head_dim``.  MLA models (DeepSeek) set ``kv_lora_rank`` and friends instead.
    ``layer_types[i]`` is ``"full"`` or ``"sliding"``; ``moe_layers[i]`` says whether
    layer ``i`` routes to experts.
    """

    name: str
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    # embeddings
    embed_dim: int = 0                # width of the token embedding (OPT's word_embed_proj_dim)
    learned_positions: int = 0        # rows of a learned position table (GPT-2, OPT), 0 for RoPE
    # blocks
    norm: str = "rms"                 # "rms" (weight) or "layer" (weight + bias)
    norms_per_layer: int = 2
    final_norm: bool = True
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False             # per-head RMSNorm on q and k (Qwen3)
    gated_mlp: bool = True            # SwiGLU/GeGLU: gate, up, down; else up, down
    parallel_attn: bool = False       # attention and MLP read the same input (Falcon, GPT-J)
    # mixture of experts
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    shared_intermediate_size: int = 0  # total width of always-on shared experts
    moe_layers: tuple = ()
    # multi-head latent attention (DeepSeek)
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # attention pattern
    layer_types: tuple = ()
    sliding_window: int | None = None
    new_decoder_architecture: bool = False  # Falcon-40B style (transformers caches K/V per query head)
    # training-only details that change what autograd keeps (chapter 03)
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0       # on the attention and MLP outputs before the residual add
    embedding_dropout: float = 0.0
    attn_softcap: float | None = None     # Gemma 2: tanh soft-capping of attention scores
    final_softcap: float | None = None    # Gemma 2: tanh soft-capping of the logits
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def attention_kind(self) -> str:
        """``"MLA"``, ``"MHA"``, ``"MQA"`` or ``"GQA"`` (chapter 02)."""
        if self.is_mla:
            return "MLA"
        if self.num_kv_heads == self.num_heads:
            return "MHA"
        return "MQA" if self.num_kv_heads == 1 else "GQA"

    @property
    def num_sliding_layers(self) -> int:
        return sum(t == "sliding" for t in self.layer_types)

    def __repr__(self):
        return (f"ModelSpec({self.name!r}, {self.model_type}, layers={self.num_layers}, "
                f"hidden={self.hidden_size}, heads={self.num_heads}/{self.num_kv_heads}x{self.head_dim}, "
                f"{self.attention_kind}{', MoE' if self.is_moe else ''})")


# ---------------------------------------------------------------------------------------
# reading a config


class _Reader:
    """Typed access to a raw config that names the missing or malformed field."""

    def __init__(self, name: str, cfg: dict):
        self.name, self.cfg = name, cfg

    def int(self, *keys, default=None, minimum=1):
        for k in keys:
            if k in self.cfg and self.cfg[k] is not None:
                v = self.cfg[k]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or float(v) != int(v):
                    raise ValueError(f"config field {k!r} of {self.name}: must be a whole number, got {v!r}")
                if int(v) < minimum:
                    raise ValueError(f"config field {k!r} of {self.name}: must be >= {minimum}, got {v}")
                return int(v)
        if default is not None:
            return default
        raise ValueError(f"config of {self.name} is missing required field {keys[0]!r}"
                         + (f" (or {', '.join(map(repr, keys[1:]))})" if len(keys) > 1 else ""))

    def opt_int(self, key, minimum=1):
        return self.int(key, default=0, minimum=minimum) if self.cfg.get(key) is not None else None

    def float(self, *keys, default=0.0):
        for k in keys:
            v = self.cfg.get(k)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ValueError(f"config field {k!r} of {self.name}: must be a number, got {v!r}")
                return float(v)
        return default

    def bool(self, key, default=False):
        v = self.cfg.get(key, default)
        return default if v is None else bool(v)


def _sliding_layers(r: _Reader, n_layers: int, default_pattern: Callable[[int], bool] | None):
    """``layer_types`` from the config's ``layer_types`` list, else ``default_pattern``."""
    lt = r.cfg.get("layer_types")
    if lt:
        if len(lt) != n_layers:
            raise ValueError(f"config field 'layer_types' of {r.name}: has {len(lt)} entries, "
                             f"expected num_hidden_layers={n_layers}")
        return tuple("sliding" if "sliding" in str(t) else "full" for t in lt)
    if default_pattern is None:
        return ("full",) * n_layers
    return tuple("sliding" if default_pattern(i) else "full" for i in range(n_layers))


def _decoder_common(r: _Reader, **over) -> dict:
    H = r.int("hidden_size")
    nh = r.int("num_attention_heads")
    L = r.int("num_hidden_layers")
    d = dict(
        vocab_size=r.int("vocab_size"), hidden_size=H, num_layers=L, num_heads=nh,
        num_kv_heads=r.int("num_key_value_heads", default=nh),
        head_dim=r.int("head_dim", default=H // nh),
        intermediate_size=r.int("intermediate_size"),
        max_position_embeddings=r.int("max_position_embeddings"),
        tie_word_embeddings=r.bool("tie_word_embeddings", False),
    )
    d.update(over)
    return d


def _llama(r: _Reader) -> dict:
    d = _decoder_common(r, qkv_bias=r.bool("attention_bias"), o_bias=r.bool("attention_bias"),
                        mlp_bias=r.bool("mlp_bias"), attention_dropout=r.float("attention_dropout"))
    window = r.opt_int("sliding_window")
    use_sw = r.cfg.get("use_sliding_window", True) and window is not None
    d["sliding_window"] = window if use_sw else None
    d["layer_types"] = _sliding_layers(r, d["num_layers"], (lambda i: True) if use_sw else None)
    return d


def _mixtral(r: _Reader) -> dict:
    d = _llama(r)
    E = r.int("num_local_experts")
    d.update(num_experts=E, experts_per_token=r.int("num_experts_per_tok"),
             moe_intermediate_size=d["intermediate_size"], moe_layers=(True,) * d["num_layers"])
    return d


def _qwen2(r: _Reader) -> dict:
    d = _decoder_common(r, qkv_bias=True, attention_dropout=r.float("attention_dropout"))
    window = r.opt_int("sliding_window")
    use_sw = bool(r.cfg.get("use_sliding_window", False)) and window is not None
    max_window_layers = r.int("max_window_layers", default=d["num_layers"], minimum=0)
    d["sliding_window"] = window if use_sw else None
    d["layer_types"] = _sliding_layers(r, d["num_layers"], (lambda i: i >= max_window_layers) if use_sw else None)
    return d


def _qwen3(r: _Reader) -> dict:
    d = _qwen2(r)
    d.update(qkv_bias=r.bool("attention_bias"), o_bias=r.bool("attention_bias"), qk_norm=True)
    return d


def _qwen3_moe(r: _Reader) -> dict:
    d = _qwen3(r)
    L = d["num_layers"]
    step = r.int("decoder_sparse_step", default=1)
    mlp_only = set(r.cfg.get("mlp_only_layers") or [])
    E = r.int("num_experts")
    d.update(num_experts=E, experts_per_token=r.int("num_experts_per_tok"),
             moe_intermediate_size=r.int("moe_intermediate_size"),
             moe_layers=tuple((i not in mlp_only) and (i + 1) % step == 0 for i in range(L)))
    return d


def _deepseek(r: _Reader) -> dict:
    d = _decoder_common(r)
    L = d["num_layers"]
    first_dense = r.int("first_k_dense_replace", default=0, minimum=0)
    freq = r.int("moe_layer_freq", default=1)
    E = r.int("n_routed_experts", default=0, minimum=0)
    moe_inter = r.int("moe_intermediate_size")
    d.update(
        num_experts=E, experts_per_token=r.int("num_experts_per_tok", default=0, minimum=0),
        moe_intermediate_size=moe_inter,
        shared_intermediate_size=moe_inter * r.int("n_shared_experts", default=0, minimum=0),
        moe_layers=tuple(E > 0 and i >= first_dense and i % freq == 0 for i in range(L)),
        q_lora_rank=r.opt_int("q_lora_rank"),
        kv_lora_rank=r.int("kv_lora_rank"),
        qk_nope_head_dim=r.int("qk_nope_head_dim"),
        qk_rope_head_dim=r.int("qk_rope_head_dim"),
        v_head_dim=r.int("v_head_dim"),
        qkv_bias=r.bool("attention_bias"), o_bias=r.bool("attention_bias"),
        layer_types=("full",) * L,
    )
    d["head_dim"] = d["qk_nope_head_dim"] + d["qk_rope_head_dim"]
    return d


def _gemma2(r: _Reader) -> dict:
    d = _decoder_common(r, tie_word_embeddings=r.bool("tie_word_embeddings", True),
                        qkv_bias=r.bool("attention_bias"), o_bias=r.bool("attention_bias"),
                        norms_per_layer=4, attention_dropout=r.float("attention_dropout"),
                        attn_softcap=r.cfg.get("attn_logit_softcapping", 50.0),   # Gemma2Config defaults
                        final_softcap=r.cfg.get("final_logit_softcapping", 30.0))
    d["sliding_window"] = r.int("sliding_window")
    d["layer_types"] = _sliding_layers(r, d["num_layers"], lambda i: i % 2 == 0)
    return d


def _phi3(r: _Reader) -> dict:
    d = _decoder_common(r, attention_dropout=r.float("attention_dropout"),
                        hidden_dropout=r.float("resid_pdrop"), embedding_dropout=r.float("embd_pdrop"))
    window = r.opt_int("sliding_window")
    d["sliding_window"] = window
    d["layer_types"] = _sliding_layers(r, d["num_layers"], (lambda i: True) if window else None)
    return d


def _gpt2(r: _Reader) -> dict:
    H = r.int("n_embd", "hidden_size")
    nh = r.int("n_head", "num_attention_heads")
    L = r.int("n_layer", "num_hidden_layers")
    P = r.int("n_positions", "max_position_embeddings")
    return dict(vocab_size=r.int("vocab_size"), hidden_size=H, num_layers=L, num_heads=nh,
                num_kv_heads=nh, head_dim=H // nh, intermediate_size=r.int("n_inner", default=4 * H),
                max_position_embeddings=P, tie_word_embeddings=r.bool("tie_word_embeddings", True),
                learned_positions=P, norm="layer", qkv_bias=True, o_bias=True, mlp_bias=True,
                gated_mlp=False, layer_types=("full",) * L,
                attention_dropout=r.float("attn_pdrop", default=0.1),
                hidden_dropout=r.float("resid_pdrop", default=0.1),
                embedding_dropout=r.float("embd_pdrop", default=0.1))


def _opt(r: _Reader) -> dict:
    H = r.int("hidden_size")
    nh = r.int("num_attention_heads")
    L = r.int("num_hidden_layers")
    P = r.int("max_position_embeddings")
    bias = r.bool("enable_bias", True)
    pre_ln = r.bool("do_layer_norm_before", True)
    return dict(vocab_size=r.int("vocab_size"), hidden_size=H, num_layers=L, num_heads=nh,
                num_kv_heads=nh, head_dim=H // nh, intermediate_size=r.int("ffn_dim"),
                max_position_embeddings=P, tie_word_embeddings=r.bool("tie_word_embeddings", True),
                embed_dim=r.int("word_embed_proj_dim", default=H),
                learned_positions=P + 2,  # OPTLearnedPositionalEmbedding keeps an offset of 2 rows
                norm="layer", final_norm=pre_ln and not r.bool("_remove_final_layer_norm", False),
                qkv_bias=bias, o_bias=bias, mlp_bias=bias, gated_mlp=False, layer_types=("full",) * L,
                attention_dropout=r.float("attention_dropout"), hidden_dropout=r.float("dropout", default=0.1))


def _falcon(r: _Reader) -> dict:
    mt = r.cfg.get("model_type")
    H = r.int("hidden_size")
    nh = r.int("num_attention_heads", "n_head")
    L = r.int("num_hidden_layers", "n_layer")
    new_arch = r.bool("new_decoder_architecture", mt == "RefinedWeb")
    if new_arch:
        nkv = r.int("num_kv_heads", "n_head_kv", default=nh)
    elif r.bool("multi_query", True):
        nkv = 1
    else:
        nkv = nh
    parallel = r.bool("parallel_attn", True)
    n_ln = (2 if r.int("num_ln_in_parallel_attn", default=2) == 2 else 1) if new_arch else (1 if parallel else 2)
    bias = r.bool("bias", False)
    return dict(vocab_size=r.int("vocab_size"), hidden_size=H, num_layers=L, num_heads=nh,
                num_kv_heads=nkv, head_dim=r.int("head_dim", default=H // nh),
                intermediate_size=r.int("ffn_hidden_size", default=4 * H),
                max_position_embeddings=r.int("max_position_embeddings", default=2048),
                tie_word_embeddings=r.bool("tie_word_embeddings", True), norm="layer",
                norms_per_layer=n_ln, qkv_bias=bias, o_bias=bias, mlp_bias=bias, gated_mlp=False,
                parallel_attn=parallel or new_arch, new_decoder_architecture=new_arch,
                layer_types=("full",) * L, attention_dropout=r.float("attention_dropout"),
                hidden_dropout=r.float("hidden_dropout"))


#: ``model_type`` -> reader.  Aliases share a reader.
FAMILIES: dict[str, Callable[[_Reader], dict]] = {
    "llama": _llama, "mistral": _llama, "mixtral": _mixtral,
    "qwen2": _qwen2, "qwen3": _qwen3, "qwen3_moe": _qwen3_moe,
    "deepseek_v2": _deepseek, "deepseek_v3": _deepseek,
    "gemma2": _gemma2, "phi3": _phi3, "gpt2": _gpt2, "opt": _opt,
    "falcon": _falcon, "RefinedWeb": _falcon, "RefinedWebModel": _falcon,
}


def supported_model_types() -> list[str]:
    return sorted(FAMILIES)


def load_spec(model) -> ModelSpec:
    """Read ``model`` (catalog name, config.json path, dict or ModelSpec) into a :class:`ModelSpec`.

    Raises ``ValueError`` naming the field for a missing or malformed config field, and
    listing the supported ``model_type`` values for an unsupported one.
    """
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, str) and model in _catalog_set():
        return _catalog_spec(model)
    return _read_spec(*load_config(model))


@lru_cache(maxsize=1)
def _catalog_set() -> frozenset:
    from .catalog import catalog_names
    return frozenset(catalog_names())


@lru_cache(maxsize=None)
def _catalog_spec(name: str) -> ModelSpec:
    """Catalog files ship with memlib and never change: read each once."""
    return _read_spec(*load_config(name))


def _read_spec(name: str, cfg: dict) -> ModelSpec:
    mt = cfg.get("model_type")
    if mt is None:
        raise ValueError(f"config of {name} is missing required field 'model_type'; "
                         f"supported: {', '.join(supported_model_types())}")
    if mt not in FAMILIES:
        raise ValueError(f"model_type {mt!r} of {name} is not supported; "
                         f"supported: {', '.join(supported_model_types())}")
    fields = FAMILIES[mt](_Reader(name, cfg))
    fields.setdefault("embed_dim", fields["hidden_size"])
    if not fields.get("moe_layers"):
        fields["moe_layers"] = (False,) * fields["num_layers"]
    if fields["hidden_size"] % 1 or fields["num_heads"] % fields["num_kv_heads"]:
        raise ValueError(f"config of {name}: num_attention_heads={fields['num_heads']} is not a multiple "
                         f"of num_key_value_heads={fields['num_kv_heads']}")
    return ModelSpec(name=name, model_type=mt, raw=cfg, **fields)
