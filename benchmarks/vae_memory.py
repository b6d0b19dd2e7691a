"""Per-rank peak memory of the patch-parallel VAE decode vs one process, and the memory model's prediction.

CPU measurement: each configuration runs in fresh processes (``ru_maxrss`` is a high-water mark); a rank's peak is
``ru_maxrss`` after the decode minus its resident size just before it (model, latent and torch already loaded).
Large tensors are mmap'ed by glibc and returned on free, so the resident size follows the live tensor bytes.
(On a GPU the same script would read ``torch.cuda.max_memory_allocated``; not run here: no GPU.)

    python benchmarks/vae_memory.py [--vae wan|hunyuanvideo15] [--latent 3 24 40]
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

# Small VAEs of each layout: (config dict, default latent (T, h, w)).
VAES = {
    "wan": (dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                 temperal_downsample=[False, True, True]), [3, 24, 40]),
    "hunyuanvideo15": (dict(latent_channels=16, block_out_channels=[8, 16, 32, 64, 64], layers_per_block=1,
                            spatial_compression_ratio=16, temporal_compression_ratio=4), [3, 12, 20]),
}


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _family(name: str):
    """(config, model class, memory model, parameter count) of the VAE ``name``."""
    if name == "wan":
        from vidpar.models.wan.vae import WanVAE
        from vidpar.models.wan.vae_config import WanVAEConfig
        from vidpar.models.wan.vae_memory import _param_count, vae_decode_peak_bytes

        return WanVAEConfig.from_dict(VAES[name][0]), WanVAE, vae_decode_peak_bytes, _param_count
    from vidpar.models.hunyuanvideo15 import HunyuanVideo15VAE, HunyuanVideo15VAEConfig
    from vidpar.models.hunyuanvideo15.vae_memory import param_count, vae_decode_peak_bytes

    return HunyuanVideo15VAEConfig(**VAES[name][0]), HunyuanVideo15VAE, vae_decode_peak_bytes, param_count


def _build(name, latent):
    cfg, cls, _, _ = _family(name)
    torch.manual_seed(0)
    vae = cls(cfg).eval()
    z = torch.randn(1, cfg.z_dim, *latent, generator=torch.Generator().manual_seed(1))
    return vae, z


def _worker(rank, world, port, name, latent, output, queue):
    torch.set_num_threads(1)
    vae, z = _build(name, latent)
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


def measure(name: str, world: int, latent, output: str) -> list:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, world, port, name, latent, output, q)) for r in range(world)]
    for p in procs:
        p.start()
    res = sorted(q.get(timeout=900) for _ in procs)
    for p in procs:
        p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vae", choices=sorted(VAES), default="wan")
    ap.add_argument("--latent", type=int, nargs=3, default=None, metavar=("T", "H", "W"))
    args = ap.parse_args()
    latent = args.latent or VAES[args.vae][1]
    cfg, _, peak_model, _ = _family(args.vae)
    shape = (1, cfg.z_dim, *latent)
    base = _weights_latent(args.vae, shape)
    out = []
    single = measure(args.vae, 1, latent, "all")[0][1]
    model1 = peak_model(cfg, shape, (1, 1), 4, im2col=True) - base
    out.append(dict(P=1, output="-", measured_mib=[single / 2**20], model_mib=model1 / 2**20))
    for world in (2, 4):
        for output in ("rank0", "all"):
            res = measure(args.vae, world, latent, output)
            pred = {o: (peak_model(cfg, shape, (1, world), 4, o, im2col=True) - base) / 2**20
                    for o in ("all", "rank0", "none")}
            out.append(dict(P=world, output=output, measured_mib=[r[1] / 2**20 for r in res],
                            model_mib=pred[output] if output == "all" else [pred["rank0"], pred["none"]],
                            goal_mib=single / world / 2**20 * 1.1, stale=[r[2] for r in res]))
    print(json.dumps(dict(vae=args.vae, config=VAES[args.vae][0], latent=shape, results=out), indent=1))


def _weights_latent(name, shape) -> int:
    """What the measurement's baseline already holds (weights, latent): excluded from the model figure too."""
    cfg, _, _, count = _family(name)
    b, z, t, h, w = shape
    return count(cfg) * 4 + b * z * t * h * w * 4


if __name__ == "__main__":
    sys.exit(main())
