"""prompt (+ image) -> text (+ image) states -> noise -> denoise loop (sequence-, CFG-parallel) -> VAE decode -> Video.

Image-to-video (``generate(..., image=...)``, see ``vidpar.models.wan.image_conditioning``): rank 0 runs the CLIP
image encoder (Wan 2.1 I2V) and the VAE encode of the conditioning once and broadcasts the results, exactly as the
text states; every rank checks the image first, so a bad image is a ``ValueError`` everywhere before any collective.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import torch

from vidpar.checkpoint import DenoiseCheckpoint, GenerationInterrupted, StopRequest
from vidpar.models.wan.components import OFFICIAL_CLIP, WanComponents, check_source, load_components
from vidpar.models.wan.image_conditioning import (
    ImageConditioning,
    ImageInput,
    check_image,
    condition_shape,
    encode_condition,
    image_digest,
    preprocess_image,
)
from vidpar.models.wan.text_encoder import check_prompts
from vidpar.parallel import ParallelConfig, ParallelContext, init_parallel
from vidpar.parallel.fsdp import shard_weights
from vidpar.parallelize import parallelize
from vidpar.schedulers import make_scheduler
from vidpar.video import Video, to_uint8_frames


@dataclass(frozen=True)
class GenerationRequest:
    """One generation's settings; identical on every rank."""

    prompt: str
    negative_prompt: str = ""
    height: int = 480
    width: int = 832
    num_frames: int = 81
    num_steps: int = 50
    guidance_scale: float = 5.0
    guidance_scale_2: float | None = None  # low-noise expert (Wan 2.2 A14B); defaults to guidance_scale
    seed: int = 0
    scheduler: str = "unipc"
    flow_shift: float | None = None  # None: the checkpoint's


