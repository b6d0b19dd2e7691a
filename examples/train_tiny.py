"""Train the built-in ``tiny-shapes`` model from scratch on CPU and write it in vidpar's checkpoint layout.

    python examples/train_tiny.py --out vidpar/assets/tiny-shapes --work /tmp/tiny-shapes-work

runs every stage in one process, one after another (~84 min: the sum of the stage times; every stage seeds
itself, so the weights are the same). The shipped weights were made on 2 cores in 44 min, stages side by side:

    W=/tmp/tiny-shapes-work
    python examples/train_tiny.py --stage decoder --work $W &
    python examples/train_tiny.py --stage dit --work $W && python examples/train_tiny.py --stage encoder --work $W
    wait && python examples/train_tiny.py --stage export --work $W --out vidpar/assets/tiny-shapes

Recipe (seeded: ``--seed`` drives every stage; one thread per process). The idea: the latent space is fixed by
construction, so the three trained parts do not depend on each other and run side by side (``--stage dit``,
``--stage decoder`` and ``--stage encoder`` in three processes, or in sequence with ``--stage all``).

1. Latent space: ``latent_code(x)``, the 8x8-pooled RGB of each pixel frame a latent frame covers (Wan's causal
   4x temporal / 8x spatial layout: latent frame 0 is pixel frame 0, latent frame t covers frames 4t-3..4t), so
   ``z_dim = 4 x 3 = 12``. Colour and position survive by construction. (A learned latent space lost green and
   drifted on other colours in an earlier recipe: a tiny Wan VAE with per-pixel RMS norms collapses to the mean
   video unless it is pulled towards such a code, and once released it drops colours.)
2. Text encoder: a random, frozen tiny UMT5 (2 layers, d_model 64, seeded, never trained) behind a word-level
   tokenizer over the grammar's 20 words (``vidpar.data.shapes.vocabulary``). The DiT learns to read its states.
3. DiT (Wan architecture: dim 128, 4 heads, 4 layers, FFN 384, patch (1, 2, 2), text_len 16; 48 tokens per clip)
   on the normalised codes of ``--clips`` 9-frame 64x64 clips (their per-channel mean/std become the VAE config's
   ``latents_mean`` / ``latents_std``, as for the real Wan VAE): flow matching ``x_s = (1 - s) x0 + s noise``,
   target ``noise - x0``, timestep ``1000 s``, ``s`` = logit-normal(0, 1) shifted by 2; caption replaced by ""
   (the pipeline's default negative prompt) 10% of the time for classifier-free guidance; AdamW (warm-up 200,
   cosine), batch 32, EMA 0.998 (the EMA weights ship).
4. VAE decoder (Wan 2.1 architecture, ``base_dim 8, dim_mult (1, 2, 2, 2), 1 res block``) trained from scratch to
   turn codes back into frames: ``--dec-steps`` 4000 AdamW steps (lr 2e-3, cosine), each on 4 fresh whole 64x64
   9-frame clips of 1-4 shapes (``vidpar.data.shapes.sample_scene``: colour is what this tiny decoder learns
   slowest, so every batch carries several), code + Gaussian noise of up to 20% of each channel's std (the DiT's
   samples are not exact codes); loss pixel L1 + MSE with shape pixels weighted 10x.
5. VAE encoder (same config) trained to output ``latent_code(x)`` (MSE; ``--enc-steps`` 3000, lr 2e-3, the same
   kind of batches as the decoder), so ``vae.encode`` maps a video into the
   DiT's latent space like a real VAE's encoder does (text-to-video generation never calls it).
6. Export: ``model_index.json``, ``transformer/`` (official Wan config keys, which keep ``text_len``, +
   safetensors), ``vae/`` (encoder and decoder from steps 5 and 4), ``text_encoder/``, ``tokenizer/``,
   ``scheduler/scheduler_config.json`` (``flow_shift``).

Every part is trained on training triples only: the (colour, shape, direction) triples in
``vidpar.data.shapes.HELD_OUT`` are never drawn, and the prompt-adherence test ``tests/test_tiny_shapes.py``
generates exactly those prompts. Measured wall times are in ``vidpar/assets/tiny-shapes/README.md``.
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

from vidpar.data.shapes import sample_clip, sample_scene, vocabulary
from vidpar.models.wan.text_encoder import WanTextEncoder
from vidpar.models.wan.transformer import WanTransformer3D
from vidpar.models.wan.transformer_config import WanTransformerConfig
from vidpar.models.wan.transformer_loader import native_state_dict_to_official
from vidpar.models.wan.vae import WanVAE
from vidpar.models.wan.vae_config import WanVAEConfig

TEXT_LEN = 16
TEXT_DIM = 64
FRAMES = 9
TEMPORAL = 4  # pixel frames per latent frame (after the first)
SPATIAL = 8  # pixels per latent pixel
Z_DIM = TEMPORAL * 3  # RGB of each pixel frame a latent frame covers


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
    """``[N, 1, F, H, W]``: 10 on shape pixels (saturated or bright), 1 on the dark, grey background."""
    sat = video.amax(1, keepdim=True) - video.amin(1, keepdim=True)
    bright = video.amax(1, keepdim=True)
    return 1.0 + 9.0 * ((sat > 0.45) | (bright > 0.3)).float()


def latent_code(video: torch.Tensor) -> torch.Tensor:
    """The latent code of a video: ``[N, 3, 1 + 4k, H, W]`` -> ``[N, 12, 1 + k, H/8, W/8]``.

    Channel ``3 f + c`` of latent frame ``t`` is colour ``c`` of pixel frame ``f`` of that latent frame, averaged
    over each 8x8 block (latent frame 0 covers pixel frame 0 alone, repeated four times)."""
    n, c, f, _, _ = video.shape
    pooled = F.avg_pool3d(video, (1, SPATIAL, SPATIAL))  # [N, 3, F, h, w]
    h, w = pooled.shape[-2:]
    first = pooled[:, :, :1].repeat(1, TEMPORAL, 1, 1, 1)
    rest = pooled[:, :, 1:].reshape(n, c, (f - 1) // TEMPORAL, TEMPORAL, h, w).permute(0, 3, 1, 2, 4, 5)
    return torch.cat([first, rest.reshape(n, TEMPORAL * c, (f - 1) // TEMPORAL, h, w)], dim=2)


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def clip_batch(rng: np.random.Generator, count: int) -> torch.Tensor:
    """``count`` fresh training clips ``[count, 3, 9, 64, 64]`` in [-1, 1] (training triples only)."""
    return to_video(np.stack([sample_clip(rng, frames=FRAMES)[0] for _ in range(count)]))


def scene_batch(rng: np.random.Generator, count: int) -> torch.Tensor:
    """``count`` fresh clips of 1-4 shapes ``[count, 3, 9, 64, 64]``: colour is what the tiny VAE learns slowest,
    so every batch carries several (training triples only; no captions needed)."""
    return to_video(np.stack([sample_scene(rng, int(rng.integers(1, 5))) for _ in range(count)]))


@torch.no_grad()
def latent_dataset(args, te: WanTextEncoder, work: Path) -> dict:
    """Codes of ``--clips`` clips (seed + 1), their statistics, and the text states of every caption."""
    t0 = time.time()
    rng = np.random.default_rng(args.seed + 1)
    codes, texts = [], []
    for i in range(0, args.clips, 500):
        batch = [sample_clip(rng, frames=FRAMES) for _ in range(min(500, args.clips - i))]
        codes.append(latent_code(to_video(np.stack([clip for clip, _ in batch]))))
        texts += [text for _, text in batch]
    z = torch.cat(codes)  # [N, 12, 3, 8, 8]
    mean, std = z.mean(dim=(0, 2, 3, 4)), z.std(dim=(0, 2, 3, 4))
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
    torch.save({"mean": data["mean"], "std": data["std"]}, work / "latent_stats.pt")
    print(f"{len(texts)} clips, {len(uniq)} captions in {time.time() - t0:.0f}s; "
          f"code mean {np.round(mean.numpy(), 2)} std {np.round(std.numpy(), 2)}", flush=True)
    return data


def latent_stats(work: Path) -> tuple[list[float], list[float]]:
    """The per-channel code mean/std ``latent_dataset`` measured (written by the DiT stage)."""
    stats = torch.load(work / "latent_stats.pt")
    return stats["mean"], stats["std"]


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
        if (step + 1) % 1000 == 0:
            torch.save(ema, work / "dit_ema.pt")
    torch.save(ema, work / "dit_ema.pt")
    print(f"dit done in {time.time() - t0:.0f}s", flush=True)
    dit.load_state_dict(ema)
    return dit.eval()


def fit_vae_part(name: str, vae: WanVAE, params: list, loss_fn, args, steps: int, lr: float, seed: int,
                 path: Path) -> dict[str, torch.Tensor]:
    """AdamW on ``params`` (cosine lr, 50 warm-up steps, grad-norm clip 1), each step on ``--vae-batch`` fresh
    scene clips; ``loss_fn(x) -> (loss, log text)``. Checkpoints ``vae`` to ``path`` every 250 steps and at the end."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    for step in range(steps):
        x = scene_batch(rng, args.vae_batch)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, 50)
        loss, text = loss_fn(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            print(f"{name} {step:5d} {text} {time.time() - t0:.0f}s", flush=True)
        if (step + 1) % 250 == 0:
            torch.save(vae.state_dict(), path)
    torch.save(vae.state_dict(), path)
    print(f"{name} done in {time.time() - t0:.0f}s", flush=True)
    return vae.state_dict()


def train_decoder(args, work: Path) -> dict[str, torch.Tensor]:
    """Decoder + ``post_quant_conv`` from scratch: codes of fresh clips (+ noise) -> the clips."""
    torch.manual_seed(args.seed + 4)
    vae = WanVAE(vae_config())
    # Noise scale: the per-channel std of the codes of the first 1000 clips the DiT trains on (same seed).
    std = latent_code(clip_batch(np.random.default_rng(args.seed + 1), 1000)).std(dim=(0, 2, 3, 4)).view(1, -1, 1, 1, 1)

    def loss(x: torch.Tensor) -> tuple[torch.Tensor, str]:
        z = latent_code(x)
        sigma = 0.2 * std * torch.rand(z.shape[0], 1, 1, 1, 1)
        y = vae.decode(z + sigma * torch.randn_like(z))
        rec = (shape_weight(x) * ((y - x).abs() + (y - x).pow(2))).mean()
        return rec, f"rec {rec.item():.4f}"

    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    return fit_vae_part("decoder", vae, params, loss, args, args.dec_steps, args.dec_lr, args.seed + 4,
                        work / "vae_decoder.pt")


def train_encoder(args, work: Path) -> dict[str, torch.Tensor]:
    """Encoder + ``quant_conv`` from scratch: ``vae.encode(x)`` -> ``latent_code(x)`` (MSE)."""
    torch.manual_seed(args.seed + 5)
    vae = WanVAE(vae_config())

    def loss(x: torch.Tensor) -> tuple[torch.Tensor, str]:
        target = latent_code(x)
        err = (vae.encode(x) - target).pow(2).mean()
        return err, f"mse {err.item():.5f} (code var {target.var().item():.4f})"

    params = [*vae.encoder.parameters(), *vae.quant_conv.parameters()]
    return fit_vae_part("encoder", vae, params, loss, args, args.enc_steps, args.enc_lr, args.seed + 5,
                        work / "vae_encoder.pt")


def merged_vae(encoder: dict[str, torch.Tensor], decoder: dict[str, torch.Tensor]) -> WanVAE:
    """One VAE: the encoder stage's encoder + quant_conv, the decoder stage's decoder + post_quant_conv."""
    vae = WanVAE(vae_config())
    own = ("encoder.", "quant_conv.")
    vae.load_state_dict({k: (encoder if k.startswith(own) else decoder)[k] for k in vae.state_dict()})
    return vae.eval()


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
    p.add_argument("--stage", choices=("all", "dit", "decoder", "encoder", "export"), default="all",
                   help="dit, decoder and encoder are independent (run them side by side); export reads their "
                        "checkpoints from --work")
    p.add_argument("--seed", type=int, default=0)
    # One thread: on a shared 2-core machine, 2 OpenMP threads per process spin-wait on each other when the
    # scheduler is busy (measured here: 4x slower than 1 thread under load).
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clips", type=int, default=40000, help="clips whose codes the DiT trains on")
    p.add_argument("--dit-steps", type=int, default=10000)
    p.add_argument("--dit-batch", type=int, default=32)
    p.add_argument("--dit-lr", type=float, default=8e-4)
    p.add_argument("--vae-batch", type=int, default=4, help="clips per decoder / encoder step")
    p.add_argument("--dec-steps", type=int, default=4000)
    p.add_argument("--dec-lr", type=float, default=2e-3)
    p.add_argument("--enc-steps", type=int, default=3000)
    p.add_argument("--enc-lr", type=float, default=2e-3)
    p.add_argument("--flow-shift", type=float, default=2.0, help="sampling shift written to the scheduler config")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stage == "decoder":
        train_decoder(args, args.work)
        return
    if args.stage == "encoder":
        train_encoder(args, args.work)
        return
    te = text_encoder(args.seed)  # the DiT's dataset and the export need it; the VAE stages do not
    if args.stage in ("all", "dit"):
        dit = train_dit(args, latent_dataset(args, te, args.work), args.work)
        if args.stage == "dit":
            return
    else:
        dit = WanTransformer3D(dit_config())
        dit.load_state_dict(torch.load(args.work / "dit_ema.pt"))
    if args.stage == "all":
        vae = merged_vae(train_encoder(args, args.work), train_decoder(args, args.work))
    else:
        vae = merged_vae(torch.load(args.work / "vae_encoder.pt"), torch.load(args.work / "vae_decoder.pt"))
    mean, std = latent_stats(args.work)
    export(args.out, vae, mean, std, dit, te, args.flow_shift)


if __name__ == "__main__":
    main()
