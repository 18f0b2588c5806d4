"""GPUs: the memory each one really offers, with its source (chapters 02, 04, 07).

A GPU sold as "80 GB" reports less to the runtime: ``nvidia-smi``'s "Total" is the number
``torch.cuda.mem_get_info()[1]`` returns and vLLM multiplies by ``gpu_memory_utilization``.
:data:`GPUS` holds that number, in bytes; the spec-sheet size is in the name.
"""
from __future__ import annotations

from .validation import positive_int, safe_text

#: Memory of each GPU as the driver reports it, in bytes.
GPUS = {
    "H100 80GB": 81_559 * 2**20,     # 85.52 GB; spec sheet: 80 GB HBM3
    "A100 80GB": 81_920 * 2**20,     # 85.90 GB; spec sheet: 80 GB HBM2e
    "A100 40GB": 40_960 * 2**20,     # 42.95 GB; spec sheet: 40 GB HBM2
    "L4 24GB": 23_034 * 2**20,       # 24.15 GB; spec sheet: 24 GB GDDR6 (ECC on)
    "RTX 4090 24GB": 24_564 * 2**20,  # 25.76 GB; spec sheet: 24 GB GDDR6X
}

#: Where each number in :data:`GPUS` comes from (spec sheet; driver-reported total).
GPU_SOURCES = {
    "H100 80GB": "NVIDIA H100 datasheet (SXM5: 80 GB); nvidia-smi 81559MiB "
                 "(github.com/NVIDIA/nccl/issues/1264, github.com/modal-labs/modal-client/pull/2797)",
    "A100 80GB": "NVIDIA A100 datasheet (80 GB HBM2e); nvidia-smi 81920MiB (modal-labs/modal-client#2797)",
    "A100 40GB": "NVIDIA A100 datasheet (40 GB HBM2); nvidia-smi 40960MiB (modal-labs/modal-client#2797)",
    "L4 24GB": "NVIDIA L4 datasheet (24 GB GDDR6); nvidia-smi 23034MiB (modal-labs/modal-client#2797)",
    "RTX 4090 24GB": "NVIDIA GeForce RTX 4090 specifications (24 GB GDDR6X); nvidia-smi 24564MiB "
                     "(github.com/RLinf/RLinf/issues/255)",
}


def gpu_bytes(gpu) -> int:
    """Bytes a GPU named in :data:`GPUS` reports to the runtime, or bytes as given (chapter 02)."""
    if isinstance(gpu, str):
        if gpu not in GPUS:
            raise ValueError(f"gpu: unknown GPU {safe_text(repr(gpu))}; known: {', '.join(GPUS)}")
        return GPUS[gpu]
    return positive_int("gpu", gpu)
