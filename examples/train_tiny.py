"""Train the built-in ``tiny-shapes`` model from scratch on CPU and write it in vidpar's checkpoint layout.

    python examples/train_tiny.py --out vidpar/assets/tiny-shapes --work /tmp/tiny-shapes-work

Recipe (seeded: ``--seed 0`` drives every stage; one thread per process):

1. Text encoder: a random tiny UMT5 (2 layers, d_model 64, seeded, frozen, never trained) behind a word-level
   tokenizer over the grammar's 20 words (``vidpar.data.shapes.vocabulary``). The DiT learns to read its states.
2. VAE (Wan 2.1 architecture, ``WanVAEConfig(base_dim=8, z_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1)``,
   8x spatial / 4x temporal), trained as an autoencoder on freshly drawn 9-frame clips (batch 8):
   a. ``--vae-steps`` 1800 AdamW steps (lr 1e-3), 32x32 crops, then whole 64x64 frames for the last 150.
      Loss: pixel L1 + MSE, shape pixels weighted 5x, + a *guide* term ``|z - guide_code(x)|^2`` (8x8-pooled
      colours of the chunk's frames) fading from 1 to 0 by 60% of the steps. Without the guide this tiny VAE
      collapses within ~20 steps to decoding the mean video (its per-pixel RMS norms erase brightness, so the
      untrained encoder emits one latent for every clip). Latent noise (0.05) in the second half.
   b. ``--refine-steps`` 400 steps on whole frames (batch 4, lr 5e-4) with the guide at full weight: after (a)
      the latents had lost green and blue, so a green shape decoded to nothing.
3. Latents: ``--clips`` 4000 9-frame 64x64 clips (seed 1) encoded once; their per-channel mean/std go into the
   VAE config (``latents_mean`` / ``latents_std``) as for the real Wan VAE; the DiT trains on normalised latents.
4. DiT (Wan architecture: dim 128, 4 heads, 4 layers, FFN 384, patch (1, 2, 2), text_len 16; 48 tokens per clip):
   ``--dit-steps`` 5000, flow matching ``x_s = (1 - s) x0 + s noise``, target ``noise - x0``, timestep ``1000 s``,
   ``s`` = logit-normal(0, 1) shifted by 2; caption replaced by "" (the pipeline's default negative prompt) 10%
   of the time for classifier-free guidance; AdamW lr 8e-4 (warm-up 200, cosine), batch 32, EMA 0.998 (shipped).
5. Decoder fine-tune (encoder frozen, so the DiT's latent space is untouched; it runs beside step 4 with
   ``--stage decoder``): ``--dec-steps`` 1000 on whole frames with latent noise of 10% of each channel's std.
6. Export: ``model_index.json``, ``transformer/`` (official Wan config keys, which keep ``text_len``, +
   safetensors), ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/scheduler_config.json`` (``flow_shift``).

How the shipped weights were made (shared 2-core machine, other jobs running): ``--stage vae`` with step 2b
added afterwards as ``--stage refine`` (same functions, same seeds), then ``--stage dit`` and ``--stage decoder``
side by side, then ``--stage export``. ``--stage all`` runs the same functions in sequence. Wall times measured
are in ``vidpar/assets/tiny-shapes/README.md``.

Held out from training: the (colour, shape, direction) triples in ``vidpar.data.shapes.HELD_OUT``; the
prompt-adherence test ``tests/test_tiny_shapes.py`` generates exactly those prompts.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vidpar.data.shapes import sample_clip, sample_dataset, vocabulary
from vidpar.models.wan.text_encoder import WanTextEncoder
from vidpar.models.wan.transformer import WanTransformer3D
from vidpar.models.wan.transformer_config import WanTransformerConfig
from vidpar.models.wan.transformer_loader import native_state_dict_to_official
from vidpar.models.wan.vae import WanVAE
from vidpar.models.wan.vae_config import WanVAEConfig

TEXT_LEN = 16
TEXT_DIM = 64
Z_DIM = 8


def word_tokenizer():
    """T5-style word-level tokenizer over the grammar (pad 0, eos 1, unk 2; lower-cased; EOS appended)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in vocabulary():
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", padding_side="right",
        model_max_length=TEXT_LEN,
    )


