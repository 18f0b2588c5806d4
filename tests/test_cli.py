"""The command line: JSON keys are a contract; bad arguments exit non-zero with one line."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args):
    return subprocess.run([sys.executable, "-m", "memlib", *args], capture_output=True, text=True, cwd=ROOT)


def test_params_json_contract():
    out = run("params", "gpt2", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    # GPT-2 small: 124,439,808 parameters (published; tied lm_head counted once)
    assert d["params"] == 124_439_808 and d["active_params"] == 124_439_808
    assert d["weight_bytes"] == 2 * 124_439_808


def test_params_dtype_and_table():
    d = json.loads(run("params", "gpt2", "--dtype", "fp32", "--json").stdout)
    assert d["weight_bytes"] == 4 * 124_439_808
    out = run("params", "gpt2")
    assert out.returncode == 0 and "124,439,808" in out.stdout


def test_kv_json_contract():
    out = run("kv", "Llama-3.1-8B", "--seq-len", "8192", "--batch-size", "2", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    # 32 layers x 8 KV heads x 128 head_dim x 2 (K, V) x 2 bytes = 131,072 B/token
    assert d["bytes_per_token"] == 32 * 8 * 128 * 2 * 2
    assert d["bytes"] == 2 * 8192 * 131_072


def test_kv_from_config_path(tmp_path):
    cfg = {"model_type": "llama", "vocab_size": 100, "hidden_size": 64, "num_attention_heads": 4,
           "num_key_value_heads": 1, "num_hidden_layers": 2, "intermediate_size": 128,
           "max_position_embeddings": 512}
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    d = json.loads(run("kv", str(p), "--seq-len", "10", "--kv-dtype", "fp8", "--json").stdout)
    assert d["bytes"] == 10 * 2 * 2 * 1 * 16 * 1   # tokens x layers x (K,V) x 1 head x 16 dims x 1 B


@pytest.mark.parametrize("args,needle", [
    (("kv", "gpt2", "--seq-len", "0"), "seq_len"),
    (("kv", "gpt2", "--seq-len", "99999"), "max_position_embeddings"),
    (("kv", "gpt2", "--seq-len", "x"), "--seq-len"),
    (("kv", "nope-model", "--seq-len", "8"), "catalog"),
    (("params", "gpt2", "--dtype", "fp12"), "dtype"),
    (("kv", "gpt2"), "--seq-len"),
])
def test_bad_arguments_one_line(args, needle):
    out = run(*args)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr


def test_train_json_contract():
    out = run("train", "Llama-3.1-8B", "--batch-size", "1", "--seq-len", "512", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["peak_phase"] in ("forward", "backward", "step")
    assert d["peak"] == sum(d["components"].values()) == d["phase_peak"][d["peak_phase"]]
    # bf16 AdamW: weights + two states, 3 x 2 bytes x 8,030,261,248 params, are always resident
    assert d["components"]["weights"] + d["components"]["optimizer"] == 3 * 2 * 8_030_261_248


def test_inference_json_contract():
    out = run("inference", "Qwen3-0.6B", "--batch-size", "2", "--seq-len", "1024", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["total"] == sum(d["components"].values())
    # 28 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes = 114,688 B/token; 2 x 1024 tokens
    assert d["components"]["kv_cache"] == 2 * 1024 * 114_688
    assert d["components"]["weights"] == 2 * 596_049_920


def test_lora_json_contract():
    d = json.loads(run("lora", "Llama-2-7b", "--batch-size", "1", "--seq-len", "256", "--rank", "8",
                       "--targets", "q,v", "--json").stdout)
    assert d["trainable_params"] == 4_194_304 and d["peak"] == sum(d["components"].values())


@pytest.mark.parametrize("args,needle", [
    (("train", "gpt2", "--batch-size", "1", "--seq-len", "4096"), "max_position_embeddings"),
    (("train", "gpt2", "--batch-size", "0", "--seq-len", "128"), "batch_size"),
    (("train", "gpt2", "--batch-size", "1", "--seq-len", "128", "--precision", "fp8"), "--precision"),
    (("inference", "gpt2", "--batch-size", "1"), "--seq-len"),
])
def test_estimate_bad_arguments_one_line(args, needle):
    out = run(*args)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr
