"""Memory a LoRA merge costs per rank, with and without FSDP, against the formula in ``vidpar.lora.merge``.

CPU measurement (no GPU here): each rank's resident size just before the merge, just after it, and its
high-water mark during it (reset through ``/proc/self/clear_refs`` just before). What stays is the originals kept
for unloading (``handle.kept_bytes()``) plus the LoRA tensors read from the file; the transient peak is the
high-water mark minus what stays. glibc's mmap threshold is pinned (``MALLOC_MMAP_THRESHOLD_``) so that every
tensor above 64 KiB is mmap'ed and returned on free: resident size then follows the live tensor bytes. On a GPU
the transient part lands on the device and the kept originals on the host (``keep="host"``).

    python benchmarks/lora_merge_memory.py [--dim 1536 --ffn 8960 --heads 12 --layers 2 --rank 64]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

MIB = 1 << 20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _model(args):
    from vidpar.models.wan import WanTransformer3D, WanTransformerConfig

    cfg = WanTransformerConfig(dim=args.dim, ffn_dim=args.ffn, num_heads=args.heads, num_layers=args.layers,
                               text_dim=4096, freq_dim=256, in_channels=16, out_channels=16)
    torch.manual_seed(0)
    return WanTransformer3D(cfg).to(torch.bfloat16).eval().requires_grad_(False)


def _write_lora(model, rank: int, path: Path) -> None:
    from safetensors.torch import save_file

    from vidpar.models.wan.lora_keys import WAN_LORA_KEYS

    g = torch.Generator().manual_seed(1)
    sd = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            key = "diffusion_model." + WAN_LORA_KEYS.from_native(name, "original")
            sd[f"{key}.lora_down.weight"] = torch.randn(rank, mod.in_features, generator=g, dtype=torch.bfloat16)
            sd[f"{key}.lora_up.weight"] = torch.randn(mod.out_features, rank, generator=g, dtype=torch.bfloat16)
            sd[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(sd, str(path))


def _run(rank: int, world: int, port: int, args, path: str, mode: str, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from vidpar.lora import apply_loras
    from vidpar.models.wan.lora_keys import WAN_LORA_KEYS
    from vidpar.parallel import ParallelConfig, init_parallel
    from vidpar.parallel.fsdp import shard_weights

    ctx = init_parallel(ParallelConfig(ulysses=world))
    model = _model(args)
    if mode == "fsdp":
        shard_weights(model, list(model.blocks), ctx)
    params = sum(p.numel() for p in model.parameters())
    largest = max(p.numel() for p in model.parameters())
    local = max((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())
    lora_bytes = Path(path).stat().st_size
    before = _rss()
    _reset_peak()
    handle = apply_loras({"main": model}, [(path, 1.0)], WAN_LORA_KEYS, ctx)
    peak, after = _peak() - before, _rss() - before
    out.put(dict(rank=rank, mode=mode, world=world, params=params, kept=handle.kept_bytes(), lora_file=lora_bytes,
                 stays=after, transient=peak - after,
                 formula_transient=4 * largest + 4 * local, largest_param=largest))
    if dist.is_initialized():
        dist.destroy_process_group()


def measure(args, world: int, mode: str, path: str) -> list[dict]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_run, args=(r, world, port, args, path, mode, out)) for r in range(world)]
    for p in procs:
        p.start()
    rows = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return sorted(rows, key=lambda r: r["rank"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--ffn", type=int, default=8960)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rank", type=int, default=64)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # inherited by the spawned ranks
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "lora.safetensors")
        _write_lora(_model(args), args.rank, Path(path))
        rows = measure(args, 1, "plain", path) + measure(args, 2, "fsdp", path)
    for r in rows:
        print(f"{r['mode']:>5} world {r['world']} rank {r['rank']}: params {r['params'] / 1e6:.1f}M bf16, "
              f"LoRA file {r['lora_file'] / MIB:.1f} MiB; kept originals {r['kept'] / MIB:.1f} MiB, stays after "
              f"merge {r['stays'] / MIB:.1f} MiB; transient peak {r['transient'] / MIB:.1f} MiB "
              f"(formula 4*largest + 4*largest local = {r['formula_transient'] / MIB:.1f} MiB)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
