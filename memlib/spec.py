"""Model specs: a Hugging Face ``config.json`` read into one normalised shape (chapter 01).

``load_spec(model)`` takes a catalog name, a path to a config.json, a dict, or a
``ModelSpec`` and returns a frozen :class:`ModelSpec`.  Each supported ``model_type``
has a small reader below that maps its own key names onto the shared fields, and sets
the *behaviour fields*: the family knowledge (fused projections, fp32 routers, norm
offsets, which attention implementations transformers offers, how a layer is built)
that the formulas in the other modules read.  This module is the only place that looks
at ``model_type``: adding a family means one reader here, registered in
:data:`FAMILIES`, and its tests.  Configs are read as JSON data: no remote code ever runs.
Every field is validated (:mod:`memlib.config_reader`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Callable

from .catalog import load_config
from .config_reader import ConfigReader
from .validation import safe_text

#: How transformers builds a decoder layer, which decides what it keeps (chapter 03).
BLOCK_STYLES = ("llama", "gpt2", "opt", "falcon")


@dataclass(frozen=True)
class ModelSpec:
    """The architecture facts that memory depends on, in one shape for every family.

    Attention: ``num_heads`` query heads, ``num_kv_heads`` key/value heads of size
    ``head_dim``.  MLA models (DeepSeek) set ``kv_lora_rank`` and friends instead.
    ``layer_types[i]`` is ``"full"`` or ``"sliding"``; ``moe_layers[i]`` says whether
    layer ``i`` routes to experts.  The fields after "behaviour" are family knowledge,
    set by the family's reader (chapter 01 explains the architecture fields, chapter 03
    the behaviour fields).
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
    pre_norm: bool = True             # each block's norm comes before it; False: OPT-350m's post-LN
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
    # behaviour: family knowledge that decides what transformers allocates (chapter 03)
    family: str = "llama"             # the reader that built this spec (aliases share one)
    block_style: str = "llama"        # how a layer is built: llama | gpt2 | opt | falcon
    fused_qkv: bool = False           # q, k and v are one matrix (GPT-2, Falcon, Phi-3)
    fused_gate_up: bool = False       # gate and up are one matrix (Phi-3)
    qkv_views: bool = False           # q/k/v are views of the fused output, which then stays alive (Phi-3)
    norm_plus_one: bool = False       # RMSNorm multiplies by (1 + w), in fp32 (Gemma 2)
    router_fp32: bool = False         # the router upcasts its input and weight to fp32 (DeepSeek)
    attention_impls: tuple = ("sdpa", "eager")   # what transformers offers; the first is the default
    eager_mask: bool = True           # eager attention builds an explicit (B, 1, S, S) mask
    autocast_caches_weights: bool = True  # False where linears compute x @ W.T (Falcon): no cache hit
    positions_per_sequence: bool = False  # the learned position output is (B, S, H), not (1, S, H) (OPT)
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

    def __hash__(self):
        # every estimate caches on the spec: hash its fields once, not on every call
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(tuple(getattr(self, f.name) for f in fields(self) if f.compare))
            object.__setattr__(self, "_hash", h)
        return h

    def describe(self) -> dict:
        """The identity of this spec in a few JSON-ready facts (the CLI's catalog rows)."""
        return {"name": self.name, "model_type": self.model_type, "family": self.family,
                "attention": self.attention_kind, "layers": self.num_layers, "moe": self.is_moe}

    def __repr__(self):
        return (f"ModelSpec({self.name!r}, {self.model_type}, layers={self.num_layers}, "
                f"hidden={self.hidden_size}, heads={self.num_heads}/{self.num_kv_heads}x{self.head_dim}, "
                f"{self.attention_kind}{', MoE' if self.is_moe else ''})")


# ---------------------------------------------------------------------------------------
# the family readers: config keys -> shared fields + behaviour fields

LAYER_KINDS = {"full_attention": "full", "sliding_attention": "sliding"}


