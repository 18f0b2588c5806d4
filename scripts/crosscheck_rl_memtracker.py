"""Cross-check the RL bench's counter with PyTorch's own MemTracker (every new scenario is checked this way).

    python scripts/crosscheck_rl_memtracker.py [--models tiny|catalog]

For each scenario, ``memlib.measure.rl.measure_rl`` runs with its :class:`RoleCounter`
replaced by a subclass that also runs ``torch.distributed._tools.mem_tracker.MemTracker``
over the same window (both iterations; MemTracker is told about the storages that exist
before counting, which the counter registers).  MemTracker's per-module hooks are turned
off (they register a gradient hook on every parameter, which fails on frozen ones, and
refuse a root module called twice in one window); its dispatch-level storage accounting,
which gives the peak, is untouched.  Printed: the counter's peak over both
iterations, MemTracker's peak ("Total" of its peak snapshot) and the difference in bytes.
Both count exact storage bytes on the CPU.  Nothing here is a test: it reports.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TINY = {
    "llama": {"model_type": "llama", "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 96,
              "max_position_embeddings": 256, "tie_word_embeddings": False},
    "qwen3": {"model_type": "qwen3", "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 32, "num_hidden_layers": 2, "intermediate_size": 96,
              "max_position_embeddings": 256, "tie_word_embeddings": True},
    "gpt2": {"model_type": "gpt2", "vocab_size": 128, "n_embd": 64, "n_head": 4, "n_layer": 2, "n_positions": 64},
}
SCENARIOS = [("dpo", {}), ("grpo", {"group_size": 4, "generate": False}),
             ("ppo", {"group_size": 2, "generate": False}), ("grpo", {"group_size": 4, "lora_rank": 8,
                                                                       "generate": False})]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", choices=["tiny", "catalog"], default="tiny")
    args = ap.parse_args()
    from torch.distributed._tools.mem_tracker import MemTracker

    import memlib.measure.rl as rl
    from memlib.measure.rl_counter import RoleCounter

    class Both(RoleCounter):
        last = None

        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.mt = MemTracker()
            # only MemTracker's storage accounting is compared: its per-module hooks refuse frozen
            # parameters (they register grad hooks) and a root module called twice in a window
            for hook in ("_pre_fw_hook", "_post_fw_hook", "_pre_bw_hook", "_post_bw_hook"):
                setattr(self.mt, hook, lambda *a, **k: None)
            self.first_peak = 0
            Both.last = self

        def register(self, tensors, cat):
            tensors = list(tensors)
            self.mt.track_external(*tensors)
            return super().register(tensors, cat)

        def reset_peak(self):
            self.first_peak = max(getattr(self, "first_peak", 0), getattr(self, "peak", 0))
            super().reset_peak()

        def __enter__(self):
            self.mt.__enter__()
            return super().__enter__()

        def __exit__(self, *exc):
            out = super().__exit__(*exc)
            self.mt.__exit__(*exc)
            return out

    rl.RoleCounter = Both
    models = TINY.items() if args.models == "tiny" else [(m, m) for m in ("gpt2", "Qwen3-0.6B")]
    print(f"{'model':12} {'scenario':28} {'counter':>14} {'MemTracker':>14} {'diff':>10}")
    for name, cfg in models:
        for recipe, kw in SCENARIOS:
            S = 32 if args.models == "tiny" else 256
            rl.measure_rl(recipe, cfg, 1, S, attention="eager" if name == "gpt2" else "sdpa", **kw)
            c = Both.last
            ours = max(c.first_peak, c.peak)
            snap = c.mt.get_tracker_snapshot("peak")
            theirs = max(d["Total"] for d in snap.values())
            label = recipe + "".join(f" {k}={v}" for k, v in kw.items() if k != "generate")
            print(f"{name:12} {label:28} {ours:>14,} {theirs:>14,} {theirs - ours:>10,}", flush=True)


if __name__ == "__main__":
    main()