def text_encoder(seed: int) -> WanTextEncoder:
    """A random, frozen tiny UMT5 (2 layers, d_model 64) with the word tokenizer."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=32, d_model=TEXT_DIM, d_kv=16, num_heads=4, d_ff=128, num_layers=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    return WanTextEncoder(UMT5EncoderModel(config).eval().requires_grad_(False), word_tokenizer())


def vae_config(mean: list[float] | None = None, std: list[float] | None = None) -> WanVAEConfig:
    return WanVAEConfig(
        base_dim=8, z_dim=Z_DIM, dim_mult=(1, 2, 2, 2), num_res_blocks=1,
        latents_mean=mean or [0.0] * Z_DIM, latents_std=std or [1.0] * Z_DIM,
    )


def dit_config() -> WanTransformerConfig:
    return WanTransformerConfig(
        dim=128, num_heads=4, num_layers=4, ffn_dim=384, in_channels=Z_DIM, out_channels=Z_DIM,
        text_dim=TEXT_DIM, freq_dim=64, text_len=TEXT_LEN,
    )


def to_video(clips: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, F, H, W, 3]`` -> float ``[N, 3, F, H, W]`` in [-1, 1]."""
    return torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def shape_weight(video: torch.Tensor) -> torch.Tensor:
    """``[N, 1, F, H, W]``: 5 on shape pixels (saturated or bright), 1 on the dark, grey background."""
    sat = video.amax(1, keepdim=True) - video.amin(1, keepdim=True)
    bright = video.amax(1, keepdim=True)
    return 1.0 + 4.0 * ((sat > 0.45) | (bright > 0.3)).float()


