"""Device and link figures the planner's cost model uses, with their sources.

Every peak figure is a vendor datasheet number (dense, i.e. without 2:4 sparsity). Achievable fractions of peak
are *assumptions* of this model, stated below; none was measured on a GPU by vidpar yet (no GPU machine was
available when this table was written). Replace them with measurements when one is (``BENCHMARKS.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

GB = 1e9  # decimal gigabytes: datasheets quote GB and GB/s in powers of ten
GIB = 2**30

# ---- achievable fractions of peak (assumptions, not measurements) ----
# FlashAttention-3 reaches ~600-750 TFLOP/s forward in bf16 at head dim 128 on H100 SXM (Shah et al. 2024,
# "FlashAttention-3", fig. 5), i.e. 0.6-0.75 of the 989 TFLOP/s peak; we take the low end.
ATTENTION_EFFICIENCY = 0.6
# Large bf16 GEMMs (cuBLAS, M = tokens in the thousands, K/N = 5120/13824) run at ~0.7-0.8 of peak on Hopper.
GEMM_EFFICIENCY = 0.75
# Elementwise / normalisation work is memory bound; fraction of the datasheet HBM bandwidth reached.
MEMORY_EFFICIENCY = 0.8
# NCCL all-to-all over NVSwitch reaches well below the per-direction link peak (per-peer chunks, protocol
# overhead); nccl-tests alltoall bus bandwidth on 8x H100 is commonly reported around 0.7 of the 450 GB/s.
ALL_TO_ALL_EFFICIENCY = 0.7
# Point-to-point sends (ring K/V rotation) and all-gathers of large buffers get closer to the link peak.
P2P_EFFICIENCY = 0.8


@dataclass(frozen=True)
class GpuSpec:
    """Datasheet figures of one GPU model (dense bf16 tensor-core peak, HBM bandwidth, memory)."""

    name: str
    bf16_tflops: float  # dense, no sparsity
    mem_bandwidth_gbs: float  # GB/s
    memory_gb: float  # GB as sold (decimal)
    nvlink_gbs_per_dir: float  # NVLink bandwidth per GPU, one direction (0: no NVLink)
    pcie_gbs_per_dir: float  # host-interface bandwidth per direction, x16
    source: str


# Sources (vendor datasheets; "dense" = the figure without the 2:4 sparsity factor):
GPUS: Mapping[str, GpuSpec] = MappingProxyType({
    # NVIDIA H100 Tensor Core GPU datasheet (SXM5): BF16 1,979 TFLOPS with sparsity -> 989 dense; HBM3 3.35 TB/s;
    # 80 GB; NVLink 4 900 GB/s (bidirectional, 18 links) -> 450 per direction; PCIe Gen5 128 GB/s (bidir).
    "h100": GpuSpec("h100", 989.0, 3350.0, 80.0, 450.0, 64.0, "NVIDIA H100 datasheet (SXM5)"),
    # NVIDIA H100 datasheet (PCIe card): BF16 1,513 sparse -> 756 dense; 2.0 TB/s; 80 GB; NVLink bridge 600 GB/s.
    "h100-pcie": GpuSpec("h100-pcie", 756.0, 2000.0, 80.0, 300.0, 64.0, "NVIDIA H100 datasheet (PCIe)"),
    # NVIDIA H200 Tensor Core GPU datasheet (SXM): BF16 1,979 sparse -> 989 dense; HBM3e 4.8 TB/s; 141 GB;
    # NVLink 900 GB/s; PCIe Gen5 128 GB/s.
    "h200": GpuSpec("h200", 989.0, 4800.0, 141.0, 450.0, 64.0, "NVIDIA H200 datasheet (SXM)"),
    # NVIDIA A100 Tensor Core GPU datasheet (80GB SXM): BF16 312 dense; HBM2e 2,039 GB/s; NVLink 3 600 GB/s
    # (bidirectional) -> 300 per direction; PCIe Gen4 64 GB/s (bidir).
    "a100": GpuSpec("a100", 312.0, 2039.0, 80.0, 300.0, 32.0, "NVIDIA A100 datasheet (80GB SXM)"),
    # NVIDIA L40S datasheet: BF16 tensor 733 TFLOPS with sparsity -> 366 dense (362.05 listed); GDDR6 864 GB/s;
    # 48 GB; no NVLink; PCIe Gen4 x16 64 GB/s (bidir).
    "l40s": GpuSpec("l40s", 362.0, 864.0, 48.0, 0.0, 32.0, "NVIDIA L40S datasheet"),
    # NVIDIA L40 datasheet: BF16 tensor 362 TFLOPS with sparsity -> 181 dense; GDDR6 864 GB/s; 48 GB; no NVLink.
    "l40": GpuSpec("l40", 181.0, 864.0, 48.0, 0.0, 32.0, "NVIDIA L40 datasheet"),
})


@dataclass(frozen=True)
class LinkSpec:
    """An interconnect: bandwidth per GPU and direction (GB/s) and a per-collective latency (seconds)."""

    name: str
    gbs_per_dir: float  # 0: take the GPU's own figure (NVLink generation, PCIe generation)
    latency_s: float
    source: str


LINKS: Mapping[str, LinkSpec] = MappingProxyType({
    # NVLink: the GPU's generation decides (H100/H200 NVLink 4: 450 GB/s per direction, A100 NVLink 3: 300).
    # Latency: NCCL small-collective latency inside an NVSwitch box is ~10-20 us (nccl-tests); assumption.
    "nvlink": LinkSpec("nvlink", 0.0, 15e-6, "GPU datasheet NVLink figure"),
    # PCIe: the GPU's generation decides (Gen5 x16 ~64 GB/s per direction, Gen4 x16 ~32 GB/s; PCI-SIG 5.0/4.0
    # specs: 32 / 16 GT/s per lane). Peer traffic through the host bridge; latency assumed 25 us.
    "pcie": LinkSpec("pcie", 0.0, 25e-6, "PCI Express 5.0/4.0 base specification, x16"),
    "pcie-gen5": LinkSpec("pcie-gen5", 64.0, 25e-6, "PCI Express 5.0 base specification, x16"),
    "pcie-gen4": LinkSpec("pcie-gen4", 32.0, 25e-6, "PCI Express 4.0 base specification, x16"),
    # InfiniBand, one NIC per GPU (DGX H100: 8x ConnectX-7 400 Gb/s): NVIDIA ConnectX-7 / Quantum-2 datasheet,
    # NDR 400 Gb/s = 50 GB/s per direction; HDR (ConnectX-6 / Quantum) 200 Gb/s = 25 GB/s. Latency assumed 25 us
    # per collective (NCCL over IB, small messages).
    "ib-ndr": LinkSpec("ib-ndr", 50.0, 25e-6, "NVIDIA ConnectX-7 datasheet (NDR 400Gb/s)"),
    "ib-hdr": LinkSpec("ib-hdr", 25.0, 25e-6, "NVIDIA ConnectX-6 datasheet (HDR 200Gb/s)"),
    "roce-400g": LinkSpec("roce-400g", 50.0, 30e-6, "400GbE RoCE NIC per GPU (e.g. ConnectX-7)"),
    "eth-100g": LinkSpec("eth-100g", 12.5, 50e-6, "100GbE per node"),
})


def gpu_spec(kind: str) -> GpuSpec:
    """The ``GpuSpec`` for ``kind`` (case-insensitive; ``"h100-sxm"`` and ``"a100-80gb"`` are accepted too)."""
    key = kind.lower().replace("_", "-")
    key = {"h100-sxm": "h100", "h100-sxm5": "h100", "a100-80gb": "a100", "a100-sxm": "a100"}.get(key, key)
    if key not in GPUS:
        raise ValueError(f"unknown GPU kind {kind!r}; known: {sorted(GPUS)}")
    return GPUS[key]


def link_bandwidth(link: str, gpu: GpuSpec) -> float:
    """Peak bandwidth in bytes/s per GPU and direction of ``link`` attached to ``gpu``."""
    spec = link_spec(link)
    if spec.gbs_per_dir:
        return spec.gbs_per_dir * GB
    if spec.name == "nvlink":
        if not gpu.nvlink_gbs_per_dir:
            raise ValueError(f"{gpu.name} has no NVLink; use --intra-link pcie")
        return gpu.nvlink_gbs_per_dir * GB
    return gpu.pcie_gbs_per_dir * GB


def link_spec(link: str) -> LinkSpec:
    key = link.lower()
    if key not in LINKS:
        raise ValueError(f"unknown link {link!r}; known: {sorted(LINKS)}")
    return LINKS[key]


def gpu_kind_from_name(device_name: str) -> str | None:
    """The table key for a CUDA device name (``torch.cuda.get_device_name()``), or None if not in the table.

    ``"NVIDIA H100 80GB HBM3"`` -> ``"h100"``, ``"NVIDIA H100 PCIe"`` -> ``"h100-pcie"``, ``"NVIDIA L40S"`` ->
    ``"l40s"``; used by ``parallel="auto"`` when the caller does not name the GPU.
    """
    name = device_name.lower()
    for key, token in (("h200", "h200"), ("h100-pcie", "h100 pcie"), ("h100", "h100"), ("a100", "a100"),
                       ("l40s", "l40s"), ("l40", "l40")):
        if token in name:
            return key
    return None