def _layer_types(r: ConfigReader, n_layers: int, default_pattern: Callable[[int], bool] | None):
    """``layer_types`` from the config's ``layer_types`` list, else ``default_pattern``."""
    given = r.choice_list("layer_types", n_layers, LAYER_KINDS)
    if given is not None:
        return given
    if default_pattern is None:
        return ("full",) * n_layers
    return tuple("sliding" if default_pattern(i) else "full" for i in range(n_layers))


def _head_dim(r: ConfigReader, hidden: int, heads: int, *keys) -> int:
    """An explicit ``head_dim``, else ``hidden / heads``, which must then divide evenly."""
    if keys and any(r.has(k) for k in keys):
        return r.count(*keys)
    if hidden % heads:
        raise r.error("num_attention_heads", f"{heads} does not divide hidden_size={hidden} "
                                             f"(give head_dim explicitly, or use a divisor)")
    return hidden // heads


def _decoder_common(r: ConfigReader, **over) -> dict:
    H = r.count("hidden_size")
    nh = r.count("num_attention_heads")
    L = r.count("num_hidden_layers")
    d = dict(
        vocab_size=r.count("vocab_size"), hidden_size=H, num_layers=L, num_heads=nh,
        num_kv_heads=r.count("num_key_value_heads", default=nh),
        head_dim=_head_dim(r, H, nh, "head_dim"),
        intermediate_size=r.count("intermediate_size"),
        max_position_embeddings=r.count("max_position_embeddings"),
        tie_word_embeddings=r.flag("tie_word_embeddings", False),
    )
    d.update(over)
    return d


def _llama(r: ConfigReader) -> dict:
    bias = r.flag("attention_bias")
    d = _decoder_common(r, qkv_bias=bias, o_bias=bias, mlp_bias=r.flag("mlp_bias"),
                        attention_dropout=r.probability("attention_dropout"))
    window = r.opt_count("sliding_window")
    use_sw = r.flag("use_sliding_window", True) and window is not None
    d["sliding_window"] = window if use_sw else None
    d["layer_types"] = _layer_types(r, d["num_layers"], (lambda i: True) if use_sw else None)
    return d


def _experts(r: ConfigReader, experts_key: str, optional: bool = False) -> dict:
    """The routed-expert counts, checked against each other (1 <= top-k <= experts).

    ``optional``: the family may have no routed experts at all (DeepSeek's dense configs).
    """
    E = r.count(experts_key, default=0, minimum=0) if optional else r.count(experts_key)
    k = r.count("num_experts_per_tok", default=0, minimum=0) if optional else r.count("num_experts_per_tok")
    if k > E:
        raise r.error("num_experts_per_tok", f"{k} exceeds the {E} experts of {experts_key!r}")
    if E and not k:
        raise r.error("num_experts_per_tok", f"must be >= 1 when {experts_key}={E}")
    return dict(num_experts=E, experts_per_token=k)


def _mixtral(r: ConfigReader) -> dict:
    d = _llama(r)
    d.update(_experts(r, "num_local_experts"))
    d.update(moe_intermediate_size=d["intermediate_size"], moe_layers=(True,) * d["num_layers"])
    return d


def _qwen2(r: ConfigReader) -> dict:
    d = _decoder_common(r, qkv_bias=True, attention_dropout=r.probability("attention_dropout"))
    L = d["num_layers"]
    window = r.opt_count("sliding_window")
    use_sw = r.flag("use_sliding_window", False) and window is not None
    max_window_layers = r.count("max_window_layers", default=L, minimum=0, maximum=max(L, 1) * 1000)
    d["sliding_window"] = window if use_sw else None
    d["layer_types"] = _layer_types(r, L, (lambda i: i >= max_window_layers) if use_sw else None)
    return d


def _qwen3(r: ConfigReader) -> dict:
    d = _qwen2(r)
    bias = r.flag("attention_bias")
    d.update(qkv_bias=bias, o_bias=bias, qk_norm=True)
    return d


