"""Bad input, from every door: a clear one-line error naming the field, or the right number.

A table of hand-made bad configs and arguments, and hypothesis-generated ones, through the
API, the command line (in process: ``memlib.cli.main``) and the explorers.  The promise:

* no traceback: the API raises ``ValueError`` only; the CLI exits with status 2 and one line
  on stderr; an explorer shows a message and no stale result;
* the message names the field (the config key or the argument);
* results are never negative, and array results equal the per-value results;
* nothing read from a config reaches the terminal unescaped.
"""
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memlib
from memlib.cli import main as cli_main

LLAMA = {"model_type": "llama", "vocab_size": 1000, "hidden_size": 256, "num_attention_heads": 8,
         "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 512,
         "max_position_embeddings": 4096, "tie_word_embeddings": False}
QWEN3_MOE = {**LLAMA, "model_type": "qwen3_moe", "head_dim": 32, "num_experts": 8, "num_experts_per_tok": 2,
             "moe_intermediate_size": 64}
GEMMA2 = {**LLAMA, "model_type": "gemma2", "head_dim": 32, "sliding_window": 512}
MISTRAL = {**LLAMA, "model_type": "mistral", "sliding_window": 512}


def with_(base, **over):
    out = dict(base)
    for k, v in over.items():
        if v is _DROP:
            out.pop(k, None)
        else:
            out[k] = v
    return out


_DROP = object()

#: (config, the field the message must name)
BAD_CONFIGS = [
    (with_(LLAMA, num_hidden_layers=float("inf")), "num_hidden_layers"),
    (with_(LLAMA, num_hidden_layers=-float("inf")), "num_hidden_layers"),
    (with_(LLAMA, hidden_size=float("nan")), "hidden_size"),
    (with_(LLAMA, vocab_size=1e400), "vocab_size"),                       # json's Infinity
    (with_(LLAMA, num_hidden_layers=1e9), "num_hidden_layers"),           # a sane bound, not a MemoryError
    (with_(LLAMA, hidden_size=257), "num_attention_heads"),               # 257 / 8 heads
    (with_(LLAMA, hidden_size=16, num_attention_heads=32, num_key_value_heads=32), "num_attention_heads"),
    (with_(LLAMA, num_key_value_heads=3), "num_key_value_heads"),         # 8 heads / 3
    (with_(LLAMA, model_type=["llama"]), "model_type"),
    (with_(LLAMA, model_type={"a": 1}), "model_type"),
    (with_(LLAMA, model_type="mamba"), "model_type"),
    (with_(LLAMA, model_type=_DROP), "model_type"),
    (with_(LLAMA, intermediate_size=_DROP), "intermediate_size"),
    (with_(LLAMA, layer_types=5), "layer_types"),
    (with_(LLAMA, layer_types={"0": "full_attention"}), "layer_types"),
    (with_(LLAMA, layer_types=["full_attention", "global"]), "layer_types"),
    (with_(LLAMA, layer_types=["full_attention"]), "layer_types"),       # 1 entry for 2 layers
    (with_(LLAMA, tie_word_embeddings="maybe"), "tie_word_embeddings"),
    (with_(LLAMA, tie_word_embeddings=1), "tie_word_embeddings"),
    (with_(LLAMA, attention_dropout=float("nan")), "attention_dropout"),
    (with_(LLAMA, attention_dropout=-0.5), "attention_dropout"),
    (with_(LLAMA, attention_dropout=5), "attention_dropout"),
    (with_(LLAMA, attention_dropout=1.0), "attention_dropout"),
    (with_(LLAMA, hidden_size="4096"), "hidden_size"),
    (with_(LLAMA, hidden_size=True), "hidden_size"),
    (with_(LLAMA, hidden_size=4096.5), "hidden_size"),
    (with_(LLAMA, sliding_window=0), "sliding_window"),
    (with_(GEMMA2, attn_logit_softcapping=[50.0]), "attn_logit_softcapping"),
    (with_(GEMMA2, final_logit_softcapping="30"), "final_logit_softcapping"),
    (with_(GEMMA2, final_logit_softcapping=-1), "final_logit_softcapping"),
    (with_(QWEN3_MOE, mlp_only_layers=3), "mlp_only_layers"),
    (with_(QWEN3_MOE, mlp_only_layers=[[1]]), "mlp_only_layers"),
    (with_(QWEN3_MOE, mlp_only_layers=[7]), "mlp_only_layers"),           # no layer 7 of 2
    (with_(QWEN3_MOE, num_experts_per_tok=9), "num_experts_per_tok"),     # top-9 of 8 experts
    (with_(QWEN3_MOE, num_experts_per_tok=0), "num_experts_per_tok"),
    (with_(MISTRAL, use_sliding_window="sometimes"), "use_sliding_window"),
]


