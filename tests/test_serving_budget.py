"""The serving budget (chapters 00, 02): requests that fit on a GPU, by hand arithmetic."""
import numpy as np

import memlib
from memlib.serving import concurrency, max_concurrency, max_requests, serving_breakdown
from small_configs import cfg

H100 = round(79.19 * 2**30)                          # the runtime total of an H100 80GB: vLLM's log line
                                                     # 'total_gpu_memory (79.19GiB)' (gateway-api-inference-extension#550)
LLAMA31_8B_PARAMS = 8_030_261_248                    # published; chapter 01 derives it


def test_concurrency_by_hand():
    c = cfg()
    weights = memlib.weight_memory(c, "bf16").total
    per_req = 2048 * 8192  # 2048 tokens x 8192 B/token, already a multiple of the block
    r = max_concurrency(c, 2048, gpu_memory=10**9, gpu_memory_utilization=0.5,
                        activation_reserve=10**6)
    assert r.meta["requests"] == (5 * 10**8 - weights - 10**6) // per_req


def test_concurrency_when_weights_do_not_fit():
    r = max_concurrency("Llama-3.1-70B", 1024, gpu_memory=24 * 10**9)
    assert r.meta["requests"] == 0 and "exceed" in r.meta["reason"]


def test_max_requests_agrees_with_max_concurrency_and_is_vectorised():
    s = np.array([1000, 4096, 32_768, 131_072])
    n = max_requests("Llama-3.1-8B", s, H100)
    assert n.dtype == np.int64
    assert n.tolist() == [max_concurrency("Llama-3.1-8B", int(x), H100).meta["requests"] for x in s]
    assert np.all(np.diff(n) <= 0)




def test_concurrency_on_named_gpus_by_hand():
    r = concurrency("Llama-3.1-8B", "H100 80GB", 4096)
    usable = int(H100 * 0.9)                         # 0.9 x 79.19 GiB = 71.27 GiB
    budget = usable - LLAMA31_8B_PARAMS * 2          # - 14.96 GiB of weights = 56.31 GiB
    per_request = 4096 * 131_072                     # 4096 is a whole number of 16-token blocks: 0.5 GiB
    assert r.meta["requests"] == budget // per_request == 112
    r = concurrency("Llama-3.1-8B", "A100 80GB", 1000, gpu_memory_utilization=0.5)
    per_request = 1008 * 131_072                     # 1000 tokens occupy 63 blocks of 16 = 1008 slots
    assert r.meta["kv_per_request"] == per_request
    assert r.meta["requests"] == (int(round(79.15 * 2**30) * 0.5) - 16_060_522_496) // per_request   # A100 80GB: PyTorch's 79.15 GiB


def test_serving_breakdown_is_weights_plus_kv():
    b = serving_breakdown("Llama-3.1-8B", batch_size=8, seq_len=8192)
    assert b["weights"] == 2 * LLAMA31_8B_PARAMS
    assert b["kv_cache"] == 8 * 8192 * 131_072
    assert b.kinds == {"weights": "model_state", "kv_cache": "kv"}
    assert memlib.serving_breakdown is serving_breakdown        # exported at the top level
