"""``python -m memlib rl`` (chapter 06): the JSON contract and bad input, in process."""
import json

import pytest

from memlib.cli import main as cli_main
from memlib.rl import rl_memory


def run(argv, capsys):
    try:
        rc = cli_main(argv)
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_json_contract(capsys):
    rc, out, _ = run(["rl", "Qwen3-0.6B", "--recipe", "grpo", "--batch-size", "1", "--seq-len", "512",
                      "--group-size", "4", "--beta", "0.04", "--json"], capsys)
    assert rc == 0
    d = json.loads(out)
    r = rl_memory("Qwen3-0.6B", "grpo", 1, 512, group_size=4, beta=0.04)
    assert d["peak"] == r.total and d["peak_phase"] == r.peak_phase == "train.backward"
    assert d["phases"] == r.phases
    assert set(d["roles"]) == {"policy", "reference", "rollout"}
    for name, role in d["roles"].items():
        assert set(role) >= {"peak", "phases", "components"}
        assert sum(role["components"].values()) == role["peak"]
    assert sum(role["peak"] for role in d["roles"].values()) == d["peak"]
    assert d["roles"]["reference"]["components"]["weights"] == 2 * 596_049_920   # bf16 Qwen3-0.6B
    assert d["sequences"] == 4 and d["kv_cache"] > 0


def test_json_colocated_lora_mixed_knobs(capsys):
    rc, out, _ = run(["rl", "Llama-3.1-8B", "--recipe", "grpo", "--batch-size", "2", "--seq-len", "1024",
                      "--group-size", "8", "--lora-rank", "16", "--colocate", "--gpu-memory-utilization", "0.3",
                      "--sleep", "all", "--json"], capsys)
    assert rc == 0
    d = json.loads(out)
    assert d["rollout"] == "vllm" and d["engine"]["sleep"] == "all" and d["lora_rank"] == 16
    assert "weights" not in d["roles"]["reference"]["components"]         # the base, adapters off
    rc, out, _ = run(["rl", "gpt2", "--recipe", "ppo", "--batch-size", "2", "--seq-len", "256", "--precision",
                      "mixed", "--json"], capsys)
    assert rc == 0 and set(json.loads(out)["roles"]) == {"policy", "reference", "reward", "critic", "rollout"}


def test_table_output(capsys):
    rc, out, _ = run(["rl", "gpt2", "--recipe", "dpo", "--batch-size", "2", "--seq-len", "256"], capsys)
    assert rc == 0 and "by role" in out and "peak:" in out


@pytest.mark.parametrize("argv,field", [
    (["--recipe", "rlhf"], "recipe"),
    (["--recipe", "dpo", "--group-size", "4"], "group_size"),
    (["--recipe", "grpo", "--beta", "-1"], "beta"),
    (["--recipe", "grpo", "--beta", "nan"], "beta"),
    (["--recipe", "grpo", "--lora-rank", "0"], "lora_rank"),
    (["--recipe", "grpo", "--lora-rank", "8", "--precision", "mixed"], "precision"),
    (["--recipe", "grpo", "--colocate", "--gpu-memory-utilization", "2"], "gpu_memory_utilization"),
    (["--recipe", "grpo", "--colocate", "--separate"], "rollout"),
    (["--recipe", "grpo", "--colocate", "--gpu", "TPU-v9"], "gpu"),
    (["--recipe", "dpo", "--colocate"], "rollout"),
    (["--recipe", "grpo", "--sleep", "deep"], "sleep"),
    (["--recipe", "grpo", "--reward-model", "Llama-9-1T"], "model"),
])
def test_bad_input_exits_2_with_one_line_naming_the_field(argv, field, capsys):
    rc, _, err = run(["rl", "Qwen3-0.6B", "--batch-size", "1", "--seq-len", "256"] + argv, capsys)
    assert rc == 2
    assert err.count("\n") == 1 and field in err and "Traceback" not in err, err


def test_bad_batch_and_length(capsys):
    for argv, field in ((["--batch-size", "0", "--seq-len", "256"], "batch_size"),
                        (["--batch-size", "1", "--seq-len", "99999"], "seq_len"),
                        (["--batch-size", "1.5", "--seq-len", "256"], "batch-size")):
        rc, _, err = run(["rl", "Qwen3-0.6B", "--recipe", "grpo"] + argv, capsys)
        assert rc == 2 and field in err and err.count("\n") == 1, err