@pytest.mark.parametrize("cfg,field", BAD_CONFIGS, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_CONFIGS)])
def test_bad_config_names_the_field_everywhere(cfg, field, tmp_path, capsys):
    # the API
    for call in (memlib.load_spec, memlib.total_params, lambda c: memlib.kv_cache(c, 16),
                 lambda c: memlib.train_memory(c, 1, 16)):
        with pytest.raises(ValueError, match=field) as e:
            call(cfg)
        assert "\n" not in str(e.value)
    # the command line, from a file
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg, allow_nan=True))
    for argv in (["params", str(path)], ["kv", str(path), "--seq-len", "16"],
                 ["train", str(path), "--batch-size", "1", "--seq-len", "16"]):
        assert run_cli(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and field in err and "Traceback" not in err, err
        assert str(path) in err or "model_type" in field


def test_strings_true_and_false_are_read_as_booleans():
    # "false" used to be True (bool("false")): tie_word_embeddings flipped the parameter count
    tied, untied = (memlib.total_params(with_(LLAMA, tie_word_embeddings=v)) for v in ("true", "false"))
    assert untied - tied == 1000 * 256                               # the separate lm_head: V x H
    assert memlib.total_params(with_(LLAMA, attention_bias="false")) == memlib.total_params(LLAMA)
    no_window = memlib.load_spec(with_(MISTRAL, use_sliding_window="false"))
    assert no_window.sliding_window is None


def test_huge_exact_integers_are_accepted():
    # 2**53 + 1 is not a float: it is still a whole number
    spec = memlib.load_spec(with_(LLAMA, max_position_embeddings=2**31 - 1))
    assert spec.max_position_embeddings == 2**31 - 1
    assert memlib.kv_bytes(LLAMA, 16, 2**53 + 1) == (2**53 + 1) * 16 * 2 * 2 * 2 * 32 * 2


def test_config_files_that_cannot_be_read(tmp_path, capsys):
    cases = {"utf16.json": json.dumps(LLAMA).encode("utf-16"), "latin1.json": '{"é": 1}'.encode("latin-1"),
             "binary.json": bytes(range(256)), "deep.json": ("[" * 100_000 + "]" * 100_000).encode()}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=name) as e:
            memlib.load_spec(str(tmp_path / name))
        assert "\n" not in str(e.value)
    long_name = str(tmp_path / ("x" * 300 + ".json"))
    with pytest.raises(ValueError, match="model"):
        memlib.load_spec(long_name)
    assert cli_main(["params", long_name]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_names_from_configs_are_escaped(tmp_path, capsys):
    evil = with_(LLAMA, _name_or_path="\x1b]0;pwned\x07\x1b[2J\nsecond line")
    b = memlib.kv_cache(evil, 16)
    assert "\x1b" not in b.table() and "\x07" not in b.table() and "\n" not in b.title
    with pytest.raises(ValueError) as e:
        memlib.kv_cache(with_(evil, hidden_size=0), 16)
    assert "\x1b" not in str(e.value) and "\n" not in str(e.value)
    path = tmp_path / "evil\x1b[2J\nname.json"
    path.write_text(json.dumps(with_(LLAMA, hidden_size=-1)))
    assert cli_main(["params", str(path)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and err.count("\n") == 1


#: (argv, the field the message must name)
BAD_ARGS = [
    (["kv", "Llama-3.1-8B", "--seq-len", "0"], "seq_len"),
    (["kv", "Llama-3.1-8B", "--seq-len", "1e30"], "seq_len"),
    (["kv", "Llama-3.1-8B", "--seq-len", "abc"], "seq-len"),
    (["kv", "Llama-3.1-8B", "--seq-len", "nan"], "seq-len"),
    (["kv", "Llama-3.1-8B", "--seq-len", "16", "--batch-size", "-1"], "batch_size"),
    (["kv", "Llama-3.1-8B", "--seq-len", "16", "--kv-dtype", "fp7"], "kv-dtype"),
    (["kv", "Llama-3.1-8B", "--seq-len", "16", "--block-size", "0"], "block_size"),
    (["params", "Llama-3.1-8B", "--dtype", "gguf:Q9_K"], "dtype"),
    (["params", "Llama-9-1T"], "model"),
    (["inference", "gpt2", "--batch-size", "1", "--seq-len", "2048"], "seq_len"),
    (["train", "gpt2", "--batch-size", "1", "--seq-len", "16", "--grad-accum", "0"], "grad_accum"),
    (["train", "gpt2", "--batch-size", "1", "--seq-len", "16", "--runtime", "minimal"], "runtime"),
    (["lora", "Llama-2-7b", "--batch-size", "1", "--seq-len", "16", "--rank", "0"], "rank"),
    (["lora", "Llama-2-7b", "--batch-size", "1", "--seq-len", "16", "--targets", "attn_proj"], "targets"),
    (["lora", "Llama-2-7b", "--batch-size", "1", "--seq-len", "16", "--lora-dropout", "1.5"], "lora_dropout"),
]


def run_cli(argv) -> int:
    """``python -m memlib ARGV`` in process: argparse's own errors exit through SystemExit."""
    try:
        return cli_main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("argv,field", BAD_ARGS, ids=[" ".join(a[:1] + a[2:4]) for a, _ in BAD_ARGS])
def test_bad_arguments_exit_2_with_one_line(argv, field, capsys):
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and field in err and "Traceback" not in err, err


def test_huge_batches_stay_exact_or_are_refused():
    # a sliding-window model at 10^15 sequences: exact Python ints, never negative
    b = memlib.kv_cache("Mistral-7B-v0.1", 8192, 10**15)
    assert b.total == 10**15 * 32 * 4095 * 8 * 128 * 2 * 2 > 0
    assert memlib.inference_memory("Mistral-7B-v0.1", 10**18, 8192).total > 0
    # arrays either hold the exact answer or are refused, naming the field
    with pytest.raises(ValueError, match="batch_size"):
        memlib.kv_cache("Mistral-7B-v0.1", 131072 // 4, np.array([10**12, 10**13]))
    with pytest.raises(ValueError, match="batch_size"):
        memlib.train_memory("Qwen3-0.6B", np.array([1, 10**15]), 4096)
    with pytest.raises(ValueError, match="seq_len"):
        memlib.kv_cache("gpt2", np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match="batch_size"):
        memlib.kv_cache("gpt2", 16, np.array([], dtype=np.int64))


def test_weight_memory_base_dtype_is_a_real_dtype():
    with pytest.raises(ValueError, match="base_dtype"):
        memlib.weight_memory("Llama-3.1-8B", "gptq", base_dtype="int4")


def test_lora_targets_as_a_list_of_groups_and_none():
    one = memlib.lora_params("Llama-2-7b", 16, "all-linear")
    assert memlib.lora_params("Llama-2-7b", 16, ["all-linear"]) == one
    assert memlib.lora_params("Llama-2-7b", 16, ["attention", "mlp"]) == one
    with pytest.raises(ValueError, match="targets"):
        memlib.lora_memory("Llama-2-7b", 1, 16, targets=None)


def test_broken_pipe_is_quiet():
    import subprocess
    import sys
    out = subprocess.run(f"{sys.executable} -m memlib catalog --json | head -1", shell=True, capture_output=True,
                         text=True)
    assert out.stdout.strip() == "[" and "Traceback" not in out.stderr and "Error" not in out.stderr


def test_a_catalog_name_shadowed_by_a_directory_says_which_was_read(tmp_path, monkeypatch, capsys):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps(LLAMA))
    monkeypatch.chdir(tmp_path)
    assert cli_main(["params", "gpt2", "--json"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["params"] == 124_439_808               # the catalog's GPT-2
    assert "./gpt2" in cap.err and "catalog" in cap.err
    assert cli_main(["params", "./gpt2", "--json"]) == 0               # the path, as typed
    assert json.loads(capsys.readouterr().out)["params"] == memlib.total_params(LLAMA)


# -- hypothesis: any value in any field --------------------------------------------------------
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8) | st.sampled_from(["true", "false", "full_attention", "sliding_attention"]),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
    max_leaves=6)
FIELDS = sorted(set(LLAMA) | set(QWEN3_MOE) | set(GEMMA2) | {"layer_types", "mlp_only_layers", "sliding_window",
                                                             "attention_bias", "head_dim", "use_sliding_window",
                                                             "attention_dropout", "attn_logit_softcapping"})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([LLAMA, QWEN3_MOE, GEMMA2, MISTRAL]), st.sampled_from(FIELDS), JSON_VALUES)
def test_any_value_in_any_field_gives_a_number_or_a_named_error(base, field, value):
    cfg = dict(base, **{field: value})
    try:
        spec = memlib.load_spec(cfg)
    except ValueError as e:
        msg = str(e)
        assert "\n" not in msg and (field in msg or "model_type" in msg or "heads" in msg or "experts" in msg), msg
        return
    s = min(64, spec.max_position_embeddings)
    for b in (memlib.weight_memory(cfg), memlib.kv_cache(cfg, s, 2), memlib.inference_memory(cfg, 1, s),
              memlib.train_memory(cfg, 1, s)):
        assert all(v >= 0 for v in b.components.values()) and b.total >= 0


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["Qwen3-0.6B", "gpt2", "Mistral-7B-v0.1", "gemma-2-9b", "DeepSeek-V2-Lite", "opt-13b"]),
       st.lists(st.integers(1, 16), min_size=1, max_size=4), st.integers(1, 2048))