def _qwen3_moe(r: ConfigReader) -> dict:
    d = _qwen3(r)
    L = d["num_layers"]
    step = r.count("decoder_sparse_step", default=1)
    mlp_only = set(r.index_list("mlp_only_layers", L))
    d.update(_experts(r, "num_experts"))
    d.update(moe_intermediate_size=r.count("moe_intermediate_size"),
             moe_layers=tuple((i not in mlp_only) and (i + 1) % step == 0 for i in range(L)))
    return d


def _deepseek(r: ConfigReader) -> dict:
    d = _decoder_common(r)
    L = d["num_layers"]
    first_dense = r.count("first_k_dense_replace", default=0, minimum=0)
    freq = r.count("moe_layer_freq", default=1)
    d.update(_experts(r, "n_routed_experts", optional=True))
    E = d["num_experts"]
    moe_inter = r.count("moe_intermediate_size")
    bias = r.flag("attention_bias")
    d.update(
        moe_intermediate_size=moe_inter,
        shared_intermediate_size=moe_inter * r.count("n_shared_experts", default=0, minimum=0, maximum=1024),
        moe_layers=tuple(E > 0 and i >= first_dense and i % freq == 0 for i in range(L)),
        q_lora_rank=r.opt_count("q_lora_rank"),
        kv_lora_rank=r.count("kv_lora_rank"),
        qk_nope_head_dim=r.count("qk_nope_head_dim"),
        qk_rope_head_dim=r.count("qk_rope_head_dim"),
        v_head_dim=r.count("v_head_dim"),
        qkv_bias=bias, o_bias=bias, layer_types=("full",) * L,
        router_fp32=True,        # DeepSeek's router: F.linear(x.float(), w.float())
    )
    d["head_dim"] = d["qk_nope_head_dim"] + d["qk_rope_head_dim"]
    return d


def _softcap(r: ConfigReader, key: str, default: float) -> float | None:
    """A soft-cap value: absent means ``default``, null means no soft-capping."""
    if key in r.cfg and r.cfg[key] is None:
        return None
    return r.number(key, default=default, minimum=0.0, open_min=True)


def _gemma2(r: ConfigReader) -> dict:
    bias = r.flag("attention_bias")
    d = _decoder_common(r, tie_word_embeddings=r.flag("tie_word_embeddings", True), qkv_bias=bias,
                        o_bias=bias, norms_per_layer=4, attention_dropout=r.probability("attention_dropout"),
                        attn_softcap=_softcap(r, "attn_logit_softcapping", 50.0),   # Gemma2Config defaults
                        final_softcap=_softcap(r, "final_logit_softcapping", 30.0),
                        norm_plus_one=True,
                        # transformers runs Gemma 2 eagerly: its SDPA path has no soft-capping
                        attention_impls=("eager",))
    d["sliding_window"] = r.count("sliding_window")
    d["layer_types"] = _layer_types(r, d["num_layers"], lambda i: i % 2 == 0)
    return d


def _phi3(r: ConfigReader) -> dict:
    d = _decoder_common(r, attention_dropout=r.probability("attention_dropout"),
                        hidden_dropout=r.probability("resid_pdrop"),
                        embedding_dropout=r.probability("embd_pdrop"),
                        fused_qkv=True, fused_gate_up=True, qkv_views=True)
    window = r.opt_count("sliding_window")
    d["sliding_window"] = window
    d["layer_types"] = _layer_types(r, d["num_layers"], (lambda i: True) if window else None)
    return d


def _gpt2(r: ConfigReader) -> dict:
    H = r.count("n_embd", "hidden_size")
    nh = r.count("n_head", "num_attention_heads")
    L = r.count("n_layer", "num_hidden_layers")
    P = r.count("n_positions", "max_position_embeddings")
    return dict(vocab_size=r.count("vocab_size"), hidden_size=H, num_layers=L, num_heads=nh,
                num_kv_heads=nh, head_dim=_head_dim(r, H, nh), intermediate_size=r.count("n_inner", default=4 * H),
                max_position_embeddings=P, tie_word_embeddings=r.flag("tie_word_embeddings", True),
                learned_positions=P, norm="layer", qkv_bias=True, o_bias=True, mlp_bias=True,
                gated_mlp=False, layer_types=("full",) * L,
                attention_dropout=r.probability("attn_pdrop", default=0.1),
                hidden_dropout=r.probability("resid_pdrop", default=0.1),
                embedding_dropout=r.probability("embd_pdrop", default=0.1),
                block_style="gpt2", fused_qkv=True, eager_mask=False)