def guide_code(video: torch.Tensor) -> torch.Tensor:
    """A fixed, information-rich target for the latents: ``[N, 8, 1 + (F-1)/4, H/8, W/8]``.

    Per latent frame and 8x8 block: the mean RGB of the chunk's first and last frames and the mean luma of its two
    middle frames (for latent frame 0, frame 0 everywhere). Pulling the encoder towards it at the start keeps the
    tiny VAE out of the collapse it otherwise falls into within ~20 steps (per-pixel RMS norms erase brightness, so
    an unguided encoder emits the same latent for every clip and the decoder learns the mean video).
    """
    pooled = F.avg_pool3d(video, (1, 8, 8))  # [N, 3, F, h, w]
    luma = pooled.mean(1, keepdim=True)
    chunks = [torch.cat([pooled[:, :, :1], pooled[:, :, :1], luma[:, :, :1], luma[:, :, :1]], 1)]
    for t in range(1, (video.shape[2] - 1) // 4 + 1):
        a, b = 4 * t - 3, 4 * t
        chunks.append(torch.cat([pooled[:, :, a : a + 1], pooled[:, :, b : b + 1], luma[:, :, a + 1 : a + 2],
                                 luma[:, :, a + 2 : a + 3]], 1))
    return 2.0 * torch.cat(chunks, 2)


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_vae(args, work: Path) -> WanVAE:
    torch.manual_seed(args.seed)
    vae = WanVAE(vae_config())
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    crop_steps = args.vae_steps - args.vae_full_steps
    for step in range(args.vae_steps):
        # 9 frames: the causal first frame and two cached 4-frame chunks (the second chunk's cache comes from a
        # full chunk, unlike the first one's), exactly what 9-frame generation decodes.
        if step < crop_steps:  # 32x32 crops: 4x cheaper; the convolutions do not care where the crop was
            clips = np.stack([sample_clip(rng, frames=9)[0] for _ in range(args.vae_batch)])
            oy, ox = rng.integers(0, 33, size=2)
            x = to_video(clips[:, :, oy : oy + 32, ox : ox + 32])
        else:  # then whole frames, so the mid-block attention sees the 8x8 latent grid it decodes at inference
            x = to_video(np.stack([sample_clip(rng, frames=9)[0] for _ in range(args.vae_batch // 2)]))
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.vae_steps, args.vae_lr, 50)
        z = vae.encode(x)
        # Latent noise only in the second half: early on it would teach the decoder to ignore z.
        y = vae.decode(z + (0.05 if step >= args.vae_steps // 2 else 0.0) * torch.randn_like(z))
        w = shape_weight(x)
        rec = (w * ((y - x).abs() + (y - x).pow(2))).mean()
        guide = max(0.0, 1.0 - step / (0.6 * args.vae_steps))  # fades out: the encoder may then go beyond it
        loss = rec + guide * (z - guide_code(x)).pow(2).mean() + 1e-4 * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == args.vae_steps - 1:
            if step % 300 == 0:
                torch.save(vae.state_dict(), work / "vae.pt")
            print(f"vae {step:5d} rec {rec.item():.4f} |z| {z.pow(2).mean().sqrt().item():.3f} "
                  f"batch-std(out) {y.std(0).mean().item():.4f} (in {x.std(0).mean().item():.4f}) "
                  f"{time.time() - t0:.0f}s", flush=True)
    torch.save(vae.state_dict(), work / "vae.pt")
    print(f"vae done in {time.time() - t0:.0f}s", flush=True)
    return vae.eval()


def refine_vae(args, vae: WanVAE, work: Path) -> WanVAE:
    """Whole VAE on whole 64x64 9-frame clips with the guide term at full weight throughout.

    Measured after ``train_vae``: once the guide had faded, the latents kept red but lost most of green and blue
    (linear R^2 0.23-0.38 on shape pixels), so a green shape decoded to nothing. Holding the latents to the pooled
    colours of ``guide_code`` keeps every colour decodable."""
    torch.manual_seed(args.seed + 5)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.refine_lr, weight_decay=0.0)
    rng = np.random.default_rng(args.seed + 5)
    t0 = time.time()
    for step in range(args.refine_steps):
        x = to_video(np.stack([sample_clip(rng, frames=9)[0] for _ in range(args.vae_batch // 2)]))
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.refine_steps, args.refine_lr, 20)
        z = vae.encode(x)
        y = vae.decode(z)
        rec = (shape_weight(x) * ((y - x).abs() + (y - x).pow(2))).mean()
        guide = (z - guide_code(x)).pow(2).mean()
        loss = rec + guide
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == args.refine_steps - 1:
            print(f"refine {step:5d} rec {rec.item():.4f} guide {guide.item():.4f} {time.time() - t0:.0f}s", flush=True)
    torch.save(vae.state_dict(), work / "vae.pt")
    print(f"vae refine done in {time.time() - t0:.0f}s", flush=True)
    return vae.eval()


def finetune_decoder(args, vae: WanVAE, std: list[float], work: Path) -> WanVAE:
    """Decoder (+ post_quant_conv) only, on whole 64x64 9-frame clips; the encoder is frozen, so the latent space
    the DiT learns is unchanged and this stage can run beside the DiT's. Latent noise (10% of each channel's std)
    makes the decoder forgiving of the DiT's small errors."""
    torch.manual_seed(args.seed + 4)
    vae.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for q in params:
        q.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=args.dec_lr, weight_decay=0.0)
    rng = np.random.default_rng(args.seed + 4)
    sigma = 0.1 * torch.tensor(std).view(1, -1, 1, 1, 1)
    t0 = time.time()
    for step in range(args.dec_steps):
        x = to_video(np.stack([sample_clip(rng, frames=9)[0] for _ in range(args.vae_batch // 2)]))
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.dec_steps, args.dec_lr, 20)
        with torch.no_grad():
            z = vae.encode(x)
        y = vae.decode(z + sigma * torch.randn_like(z))
        rec = (shape_weight(x) * ((y - x).abs() + (y - x).pow(2))).mean()
        opt.zero_grad(set_to_none=True)
        rec.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 25 == 0 or step == args.dec_steps - 1:
            print(f"decoder {step:5d} rec {rec.item():.4f} {time.time() - t0:.0f}s", flush=True)
            if step % 100 == 0:
                torch.save(vae.state_dict(), work / "vae_ft.pt")
    torch.save(vae.state_dict(), work / "vae_ft.pt")
    print(f"decoder fine-tune done in {time.time() - t0:.0f}s", flush=True)
    return vae.eval()


@torch.no_grad()
def encode_dataset(args, vae: WanVAE, te: WanTextEncoder, work: Path) -> dict:
    t0 = time.time()
    clips, texts = sample_dataset(args.seed + 1, args.clips, frames=9)
    lat = []
    for i in range(0, len(clips), 32):
        lat.append(vae.encode(to_video(clips[i : i + 32])))
        if i % 640 == 0:
            print(f"encode {i} {time.time() - t0:.0f}s", flush=True)
    z = torch.cat(lat)  # [N, z, 3, 8, 8]
    mean = z.mean(dim=(0, 2, 3, 4))
    std = z.std(dim=(0, 2, 3, 4))
    uniq = sorted(set(texts)) + [""]
    states = torch.cat([te.encode(uniq[i : i + 256], TEXT_LEN)[0] for i in range(0, len(uniq), 256)])
    index = {t: i for i, t in enumerate(uniq)}
    data = {
        "latents": (z - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1),
        "text_ids": torch.tensor([index[t] for t in texts]),
        "states": states,
        "empty_id": index[""],
        "mean": mean.tolist(),
        "std": std.tolist(),
    }
    torch.save(data, work / "latents.pt")
    print(f"encoded {len(clips)} clips, {len(uniq)} captions in {time.time() - t0:.0f}s; "
          f"latent mean {np.round(mean.numpy(), 2)} std {np.round(std.numpy(), 2)}", flush=True)
    return data


def train_dit(args, data: dict, work: Path) -> WanTransformer3D:
    torch.manual_seed(args.seed + 2)
    dit = WanTransformer3D(dit_config())
    dit.train()
    ema = {k: v.detach().clone() for k, v in dit.state_dict().items()}
    opt = torch.optim.AdamW(dit.parameters(), lr=args.dit_lr, weight_decay=0.01, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(args.seed + 3)
    lat, ids, states = data["latents"], data["text_ids"], data["states"]
    n = lat.shape[0]
    t0 = time.time()
    avg = None
    for step in range(args.dit_steps):
        pick = torch.randint(0, n, (args.dit_batch,), generator=g)
        x0 = lat[pick]
        tid = ids[pick].clone()
        tid[torch.rand(args.dit_batch, generator=g) < 0.1] = data["empty_id"]
        ctx = states[tid]
        u = torch.sigmoid(torch.randn(args.dit_batch, generator=g))
        s = 2.0 * u / (1 + u)  # shift 2 towards high noise: the layout and motion are decided there
        noise = torch.randn(x0.shape, generator=g)
        xs = (1 - s.view(-1, 1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1, 1) * noise
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, args.dit_steps, args.dit_lr, 200)
        pred = dit(xs, s * 1000.0, ctx)
        loss = F.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(0.998, (1 + step) / (10 + step))
            for k, v in dit.state_dict().items():
                ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        if step % 100 == 0 or step == args.dit_steps - 1:
            print(f"dit {step:6d} loss {avg:.4f} {time.time() - t0:.0f}s", flush=True)
        if (step + 1) % 500 == 0:
            torch.save(ema, work / "dit_ema.pt")
    torch.save(ema, work / "dit_ema.pt")
    print(f"dit done in {time.time() - t0:.0f}s", flush=True)
    dit.load_state_dict(ema)
    return dit.eval()


def export(out: Path, vae: WanVAE, mean: list[float], std: list[float], dit: WanTransformer3D,
           te: WanTextEncoder, flow_shift: float) -> None:
    """Write the diffusers-style pipeline folder vidpar's ``load_components`` reads."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "WanPipeline",
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }, indent=2) + "\n")
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "UniPCMultistepScheduler", "num_train_timesteps": 1000, "prediction_type": "flow_prediction",
        "use_flow_sigmas": True, "flow_shift": flow_shift, "solver_order": 2,
    }, indent=2) + "\n")
    # Transformer: official Wan config keys (a diffusers config has no text_len, and this model reads 16 tokens).
    c = dit.config
    (out / "transformer").mkdir(exist_ok=True)
    (out / "transformer" / "config.json").write_text(json.dumps({
        "model_type": "t2v", "dim": c.dim, "num_heads": c.num_heads, "num_layers": c.num_layers,
        "ffn_dim": c.ffn_dim, "in_dim": c.in_channels, "out_dim": c.out_channels, "text_dim": c.text_dim,
        "freq_dim": c.freq_dim, "patch_size": list(c.patch_size), "eps": c.eps, "qk_norm": c.qk_norm,
        "cross_attn_norm": c.cross_attn_norm, "text_len": c.text_len, "window_size": [-1, -1],
    }, indent=2) + "\n")
    sd = {k: v.detach().float().contiguous() for k, v in native_state_dict_to_official(dit).items()}
    save_file(sd, str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    cfg = vae_config(mean, std)
    (out / "vae").mkdir(exist_ok=True)
    (out / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan", **cfg.to_dict()},
                                                        indent=2) + "\n")
    save_file({k: v.detach().float().contiguous() for k, v in vae.state_dict().items()},
              str(out / "vae" / "diffusion_pytorch_model.safetensors"))
    te.model.save_pretrained(str(out / "text_encoder"), safe_serialization=True)
    te.tokenizer.save_pretrained(str(out / "tokenizer"))
    print(f"wrote {out}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("vidpar/assets/tiny-shapes"))
    p.add_argument("--work", type=Path, default=Path("/tmp/tiny-shapes-work"), help="intermediate checkpoints")
    p.add_argument("--stage", choices=("all", "vae", "refine", "dit", "decoder", "export"), default="all",
                   help="vae: VAE + latents; dit: DiT from saved latents; decoder: decoder fine-tune from the saved "
                        "VAE (independent of dit: the two may run side by side); export: from saved weights")
    p.add_argument("--seed", type=int, default=0)
    # One thread: on a shared 2-core machine, 2 OpenMP threads per process spin-wait on each other when the
    # scheduler is busy (measured here: 4x slower than 1 thread under load).
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vae-steps", type=int, default=1800)
    p.add_argument("--vae-full-steps", type=int, default=150, help="last VAE steps on whole 64x64 frames")
    p.add_argument("--vae-batch", type=int, default=8)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--refine-steps", type=int, default=400, help="whole-VAE steps with the colour guide kept")
    p.add_argument("--refine-lr", type=float, default=5e-4)
    p.add_argument("--dec-steps", type=int, default=1000, help="decoder fine-tune steps (whole frames, batch 4)")
    p.add_argument("--dec-lr", type=float, default=7e-4)
    p.add_argument("--clips", type=int, default=4000)
    p.add_argument("--dit-steps", type=int, default=5000)
    p.add_argument("--dit-batch", type=int, default=32)
    p.add_argument("--dit-lr", type=float, default=8e-4)
    p.add_argument("--flow-shift", type=float, default=2.0, help="sampling shift written to the scheduler config")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    te = text_encoder(args.seed)
    if args.stage in ("all", "vae", "refine"):
        if args.stage == "refine":  # resume from train_vae's weights
            vae = WanVAE(vae_config())
            vae.load_state_dict(torch.load(args.work / "vae_stage1.pt"))
        else:
            vae = train_vae(args, args.work)
            torch.save(vae.state_dict(), args.work / "vae_stage1.pt")
        vae = refine_vae(args, vae.train(), args.work)
        data = encode_dataset(args, vae, te, args.work)
        if args.stage in ("vae", "refine"):
            return
    else:
        vae = WanVAE(vae_config())
        vae.load_state_dict(torch.load(args.work / "vae.pt"))
        data = torch.load(args.work / "latents.pt")
    if args.stage == "decoder":
        finetune_decoder(args, vae, data["std"], args.work)
        return
    if args.stage in ("all", "dit"):
        dit = train_dit(args, data, args.work)
        if args.stage == "dit":
            return
    else:
        dit = WanTransformer3D(dit_config())
        dit.load_state_dict(torch.load(args.work / "dit_ema.pt"))
    if args.stage == "all":
        vae = finetune_decoder(args, vae, data["std"], args.work)
    else:
        vae.load_state_dict(torch.load(args.work / "vae_ft.pt"))
    export(args.out, vae, data["mean"], data["std"], dit, te, args.flow_shift)


if __name__ == "__main__":
    main()