def test_array_results_equal_the_per_value_results(model, batches, s):
    s = min(s, memlib.load_spec(model).max_position_embeddings)
    b = np.array(batches)
    for fn in (lambda x: memlib.kv_cache(model, s, x).total, lambda x: memlib.inference_memory(model, x, s).total,
               lambda x: memlib.train_memory(model, x, s).total):
        arr = fn(b)
        assert arr.tolist() == [fn(int(x)) for x in b]
    seqs = np.array(sorted({max(1, s // d) for d in (1, 2, 3)}))
    assert memlib.kv_cache(model, seqs, 3).total.tolist() == [memlib.kv_cache(model, int(x), 3).total for x in seqs]
    assert not math.isnan(float(seqs.sum()))


# -- the explorers: a message for any failure, never a stale result -----------------------------
EXPLORERS = {
    "anatomy_explorer": [dict(seq_len=0), dict(seq_len=10**9), dict(model=with_(LLAMA, hidden_size=257))],
    "weights_explorer": [dict(model=with_(LLAMA, hidden_size=float("nan")))],
    "quantization_explorer": [dict(group_size=0), dict(group_size=-5)],
    "kv_explorer": [dict(batch_size=2**63 - 1), dict(batch_size=0), dict(seq_len=-1), dict(seq_len=200_000)],
    "concurrency_explorer": [dict(seq_len=0), dict(seq_len=10**7)],
    "activation_explorer": [dict(batch_size=0), dict(seq_len=10**6), dict(batch_size=2**62)],
    "training_explorer": [dict(grad_accum=0), dict(batch_size=-1), dict(seq_len=0)],
    "lora_explorer": [dict(rank=0), dict(targets="attn_proj"), dict(targets=" , "), dict(batch_size=0)],
}


@pytest.mark.parametrize("name", sorted(EXPLORERS))
def test_explorers_show_a_message_for_any_failure(name):
    import memlib.widgets as w
    ex = getattr(w, name)()
    good = dict(ex.values)
    assert ex.error is None and ex.result is not None
    for bad in EXPLORERS[name]:
        if "model" in bad:      # a custom config joins the dropdown's options
            ex.controls["model"].options = [("custom", bad["model"])] + list(ex.controls["model"].options)
        assert ex.set(**bad) is None, bad
        assert ex.result is None and ex.error and "\n" not in ex.error, (bad, ex.error)
        assert ex.image.layout.display == "none" and ex.text.value == ""       # nothing stale on screen
        assert "⚠" in ex.message.value
        assert ex.set(**good) is not None and ex.error is None                 # and it recovers


def test_an_explorer_message_names_the_control_the_reader_sees():
    from memlib.widgets.weights import anatomy_explorer
    ex = anatomy_explorer()
    ex.set(seq_len=10**9)
    assert ex.error.startswith("tokens/user (seq_len:"), ex.error
