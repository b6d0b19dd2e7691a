"""Per-rank peak memory of the patch-parallel Wan VAE decode vs one process, and the memory model's prediction.

CPU measurement: each configuration runs in fresh processes (``ru_maxrss`` is a high-water mark); a rank's peak is
``ru_maxrss`` after the decode minus its resident size just before it (model, latent and torch already loaded).
Large tensors are mmap'ed by glibc and returned on free, so the resident size follows the live tensor bytes.
(On a GPU the same script would read ``torch.cuda.max_memory_allocated``; not run here: no GPU.)

    python benchmarks/vae_memory.py [--latent 3 24 40] [--base-dim 16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

CFG = dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True])


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _build(latent):
    from vidpar.models.wan.vae import WanVAE
    from vidpar.models.wan.vae_config import WanVAEConfig

    torch.manual_seed(0)
    vae = WanVAE(WanVAEConfig.from_dict(CFG)).eval()
    z = torch.randn(1, 16, *latent, generator=torch.Generator().manual_seed(1))
    return vae, z


def _worker(rank, world, port, latent, output, queue):
    torch.set_num_threads(1)
    vae, z = _build(latent)
    if world > 1:
        import vidpar
        from vidpar.parallel import ParallelConfig, init_parallel

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        ctx = init_parallel(ParallelConfig(ulysses=world))
        vidpar.parallelize(vae, ctx, vae_mode="patch", output=output)
        dist.barrier()
    before_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    base = _rss_kib()
    with torch.no_grad():
        video = vae.decode(z)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put((rank, (peak - base) * 1024, before_max > peak, None if video is None else tuple(video.shape)))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def measure(world: int, latent, output: str) -> list:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, world, port, latent, output, q)) for r in range(world)]
    for p in procs:
        p.start()
    res = sorted(q.get(timeout=900) for _ in procs)
    for p in procs:
        p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latent", type=int, nargs=3, default=[3, 24, 40], metavar=("T", "H", "W"))
    args = ap.parse_args()
    from vidpar.models.wan.vae_config import WanVAEConfig
    from vidpar.models.wan.vae_memory import vae_decode_peak_bytes

    cfg = WanVAEConfig.from_dict(CFG)
    shape = (1, 16, *args.latent)
    out = []
    single = measure(1, args.latent, "all")[0][1]
    model1 = vae_decode_peak_bytes(cfg, shape, (1, 1), 4, im2col=True) - _weights_latent(cfg, shape)
    out.append(dict(P=1, output="-", measured_mib=[single / 2**20], model_mib=model1 / 2**20))
    for world in (2, 4):
        for output in ("rank0", "all"):
            res = measure(world, args.latent, output)
            pred = {o: (vae_decode_peak_bytes(cfg, shape, (1, world), 4, o, im2col=True) - _weights_latent(cfg, shape)) / 2**20
                    for o in ("all", "rank0", "none")}
            out.append(dict(P=world, output=output, measured_mib=[r[1] / 2**20 for r in res],
                            model_mib=pred[output] if output == "all" else [pred["rank0"], pred["none"]],
                            goal_mib=single / world / 2**20 * 1.1, stale=[r[2] for r in res]))
    print(json.dumps(dict(config=CFG, latent=shape, results=out), indent=1))


def _weights_latent(cfg, shape) -> int:
    """What the measurement's baseline already holds (weights, latent): excluded from the model figure too."""
    from vidpar.models.wan.vae_memory import _param_count

    b, z, t, h, w = shape
    return _param_count(cfg) * 4 + b * z * t * h * w * 4


if __name__ == "__main__":
    sys.exit(main())