def _opt(r: ConfigReader) -> dict:
    H = r.count("hidden_size")
    nh = r.count("num_attention_heads")
    L = r.count("num_hidden_layers")
    P = r.count("max_position_embeddings")
    bias = r.flag("enable_bias", True)
    pre_ln = r.flag("do_layer_norm_before", True)
    return dict(vocab_size=r.count("vocab_size"), hidden_size=H, num_layers=L, num_heads=nh,
                num_kv_heads=nh, head_dim=_head_dim(r, H, nh), intermediate_size=r.count("ffn_dim"),
                max_position_embeddings=P, tie_word_embeddings=r.flag("tie_word_embeddings", True),
                embed_dim=r.count("word_embed_proj_dim", default=H),
                learned_positions=P + 2,  # OPTLearnedPositionalEmbedding keeps an offset of 2 rows
                norm="layer", final_norm=pre_ln and not r.flag("_remove_final_layer_norm", False),
                qkv_bias=bias, o_bias=bias, mlp_bias=bias, gated_mlp=False, layer_types=("full",) * L,
                attention_dropout=r.probability("attention_dropout"),
                hidden_dropout=r.probability("dropout", default=0.1),
                pre_norm=pre_ln, block_style="opt", positions_per_sequence=True)


def _falcon(r: ConfigReader) -> dict:
    refined_web = r.cfg.get("model_type") == "RefinedWeb"      # Falcon-40B style original configs
    H = r.count("hidden_size", "n_embed")
    nh = r.count("num_attention_heads", "n_head")
    L = r.count("num_hidden_layers", "n_layer")
    new_arch = r.flag("new_decoder_architecture", refined_web)
    if new_arch:
        nkv = r.count("num_kv_heads", "n_head_kv", default=nh)
    elif r.flag("multi_query", True):
        nkv = 1
    else:
        nkv = nh
    parallel = r.flag("parallel_attn", True)
    n_ln = (2 if r.count("num_ln_in_parallel_attn", default=2) == 2 else 1) if new_arch else (1 if parallel else 2)
    bias = r.flag("bias", False)
    return dict(vocab_size=r.count("vocab_size"), hidden_size=H, num_layers=L, num_heads=nh,
                num_kv_heads=nkv, head_dim=_head_dim(r, H, nh, "head_dim"),
                intermediate_size=r.count("ffn_hidden_size", default=4 * H),
                max_position_embeddings=r.count("max_position_embeddings", default=2048),
                tie_word_embeddings=r.flag("tie_word_embeddings", True), norm="layer",
                norms_per_layer=n_ln, qkv_bias=bias, o_bias=bias, mlp_bias=bias, gated_mlp=False,
                parallel_attn=parallel or new_arch, new_decoder_architecture=new_arch,
                layer_types=("full",) * L, attention_dropout=r.probability("attention_dropout"),
                hidden_dropout=r.probability("hidden_dropout"),
                block_style="falcon", fused_qkv=True, eager_mask=False, autocast_caches_weights=False)


#: ``model_type`` -> (family name, reader).  Aliases share a reader.
FAMILIES: dict[str, tuple[str, Callable[[ConfigReader], dict]]] = {
    "llama": ("llama", _llama), "mistral": ("llama", _llama), "mixtral": ("mixtral", _mixtral),
    "qwen2": ("qwen2", _qwen2), "qwen3": ("qwen3", _qwen3), "qwen3_moe": ("qwen3_moe", _qwen3_moe),
    "deepseek_v2": ("deepseek", _deepseek), "deepseek_v3": ("deepseek", _deepseek),
    "gemma2": ("gemma2", _gemma2), "phi3": ("phi3", _phi3), "gpt2": ("gpt2", _gpt2), "opt": ("opt", _opt),
    "falcon": ("falcon", _falcon), "RefinedWeb": ("falcon", _falcon), "RefinedWebModel": ("falcon", _falcon),
}

