"""GPUs: the memory a runtime really sees, with its source, and the speeds (chapters 02, 04, 07).

Three memory figures differ for every card, and chapter 07 teaches why:

* ``spec_gb`` -- the spec sheet, in decimal GB (``80`` for an H100);
* ``smi_mib`` -- the driver's total as ``nvidia-smi`` prints it, in MiB (81,559 MiB =
  79.65 GiB for an H100 80GB HBM3);
* ``runtime_bytes`` -- the total ``torch.cuda.mem_get_info()`` returns, the number vLLM
  multiplies by ``gpu_memory_utilization`` (79.19 GiB on that H100).  It is below the
  ``nvidia-smi`` total by what the driver keeps for itself and moves by ~0.1 GiB between
  drivers and board variants.

``runtime_bytes`` comes from a real log (vLLM's ``total_gpu_memory`` line, PyTorch's "GPU 0
has a total capacity of ..." message or ``deviceQuery``); where none was found it is
``None`` and :attr:`GPU.usable_bytes` falls back to the ``nvidia-smi`` total, then the spec
sheet (``usable_source`` says which).  Every figure's source is in ``GPU.sources``; a source
written "index id N" is a public GitHub file found through this project's code index,
which does not name the repository.

Speeds are dense (no 2:4 sparsity) tensor-core peaks from the vendors' datasheets:
``bf16_tflops``, ``fp8_tflops`` (``None`` without FP8 tensor cores), ``bandwidth_gbs``.

:data:`GPU_TABLE` is the table (canonical name -> :class:`GPU`); :func:`get_gpu` looks a
card up by name or alias.  :data:`GPUS` (label -> bytes) is the five-card table of
chapters 00, 02 and 04, derived from it: the memory a process can use, i.e. each card's
:attr:`GPU.usable_bytes` (the runtime total, as in chapter 07).  :data:`GPUS_SMI` keeps
the same cards' ``nvidia-smi`` totals, a displayed fact (chapter 02 prints both).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

from .units import GiB, MiB
from .validation import positive_int, safe_text


def _gib(x: float) -> int:
    """Bytes of a total printed in GiB with two decimals (the printed value, no more exact)."""
    return int(round(x * GiB))


@dataclass(frozen=True)
class GPU:
    """One accelerator (chapter 07).  Memory in bytes; speeds per second.

    Attributes:
        name: canonical name (``"H100-80GB"``).
        vendor: ``"NVIDIA"`` or ``"AMD"``.
        spec_gb: memory on the spec sheet, decimal GB.
        smi_mib: total memory ``nvidia-smi`` prints (MiB), or None.
        runtime_bytes: total the runtime reports (``torch.cuda.mem_get_info()[1]``) from a
            real log, or None where no log was found.
        bandwidth_gbs: memory bandwidth, GB/s.
        bf16_tflops: dense BF16 tensor TFLOP/s.
        fp8_tflops: dense FP8 tensor TFLOP/s, or None without FP8 tensor cores.
        aliases: other names the lookup accepts.
        sources: field (``spec``, ``smi_mib``, ``runtime_bytes``) -> where the figure comes from.
    """

    name: str
    vendor: str
    spec_gb: float
    smi_mib: int | None
    runtime_bytes: int | None
    bandwidth_gbs: float
    bf16_tflops: float
    fp8_tflops: float | None
    aliases: tuple = ()
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def spec_bytes(self) -> int:
        """Spec-sheet memory in bytes: ``spec_gb × 10⁹``."""
        return int(round(self.spec_gb * 1e9))

    @property
    def smi_bytes(self) -> int | None:
        """The ``nvidia-smi`` total in bytes: ``smi_mib × 2²⁰``."""
        return None if self.smi_mib is None else self.smi_mib * MiB

    @property
    def usable_bytes(self) -> int:
        """What vLLM multiplies by ``gpu_memory_utilization``: the runtime total when a log
        gave it, else the ``nvidia-smi`` total, else the spec sheet (see ``usable_source``)."""
        for v in (self.runtime_bytes, self.smi_bytes):
            if v is not None:
                return v
        return self.spec_bytes

    @property
    def usable_source(self) -> str:
        """Which figure :attr:`usable_bytes` is: ``runtime``, ``nvidia-smi`` or ``spec``."""
        if self.runtime_bytes is not None:
            return "runtime"
        return "nvidia-smi" if self.smi_mib is not None else "spec"

    def to_dict(self) -> dict:
        """JSON-ready dict of every field plus ``usable_bytes`` and ``usable_source``."""
        return {"name": self.name, "vendor": self.vendor, "spec_gb": self.spec_gb,
                "smi_mib": self.smi_mib, "runtime_bytes": self.runtime_bytes,
                "usable_bytes": self.usable_bytes, "usable_source": self.usable_source,
                "bandwidth_gbs": self.bandwidth_gbs, "bf16_tflops": self.bf16_tflops,
                "fp8_tflops": self.fp8_tflops, "aliases": list(self.aliases),
                "sources": dict(self.sources)}


_NV = "https://www.nvidia.com/"
_DS = {
    "A10": _NV + "en-us/data-center/products/a10-gpu/ (A10 datasheet: 24 GB GDDR6, 600 GB/s, "
           "BF16 125 TF dense / 250 sparse; no FP8)",
    "L4": _NV + "en-us/data-center/l4/ (L4 datasheet: 24 GB, 300 GB/s, BF16 121 TF dense, "
          "FP8 242.5 TF dense; the sheet prints sparse values 242 / 485)",
    "L40S": _NV + "en-us/data-center/l40s/ (L40S datasheet: 48 GB GDDR6, 864 GB/s, BF16 362 TF "
            "dense / 733 sparse, FP8 733 dense / 1466 sparse)",
    "A100": _NV + "en-us/data-center/a100/ (A100 datasheet: 40 GB HBM2 1,555 GB/s; 80 GB HBM2e "
            "SXM 2,039 GB/s; BF16 312 TF dense; no FP8)",
    "H100": _NV + "en-us/data-center/h100/ (H100 datasheet: SXM 80 GB HBM3 3.35 TB/s, BF16 989 TF, "
            "FP8 1,979 TF; PCIe 80 GB HBM2e 2.0 TB/s, BF16 756 TF, FP8 1,513 TF; dense = half the "
            "sheet's sparsity figures)",
    "H200": _NV + "en-us/data-center/h200/ (H200 SXM: 141 GB HBM3e, 4.8 TB/s, BF16 989 TF, FP8 1,979 TF dense)",
    "B200": "https://glennklockwood.com/garden/processors/B200 (HGX B200 at 1,000 W: BF16 2,250 TF, "
            "FP8 4,500 TF dense; 192 GB HBM3e, 8 TB/s) and NVIDIA's DGX B200 page",
    "GB200": _NV + "en-us/data-center/gb200-nvl72/ (13.4 TB HBM3e over 72 GPUs = 186 GB each, "
             "8 TB/s) and glennklockwood.com/garden/processors/B200 (GB200 at 1,200 W: BF16 2,500 TF, "
             "FP8 5,000 TF dense)",
    "RTX 3090": "NVIDIA Ampere GA102 whitepaper (RTX 3090: 24 GB GDDR6X, 936 GB/s, FP16/BF16 tensor "
                "with FP32 accumulate 71 TF dense; no FP8)",
    "RTX 4090": "NVIDIA Ada Lovelace architecture whitepaper (RTX 4090: 24 GB GDDR6X, 1,008 GB/s, "
                "BF16 with FP32 accumulate 165.2 TF dense, FP8 with FP32 accumulate 330.3 TF dense)",
    "RTX 5090": "NVIDIA RTX Blackwell GPU architecture whitepaper (RTX 5090: 32 GB GDDR7, 1,792 GB/s, "
                "BF16 with FP32 accumulate 209.5 TF dense, FP8 419 TF dense)",
    "MI300X": "https://www.amd.com/en/products/accelerators/instinct/mi300/mi300x.html (192 GB HBM3, "
              "5.3 TB/s, BF16 1,307.4 TF dense, FP8 2,614.9 TF dense)",
    "MI325X": "https://www.amd.com/en/products/accelerators/instinct/mi300/mi325x.html (256 GB HBM3E, "
              "6 TB/s, BF16 1,307.4 TF dense, FP8 2,614.9 TF dense)",
}


def _g(name, vendor, spec_gb, smi_mib, runtime_bytes, bw, bf16, fp8, aliases, sources):
    return GPU(name, vendor, spec_gb, smi_mib, runtime_bytes, bw, bf16, fp8, tuple(aliases), sources)


#: Every GPU of chapter 07, by canonical name.
GPU_TABLE: dict[str, GPU] = {g.name: g for g in [
    _g("A10", "NVIDIA", 24, 23028, _gib(22.06), 600, 125, None, ["A10-24GB", "NVIDIA A10", "A10G"], {
        "spec": _DS["A10"], "smi_mib": "nvidia-smi 'NVIDIA A10G ... 0MiB / 23028MiB' (AWS A10G; index id "
        "21021056340); 150 W A10 boards print the same total (index id 36216951582)",
        "runtime_bytes": "PyTorch OOM on an AWS A10G: 'GPU 0 has a total capacity of 22.06 GiB' (index id "
        "59672298265). Measured on the A10G, whose board total (nvidia-smi 23028 MiB) is the A10's; "
        "no log of a plain A10 was found"}),
    _g("L4", "NVIDIA", 24, 23034, _gib(22.04), 300, 121, 242.5, ["L4-24GB", "L4 24GB", "NVIDIA L4"], {
        "spec": _DS["L4"],
        "smi_mib": "NVIDIA L4 datasheet (24 GB GDDR6); nvidia-smi 23034MiB (modal-labs/modal-client#2797)",
        "runtime_bytes": "PyTorch OOM message on an L4: 'GPU 0 has a total capacity of 22.04 GiB' "
        "(index id 59672298265, which also gives A10G = 22.06 GiB)"}),
    _g("L40S", "NVIDIA", 48, 46068, _gib(44.42), 864, 362, 733, ["L40S-48GB", "NVIDIA L40S"], {
        "spec": _DS["L40S"], "smi_mib": "nvidia-smi 'NVIDIA L40S ... 0MiB / 46068MiB' (index ids 53425348813, "
        "7788207177)",
        "runtime_bytes": "PyTorch OOM on 8 x L40S: 'GPU has a total capacity of 44.42 GiB' "
        "(github.com/stepfun-ai/Step-Video-T2V/issues/8)"}),
    _g("A100-40GB", "NVIDIA", 40, 40960, 42_298_834_944, 1555, 312, None,
       ["A100-40", "A100 40GB", "A100-SXM4-40GB"], {
        "spec": _DS["A100"],
        "smi_mib": "NVIDIA A100 datasheet (40 GB HBM2); nvidia-smi 40960MiB (modal-labs/modal-client#2797)",
        "runtime_bytes": "deviceQuery on an A100-SXM4-40GB: 'Total amount of global memory: 40339 MBytes "
        "(42298834944 bytes)' = 39.39 GiB (github.com/bottlerocket-os/bottlerocket/pull/3873); "
        "PyTorch prints 'total capacity of 39.39 GiB' on A100 40GB jobs (index id 66850652250)"}),
    _g("A100-80GB", "NVIDIA", 80, 81920, _gib(79.15), 2039, 312, None,
       ["A100-80", "A100 80GB", "A100-SXM4-80GB", "A100-80GB-PCIe"], {
        "spec": _DS["A100"],
        "smi_mib": "NVIDIA A100 datasheet (80 GB HBM2e); nvidia-smi 81920MiB (modal-labs/modal-client#2797)",
        "runtime_bytes": "PyTorch OOM under vLLM on an A100 80GB: 'GPU 0 has a total capacity of 79.15 GiB' "
        "(github.com/vllm-project/vllm/issues/4408)"}),
    _g("H100-80GB", "NVIDIA", 80, 81559, _gib(79.19), 3350, 989, 1979,
       ["H100", "H100-SXM", "H100 80GB", "H100-80GB-SXM", "NVIDIA H100 80GB HBM3", "H100-SXM5"], {
        "spec": _DS["H100"],
        "smi_mib": "NVIDIA H100 datasheet (SXM5: 80 GB); nvidia-smi 81559MiB "
                   "(github.com/NVIDIA/nccl/issues/1264, github.com/modal-labs/modal-client/pull/2797)",
        "runtime_bytes": "vLLM log 'total_gpu_memory (79.19GiB)' on H100 "
        "(kubernetes-sigs/gateway-api-inference-extension#550); other drivers print 79.21 GiB "
        "(PyTorch OOM on 8xH100 HBM3, index id 47441118549) and 79.22 GiB (vllm-project/vllm#10511)"}),
    _g("H100-PCIe", "NVIDIA", 80, 81559, _gib(79.19), 2000, 756, 1513,
       ["H100 PCIe", "H100-80GB-PCIe", "NVIDIA H100 PCIe"], {
        "spec": _DS["H100"],
        "smi_mib": "'GPU: NVIDIA H100 PCIe (81559 MiB)' (index id 59474166547)",
        "runtime_bytes": "'Hardware: NVIDIA H100 PCIe (79.19 GB VRAM)' -- torch's total printed in GiB "
        "(index id 69385538677)"}),
    _g("H200", "NVIDIA", 141, 143771, _gib(139.80), 4800, 989, 1979, ["H200-141GB", "H200-SXM", "NVIDIA H200"], {
        "spec": _DS["H200"], "smi_mib": "nvidia-smi 'NVIDIA H200 ... 0MiB / 143771MiB' (index ids "
        "6737105653, 55407386739)",
        "runtime_bytes": "PyTorch OOM on 8xH200: 'GPU 5 has a total capacity of 139.80 GiB' "
        "(index id 47349552184); 139.81 GiB on other hosts (index id 67001319221)"}),
    _g("B200", "NVIDIA", 192, None, _gib(178.35), 8000, 2250, 4500, ["B200-192GB", "NVIDIA B200", "HGX-B200"], {
        "spec": _DS["B200"], "smi_mib": "not found",
        "runtime_bytes": "PyTorch OOM on a B200 node: 'GPU 4 has a total capacity of 178.35 GiB' "
        "(index id 63244951597); 178.36 GiB on 8xB200 (index id 47349552184)"}),
    _g("GB200", "NVIDIA", 186, None, None, 8000, 2500, 5000, ["GB200-NVL72", "NVIDIA GB200"], {
        "spec": _DS["GB200"], "smi_mib": "not found",
        "runtime_bytes": "not found; usable_bytes falls back to the spec sheet (an over-estimate)"}),
    _g("RTX-3090", "NVIDIA", 24, None, _gib(23.58), 936, 71, None, ["RTX 3090", "3090", "GeForce RTX 3090"], {
        "spec": _DS["RTX 3090"], "smi_mib": "not used (the runtime total below is known)",
        "runtime_bytes": "vLLM log 'total_gpu_memory=23.58GiB' on an RTX 3090 (vllm-project/vllm#10517); "
        "also 23.58 GiB on RTX 3090 workers in vllm-project/vllm#14447"}),
    _g("RTX-4090", "NVIDIA", 24, 24564, _gib(23.64), 1008, 165.2, 330.3,
       ["RTX 4090", "RTX 4090 24GB", "4090", "GeForce RTX 4090"], {
        "spec": _DS["RTX 4090"],
        "smi_mib": "NVIDIA GeForce RTX 4090 specifications (24 GB GDDR6X); nvidia-smi 24564MiB "
                   "(github.com/RLinf/RLinf/issues/255)",
        "runtime_bytes": "'GPU type: NVIDIA GeForce RTX 4090 ... GPU memory: 23.64GB' "
        "(hiyouga/LlamaFactory#7234, torch's total in GiB) and PyTorch 'total capacty of 23.64 GiB' "
        "(3DTopia/Phidias-Diffusion#8)"}),
    _g("RTX-5090", "NVIDIA", 32, 32607, _gib(31.36), 1792, 209.5, 419, ["RTX 5090", "5090", "GeForce RTX 5090"], {
        "spec": _DS["RTX 5090"], "smi_mib": "nvidia-smi 32607MiB ('RTX 5090 D 32607MiB', vllm-project/vllm#34076)",
        "runtime_bytes": "PyTorch OOM messages 'total capacity of 31.36 GiB' on 32 GB cards "
        "(index ids 53445870722, 60102485733)"}),
    _g("MI300X", "AMD", 192, None, _gib(191.98), 5300, 1307.4, 2614.9, ["AMD MI300X", "Instinct MI300X"], {
        "spec": _DS["MI300X"], "smi_mib": "not used (rocm-smi)",
        "runtime_bytes": "PyTorch 'HIP out of memory ... total capacity of 191.98 GiB' on MI300X "
        "(index id 61935719682); some ROCm builds print 191.69 GiB (index id 59370625713)"}),
    _g("MI325X", "AMD", 256, None, _gib(255.98), 6000, 1307.4, 2614.9, ["AMD MI325X", "Instinct MI325X"], {
        "spec": _DS["MI325X"], "smi_mib": "not used (rocm-smi)",
        "runtime_bytes": "vLLM issue text 'HIP out of memory ... total capacity of 255.98 GiB' on a "
        "256 GB ROCm GPU (index id 57044329709); the card is not named there"}),
]}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_LOOKUP = {_key(n): g.name for g in GPU_TABLE.values() for n in (g.name, *g.aliases)}


def gpu_names() -> list[str]:
    """Canonical names of every GPU in :data:`GPU_TABLE` (chapter 07)."""
    return list(GPU_TABLE)


def get_gpu(name) -> GPU:
    """The :class:`GPU` called ``name`` (case, spaces and dashes ignored; aliases accepted;
    a :class:`GPU` is returned as is).  Unknown names raise ``ValueError`` listing the
    known ones (chapter 07)."""
    if isinstance(name, GPU):
        return name
    if not isinstance(name, str) or _key(name) not in _LOOKUP:
        raise ValueError(f"gpu: unknown GPU {safe_text(repr(name))}; known: {', '.join(GPU_TABLE)}")
    return GPU_TABLE[_LOOKUP[_key(name)]]


def gpu_table() -> list[dict]:
    """Every GPU as a JSON-ready dict (:meth:`GPU.to_dict`), in table order (chapter 07)."""
    return [g.to_dict() for g in GPU_TABLE.values()]


# -- the five-card table of chapters 00, 02 and 04 ----------------------------------------

_SMI_LABELS = {"H100 80GB": "H100-80GB", "A100 80GB": "A100-80GB", "A100 40GB": "A100-40GB",
               "L4 24GB": "L4", "RTX 4090 24GB": "RTX-4090"}

#: Memory a process can use on five GPUs, in bytes (chapters 00, 02 and 04): the total the
#: runtime reports (``torch.cuda.mem_get_info()[1]``, what vLLM multiplies by
#: ``gpu_memory_utilization``), i.e. :attr:`GPU.usable_bytes`; the spec-sheet size is in the label.
GPUS = {label: GPU_TABLE[name].usable_bytes for label, name in _SMI_LABELS.items()}

#: Where each number in :data:`GPUS` comes from (a log that printed the runtime total).
GPU_SOURCES = {label: GPU_TABLE[name].sources["runtime_bytes"] for label, name in _SMI_LABELS.items()}

#: The same five GPUs' totals as ``nvidia-smi`` prints them, in bytes (chapter 02): larger than
#: :data:`GPUS` by what the driver reserves for itself; sources in :data:`GPU_SMI_SOURCES`.
GPUS_SMI = {label: GPU_TABLE[name].smi_bytes for label, name in _SMI_LABELS.items()}

#: Where each number in :data:`GPUS_SMI` comes from.
GPU_SMI_SOURCES = {label: GPU_TABLE[name].sources["smi_mib"] for label, name in _SMI_LABELS.items()}


def gpu_bytes(gpu) -> int:
    """Bytes a process can use on a GPU labelled in :data:`GPUS` (the runtime total, chapter 02),
    or bytes as given."""
    if isinstance(gpu, str):
        if gpu not in GPUS:
            raise ValueError(f"gpu: unknown GPU {safe_text(repr(gpu))}; known: {', '.join(GPUS)}")
        return GPUS[gpu]
    return positive_int("gpu", gpu)