def latent_shape(comps: WanComponents, req: GenerationRequest) -> tuple[int, int, int, int, int]:
    """``[1, z_dim, T, h, w]`` for a request; raises ``ValueError`` for impossible sizes (no collective)."""
    vae = comps.vae.config
    pt, ph, pw = comps.transformer.config.patch_size
    st, ss = vae.scale_factor_temporal, vae.scale_factor_spatial
    if req.num_frames < 1 or (req.num_frames - 1) % st:
        raise ValueError(f"num_frames must be of the form {st}k+1 (1, 5, 9, ..., 81), got {req.num_frames}")
    for name, size, p in (("height", req.height, ph), ("width", req.width, pw)):
        if size < 1 or size % (ss * p):
            raise ValueError(f"{name} must be a positive multiple of {ss * p} (VAE stride x patch), got {size}")
    t = (req.num_frames - 1) // st + 1
    if t % pt:
        raise ValueError(f"{t} latent frames are not divisible by the temporal patch {pt}")
    if req.num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {req.num_steps}")
    return (1, vae.z_dim, t, req.height // ss, req.width // ss)


def initial_noise(shape: tuple[int, ...], seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The starting latents: drawn on CPU from ``seed`` alone, so every world size and mesh gets the same noise."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)


def _to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


class Pipeline:
    """Wan text-to-video on a parallel mesh. Build with ``Pipeline.from_pretrained``."""

    def __init__(
        self, comps: WanComponents, ctx: ParallelContext, dtype: torch.dtype, vae_mode: str = "auto", fsdp: bool = False
    ) -> None:
        if ctx.config.cfg > 2:
            raise ValueError(f"cfg degree must be 1 or 2 (two guidance branches), got {ctx.config.cfg}")
        self.comps = comps
        self.ctx = ctx
        self.dtype = dtype
        self.vae_mode = vae_mode
        self.fsdp = fsdp and ctx.world_size > 1
        if self.fsdp and comps.text_encoder is None:
            raise ValueError("with fsdp=True every rank needs the text encoder (it is sharded, not broadcast)")
        self.latent_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        for dit in (comps.transformer, comps.transformer_2):
            if dit is not None:
                parallelize(dit, ctx)
                if self.fsdp:
                    shard_weights(dit, list(dit.blocks), ctx)
        if self.fsdp:
            te = comps.text_encoder.model
            shard_weights(te, list(te.encoder.block), ctx)
        # The decode uses every rank; the video lands on rank 0 only (others would hold it for nothing).
        parallelize(comps.vae, ctx, vae_mode=vae_mode, output="rank0")

    @classmethod
    def from_pretrained(
        cls,
        path_or_name: str | Path,
        parallel: ParallelConfig | str | None = None,
        dtype: torch.dtype | None = None,
        attention_backend: str = "auto",
        vae_mode: str = "auto",
        timeout: timedelta | None = None,
        plan_for: tuple[int, int, int] = (480, 832, 81),
        fsdp: bool = False,
        backend: str | None = None,
    ) -> "Pipeline":
        """Load a built-in model (``"tiny"``) or a Wan checkpoint folder and set up the mesh.

        Args:
            parallel: a ``ParallelConfig``; ``"auto"`` lets the planner choose for this world size (for videos of
                ``plan_for`` = (height, width, frames)); None: Ulysses over every rank.
            dtype: weights/compute dtype; default bf16 on CUDA, fp32 on CPU.
            vae_mode: parallel VAE decode layout (``"auto"``, ``"patch"``, ``"pipeline"``, ``"combined"``).
            timeout: for every collective (a dead rank then fails the others instead of hanging them).
            backend: process-group backend if vidpar creates the group (default nccl with CUDA, else gloo).
            fsdp: shard the DiT and text-encoder weights over every rank (FSDP2); identical results, ~1/P of the
                weight memory per GPU. Without it the text encoder lives on rank 0 only and its output is broadcast.
        """
        source = check_source(path_or_name)  # every rank, before any collective or weight
        ctx = init_parallel(_resolve_parallel(parallel, source, plan_for), backend=backend, timeout=timeout)
        if dtype is None:
            dtype = torch.bfloat16 if ctx.device.type == "cuda" else torch.float32
        holds_text_encoder = fsdp or ctx.rank == 0  # without FSDP rank 0 alone encodes and broadcasts
        comps = ctx_agree(ctx, lambda: load_components(
            source, dtype, ctx.device, holds_text_encoder, attention_backend, load_image_encoder=ctx.rank == 0))
        return cls(comps, ctx, dtype, vae_mode, fsdp)

    # ---- the steps of a generation ----

    def validate(self, req: GenerationRequest, image: ImageInput | None = None) -> tuple[int, ...]:
        """Check a request on this rank (identical everywhere): sizes, prompt lengths, scheduler name, and whether
        the model takes an image and this one is usable."""
        shape = latent_shape(self.comps, req)
        check_prompts(self.comps.tokenizer, [req.prompt, req.negative_prompt], self.comps.text_len)
        make_scheduler(req.scheduler, 1.0)
        mode = self.comps.image_mode
        if image is None and mode == "i2v":
            raise ValueError("this is an image-to-video model: pass image=... (a PIL image, uint8 array or tensor)")
        if image is not None:
            if mode == "t2v":
                raise ValueError("this is a text-to-video model: it takes no image (image must be None)")
            check_image(image, req.height, req.width)
            if self.comps.transformer.config.image_pos_embed_len is not None:
                raise ValueError("first-last-frame (FLF2V) models take two images; they are not supported yet")
            if self.comps.transformer.config.image_dim is not None and self.comps.image_tokens is None:
                raise ValueError(
                    "this Wan 2.1 I2V model needs a CLIP image encoder, and its folder has none vidpar can load "
                    f"(a diffusers folder's image_encoder/ + image_processor/; the official {OFFICIAL_CLIP} is not "
                    "supported: convert the checkpoint to the diffusers layout)"
                )
        return shape

    def encode_text(self, req: GenerationRequest) -> torch.Tensor:
        """``[2, L, text_dim]`` (prompt, negative prompt): encoded once on rank 0 and broadcast to all ranks
        (with FSDP every rank takes part in the sharded encoder's forward instead)."""
        if self.fsdp:
            return ctx_agree(self.ctx, lambda: self.comps.text_encoder.encode(
                [req.prompt, req.negative_prompt], self.comps.text_len)[0])
        dim = self.comps.transformer.config.text_dim
        states = torch.empty(2, self.comps.text_len, dim, device=self.ctx.device, dtype=self.dtype)

        def encode():
            out, _ = self.comps.text_encoder.encode([req.prompt, req.negative_prompt], self.comps.text_len)
            states.copy_(out)

        ctx_agree(self.ctx, encode, only_rank0=True)
        return self.ctx.comm.broadcast(states, 0, "world")

    def encode_image(self, image: ImageInput, req: GenerationRequest, shape: tuple[int, ...]) -> ImageConditioning:
        """The image's conditioning (see ``ImageConditioning``), computed once on rank 0 and broadcast.

        Rank 0 alone holds the CLIP encoder, and one VAE encode is cheap next to the denoise loop, so the other ranks
        wait rather than repeat it; the broadcast also makes the conditioning bit-identical on every rank.
        """
        comps, device, mode = self.comps, self.ctx.device, self.comps.image_mode
        vae = comps.vae.config
        cond = torch.empty(condition_shape(mode, vae.z_dim, vae.scale_factor_temporal, shape),
                           device=device, dtype=self.latent_dtype)
        states = None
        if comps.transformer.config.image_dim is not None:
            dims = (1, comps.image_tokens, comps.transformer.config.image_dim)
            states = torch.empty(dims, device=device, dtype=self.dtype)

        def encode():
            with torch.no_grad():
                if states is not None:
                    states.copy_(comps.image_encoder.encode(image))
                pixels = preprocess_image(image, req.height, req.width)
                cond.copy_(encode_condition(comps.vae, pixels, mode, req.num_frames, self.latent_dtype))

        ctx_agree(self.ctx, encode, only_rank0=True)
        cond = self.ctx.comm.broadcast(cond, 0, "world")
        if states is not None:
            states = self.ctx.comm.broadcast(states, 0, "world")
        return ImageConditioning(mode, cond, states)

    def denoise(
        self,
        latents: torch.Tensor,
        text: torch.Tensor,
        req: GenerationRequest,
        checkpoint: DenoiseCheckpoint | None = None,
        stop: StopRequest | None = None,
        progress: bool = False,
        image: ImageConditioning | None = None,
    ) -> torch.Tensor:
        """Run the sampler. latents ``[1, z, T, h, w]`` full on every rank; returns the final latents.

        ``image``: the image conditioning (``encode_image``); for TI2V the returned latents' first frame is the image
        latent, as in diffusers."""
        comps = self.comps
        sched = make_scheduler(req.scheduler, req.flow_shift or comps.flow_shift)
        sched.set_timesteps(req.num_steps, device=self.ctx.device)
        start = 0
        if checkpoint is not None and (state := checkpoint.load()) is not None:
            start = int(state["step"])
            latents = state["latents"].to(device=latents.device, dtype=latents.dtype)
            sched.load_state_dict(_to_device(state["scheduler"], self.ctx.device))
        cond, uncond = text[:1], text[1:]
        boundary = comps.boundary_ratio * sched.num_train_timesteps if comps.boundary_ratio else None
        bar = _progress(req.num_steps, start) if progress and self.ctx.rank == 0 else None
        for i in range(start, req.num_steps):
            t = sched.timesteps[i]
            low_noise = boundary is not None and comps.transformer_2 is not None and t.item() < boundary
            model = comps.transformer_2 if low_noise else comps.transformer
            scale = (req.guidance_scale_2 or req.guidance_scale) if low_noise else req.guidance_scale
            with torch.no_grad():
                flow = self._guided_flow(model, latents, t, cond, uncond, scale, image)
            latents = sched.step(flow, t, latents)
            if bar is not None:
                bar.update(1)
            stopping = stop is not None and self._any_rank(stop.is_set())
            if checkpoint is not None and (stopping or (i + 1) % checkpoint.every == 0) and self.ctx.rank == 0:
                checkpoint.save(i + 1, latents, sched.state_dict())
            if stopping:
                if bar is not None:
                    bar.close()
                raise GenerationInterrupted(i + 1, checkpoint.path if checkpoint else None)
        if bar is not None:
            bar.close()
        return latents if image is None else image.impose(latents)

    def _guided_flow(self, model, latents, t, cond, uncond, scale: float, image=None) -> torch.Tensor:
        """Classifier-free guidance; with cfg=2 the two branches run on the two cfg rank groups."""
        if image is None:
            x, img = latents.to(self.dtype), None
            ts = t.reshape(1).to(torch.float32).expand(x.shape[0])
        else:  # the conditioning enters the input (channels or first frame) and, for TI2V, the timesteps
            x, img = image.model_input(latents).to(self.dtype), image.image_states
            ts = image.timestep(t, latents, model.config.patch_size)
        if scale <= 1.0:
            return model(x, ts, cond, img).to(latents.dtype)
        if self.ctx.config.cfg == 2:
            mine = cond if self.ctx.coords["cfg"] == 0 else uncond
            both = self.ctx.comm.all_gather(model(x, ts, mine, img).to(latents.dtype).contiguous(), "cfg")
            flow_c, flow_u = both[0], both[1]
        else:
            flow_c = model(x, ts, cond, img).to(latents.dtype)
            flow_u = model(x, ts, uncond, img).to(latents.dtype)
        return flow_u + scale * (flow_c - flow_u)

    def _any_rank(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=self.ctx.device)
        return self.ctx.comm.all_reduce(t, "world").item() > 0

    def decode(self, latents: torch.Tensor, output: str = "rank0") -> Video:
        """De-normalise and decode over every rank; frames on rank 0 (``"rank0"``) or on every rank (``"all"``)."""
        vae = self.comps.vae
        with torch.no_grad():
            z = vae.denormalize_latents(latents.to(next(vae.parameters()).dtype))
            video = vae.decode(z)  # the full video on rank 0, None elsewhere
        frames = to_uint8_frames(video[0]) if self.ctx.rank == 0 else None
        if output == "all" and self.ctx.world_size > 1:
            cfg = self.comps.vae.config
            t, h, w = z.shape[2:]
            st, ss = cfg.scale_factor_temporal, cfg.scale_factor_spatial
            shape = (1 + st * (t - 1), h * ss, w * ss, 3)
            buf = torch.from_numpy(frames) if frames is not None else torch.empty(shape, dtype=torch.uint8)
            frames = self.ctx.comm.broadcast(buf.to(self.ctx.device), 0, "world").cpu().numpy()
        return Video(frames)

    def generate(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        *,
        height: int = 480,
        width: int = 832,
        num_frames: int = 81,
        num_steps: int = 50,
        guidance_scale: float = 5.0,
        guidance_scale_2: float | None = None,
        seed: int = 0,
        scheduler: str = "unipc",
        flow_shift: float | None = None,
        output: str = "rank0",
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 1,
        stop: StopRequest | None = None,
        progress: bool = False,
        image: ImageInput | None = None,
    ) -> Video:
        """Generate one clip. Same arguments on every rank; returns a ``Video`` (frames on rank 0 by default).

        ``image``: the first frame for image-to-video models (required by Wan 2.1 I2V / Wan 2.2 I2V A14B, optional
        for Wan 2.2 TI2V-5B, refused by text-to-video models): a PIL image or uint8 array ``[H, W, 3]`` (resized to
        ``height`` x ``width`` as diffusers does) or a float tensor ``[3, height, width]`` in [0, 1].

        ``checkpoint_dir``: snapshot latents + scheduler state every ``checkpoint_every`` steps and resume from an
        existing snapshot of the same request; ``stop`` (see ``StopRequest``) ends the run after the current step
        with ``GenerationInterrupted`` once any rank's flag is set.
        """
        if output not in ("rank0", "all"):
            raise ValueError(f"output must be 'rank0' or 'all', got {output!r}")
        req = GenerationRequest(
            prompt, negative_prompt or "", height, width, num_frames, num_steps, guidance_scale,
            guidance_scale_2, seed, scheduler, flow_shift,
        )
        shape = self.validate(req, image)
        ckpt = None
        if checkpoint_dir is not None:
            key = {**asdict(req), "model": self.comps.name}
            if image is not None:  # a snapshot must not be resumed with another image
                key["image"] = image_digest(preprocess_image(image, height, width))
            ckpt = DenoiseCheckpoint(Path(checkpoint_dir), checkpoint_every, key)
        text = self.encode_text(req)
        cond = self.encode_image(image, req, shape) if image is not None else None
        latents = initial_noise(shape, seed, self.ctx.device, self.latent_dtype)
        latents = self.denoise(latents, text, req, ckpt, stop, progress, cond)
        video = self.decode(latents, output)
        if ckpt is not None:
            ckpt_done_barrier(self.ctx)
            if self.ctx.rank == 0:
                ckpt.clear()
        return video


def ckpt_done_barrier(ctx: ParallelContext) -> None:
    """Every rank has finished with the snapshot before rank 0 deletes it."""
    if ctx.world_size > 1:
        ctx.comm.all_reduce(torch.zeros(1, device=ctx.device), "world")


def ctx_agree(ctx: ParallelContext, fn, only_rank0: bool = False):
    """Run ``fn`` (on rank 0 only if ``only_rank0``) and make every rank raise if any rank failed.

    Without this, a rank that fails alone (a corrupt file, an out-of-memory) would leave the others waiting in
    their next collective until a timeout.
    """
    result, error = None, None
    if not only_rank0 or ctx.rank == 0:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
    if ctx.world_size > 1:
        flags = torch.zeros(ctx.world_size, device=ctx.device)
        flags[ctx.rank] = 1.0 if error is not None else 0.0
        ctx.comm.all_reduce(flags, "world")
        failed = [r for r, f in enumerate(flags.tolist()) if f > 0]
        if failed and error is None:
            raise RuntimeError(f"rank(s) {failed} failed (see their error messages); stopping this rank too")
    if error is not None:
        raise error
    return result


def _resolve_parallel(parallel, source, plan_for: tuple[int, int, int]) -> ParallelConfig:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if parallel is None:
        return ParallelConfig(ulysses=world)
    if isinstance(parallel, ParallelConfig):
        return parallel
    if parallel == "auto":
        from vidpar.plan_cli import auto_parallel_config_for  # planner: ranks layouts for this model and world

        height, width, frames = plan_for
        return auto_parallel_config_for(source, world, height=height, width=width, frames=frames)
    raise ValueError(f"parallel must be a ParallelConfig, 'auto' or None, got {parallel!r}")


def _progress(total: int, initial: int):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc="denoise", unit="step")


__all__ = ["GenerationRequest", "Pipeline", "initial_noise", "latent_shape"]