#: Original Falcon configs (``RefinedWeb*``) use old key names that transformers' ``falcon``
#: classes do not alias; the bench renames them before building (chapter 08).
_FALCON_RENAMES = {"n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
                   "n_head_kv": "num_kv_heads", "n_embed": "hidden_size"}


def supported_model_types() -> list[str]:
    """Every ``model_type`` memlib reads (chapter 01)."""
    return sorted(FAMILIES)


def transformers_config(cfg: dict) -> tuple[dict, list[str]]:
    """The config as transformers' own classes read it, and notes on what was changed.

    Original Falcon configs (``RefinedWebModel``/``RefinedWeb``) are mapped to ``falcon``
    with their old keys renamed (``n_layer`` -> ``num_hidden_layers``, ...), and
    ``RefinedWeb`` (Falcon-40B style) sets ``new_decoder_architecture``; transformers'
    ``FalconConfig`` has no alias for these keys and would otherwise use its defaults.
    Used by the bench (chapter 08); the input dict is not modified.
    """
    cfg, notes = dict(cfg), []
    mt = cfg.get("model_type")
    if mt in ("RefinedWebModel", "RefinedWeb"):
        for old, new in _FALCON_RENAMES.items():
            if old in cfg:
                if new not in cfg:
                    cfg[new] = cfg[old]
                cfg.pop(old)
                notes.append(f"renamed {old} -> {new}")
        if mt == "RefinedWeb" and "new_decoder_architecture" not in cfg:
            cfg["new_decoder_architecture"] = True
            notes.append("set new_decoder_architecture=True (RefinedWeb)")
        cfg["model_type"] = "falcon"
        notes.append(f"model_type {mt} -> falcon")
    return cfg, notes


def transformers_architecture(cfg: dict) -> str:
    """The architecture name transformers builds for a config cleaned by :func:`transformers_config` (chapter 08)."""
    return cfg["model_type"]


def config_model_type(name: str, cfg: dict) -> str:
    """The config's ``model_type``, checked: a string memlib knows (chapter 01)."""
    mt = cfg.get("model_type")
    supported = ", ".join(supported_model_types())
    if mt is None:
        raise ValueError(f"config of {safe_text(name)} is missing required field 'model_type'; "
                         f"supported: {supported}")
    if not isinstance(mt, str):
        raise ValueError(f"config field 'model_type' of {safe_text(name)}: must be a string; "
                         f"supported: {supported}")
    if mt not in FAMILIES:
        raise ValueError(f"model_type {safe_text(repr(mt))} of {safe_text(name)} is not supported; "
                         f"supported: {supported}")
    return mt


def load_spec(model) -> ModelSpec:
    """Read ``model`` (catalog name, config.json path, dict or ModelSpec) into a :class:`ModelSpec` (chapter 01).

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
    mt = config_model_type(name, cfg)
    family, reader = FAMILIES[mt]
    r = ConfigReader(name, cfg)
    fields = reader(r)
    fields.setdefault("embed_dim", fields["hidden_size"])
    fields.setdefault("block_style", "llama")
    if not fields.get("moe_layers"):
        fields["moe_layers"] = (False,) * fields["num_layers"]
    if fields["num_heads"] % fields["num_kv_heads"]:
        key = next((k for k in ("num_key_value_heads", "num_kv_heads", "n_head_kv") if k in cfg),
                   "num_key_value_heads")
        raise r.error(key, f"{fields['num_kv_heads']} does not divide "
                                             f"num_attention_heads={fields['num_heads']}")
    return ModelSpec(name=name, model_type=mt, family=family, raw=cfg, **fields)


__all__ = ["ModelSpec", "load_spec", "supported_model_types"]
