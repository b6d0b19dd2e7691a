"""prompt (+ image) -> prompt states (+ image conditioning) -> noise -> denoise loop (sequence-, CFG-parallel) ->
VAE decode -> Video, for any model family.

The pipeline reads only the family seam (``vidpar.models.family``): the model's ``ModelCard`` (geometry, defaults,
sampler, guidance kind) and its ``LoadedModel`` (prompt and image encoding with known shapes, the denoiser call of
one guidance branch, the modules to parallelize and shard). Prompt states and image conditioning are computed once
on rank 0 and broadcast (or, with FSDP, by every rank through the sharded text encoder); every rank checks a
request first, so a bad request is a ``ValueError`` everywhere before any collective.
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

import torch

from vidpar.cache import CacheSession
from vidpar.checkpoint import DenoiseCheckpoint, GenerationInterrupted, StopRequest
from vidpar.checkpoint_lock import hold_checkpoint_dir
from vidpar.models.family import LoadedModel, ModelCard, StepInfo, TensorSpec
from vidpar.models.registry import check_source
from vidpar.outputs import request_fields
from vidpar.parallel import ParallelConfig, ParallelContext, init_parallel
from vidpar.parallel.fsdp import shard_weights
from vidpar.parallelize import parallelize
from vidpar.preflight import check_attention_backend, check_fits
from vidpar.schedulers import make_scheduler
from vidpar.step_guard import non_finite_error, step_flags
from vidpar.video import Video, to_uint8_frames

MAX_SEED = 2**64 - 1
log = logging.getLogger("vidpar")


@dataclass(frozen=True)
class GenerationRequest:
    """One generation's settings; identical on every rank. ``None`` means the model's own default (its card)."""

    prompt: str
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    num_steps: int | None = None
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None  # a second expert's scale (Wan 2.2 A14B); None: the card's, or the first
    seed: int = 0
    scheduler: str | None = None
    flow_shift: float | None = None

    def resolved(self, card: ModelCard) -> "GenerationRequest":
        """This request with every unset field taken from ``card`` (its defaults and sampler)."""
        d = card.defaults
        pick = lambda value, default: default if value is None else value  # noqa: E731
        return replace(
            self,
            negative_prompt=pick(self.negative_prompt, d.negative_prompt),
            height=pick(self.height, d.height), width=pick(self.width, d.width),
            num_frames=pick(self.num_frames, d.num_frames), num_steps=pick(self.num_steps, d.num_steps),
            guidance_scale=pick(self.guidance_scale, d.guidance_scale),
            guidance_scale_2=self._scale_2(d.guidance_scale_2),
            scheduler=pick(self.scheduler, card.sampler.name), flow_shift=pick(self.flow_shift, card.sampler.shift),
        )

    def _scale_2(self, default: float | None) -> float | None:
        """The second expert's scale: as given; else, if the first scale is given, None (the same); else the
        card's pair."""
        if self.guidance_scale_2 is not None:
            return self.guidance_scale_2
        return None if self.guidance_scale is not None else default


def check_request_values(req: GenerationRequest) -> None:
    """Types and ranges of a resolved request (no model needed); ``ValueError`` naming the field."""
    if not isinstance(req.prompt, str) or not isinstance(req.negative_prompt, str):
        raise ValueError("prompt and negative_prompt must be strings")
    if isinstance(req.num_steps, bool) or not isinstance(req.num_steps, int) or req.num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {req.num_steps!r}")
    if isinstance(req.seed, bool) or not isinstance(req.seed, int) or not 0 <= req.seed <= MAX_SEED:
        raise ValueError(f"seed must be an int in [0, 2**64 - 1], got {req.seed!r}")
    for name in ("guidance_scale", "guidance_scale_2", "flow_shift"):
        value = getattr(req, name)
        if value is None and name == "guidance_scale_2":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        if name.startswith("guidance") and value < 0:
            raise ValueError(f"{name} must be >= 0 (1 or less: no guidance), got {value}")
    if req.flow_shift <= 0:
        raise ValueError(f"flow_shift must be > 0, got {req.flow_shift}")


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
    """Text/image-to-video for any registered model family on a parallel mesh. Build with ``from_pretrained``.

    ``comps`` is the family's ``LoadedModel`` (its parts are family-specific attributes).
    """

    def __init__(
        self, comps: LoadedModel, ctx: ParallelContext, dtype: torch.dtype, vae_mode: str = "auto", fsdp: bool = False,
        loras: Sequence[Any] = (), compile: Any = False, ulysses_overlap: bool = False, fused_qkv: bool = False,
    ) -> None:
        if ctx.config.cfg > 2:
            raise ValueError(f"cfg degree must be 1 or 2 (two guidance branches), got {ctx.config.cfg}")
        self.comps = comps
        self.card = comps.card
        if ctx.config.cfg == 2 and self.card.guidance != "cfg":
            raise ValueError(f"{self.card.name} uses {self.card.guidance} guidance (one branch): cfg=2 has no "
                             "second branch to run; use the ranks for ulysses or ring instead")
        self.ctx = ctx
        self.dtype = dtype
        self.vae_mode = vae_mode
        self.fsdp = fsdp and ctx.world_size > 1
        if self.fsdp and not comps.has_text_encoder:
            raise ValueError("with fsdp=True every rank needs the text encoder (it is sharded, not broadcast)")
        self.latent_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        for dit in comps.denoisers():
            parallelize(dit, ctx)
            if self.fsdp:
                shard_weights(dit, comps.fsdp_units(dit), ctx)
        if self.fsdp and (te := comps.text_encoder_fsdp()) is not None:
            shard_weights(te[0], te[1], ctx)
        # The decode uses every rank; the video lands on rank 0 only (others would hold it for nothing).
        parallelize(comps.vae, ctx, vae_mode=vae_mode, output="rank0")
        self._loras = None  # a vidpar.lora.LoraHandle once a LoRA is loaded (merged after sharding: 1/P kept)
        if loras:
            self.load_loras(loras)
        self.compiled = self._speed_options(compile, ulysses_overlap, fused_qkv)

    def _speed_options(self, compile: Any, ulysses_overlap: bool, fused_qkv: bool) -> dict[str, int]:
        """Per-GPU speed options (all off by default; results are the same either way): the Ulysses overlap, the
        fused q/k/v projection, and regional ``torch.compile`` of the denoisers' blocks (and of the VAE decode
        when it runs on one process). Returns how many regions were compiled."""
        from vidpar.compile import CompileOptions, compile_model
        from vidpar.kernels import set_fused_qkv
        from vidpar.parallel.plan import set_ulysses_overlap

        options = CompileOptions.coerce(compile)  # every rank, before any collective of a forward
        for dit in self.comps.denoisers():
            set_ulysses_overlap(dit, ulysses_overlap)
            set_fused_qkv(dit, fused_qkv)
        if options is None:
            return {"denoiser": 0, "vae": 0}
        return compile_model(self.comps, options, vae=options.vae and self.ctx.world_size == 1)

    @classmethod
    def from_pretrained(
        cls,
        path_or_name: str | Path,
        parallel: ParallelConfig | str | None = None,
        dtype: torch.dtype | None = None,
        attention_backend: str = "auto",
        vae_mode: str = "auto",
        timeout: timedelta | None = None,
        plan_for: tuple[int, int, int] | None = None,
        fsdp: bool = False,
        backend: str | None = None,
        loras: Sequence[Any] = (),
        compile: Any = False,
        ulysses_overlap: bool = False,
        fused_qkv: bool = False,
    ) -> "Pipeline":
        """Load a built-in model or a checkpoint folder of any registered family and set up the mesh.

        Args:
            parallel: a ``ParallelConfig``; ``"auto"`` lets the planner choose for this world size (for videos of
                ``plan_for`` = (height, width, frames), default the model's own size); None: Ulysses over every rank;
                or a ``ParallelContext`` already set up (``init_parallel``).
            dtype: weights/compute dtype; default bf16 on CUDA, fp32 on CPU.
            vae_mode: parallel VAE decode layout (``"auto"``, ``"patch"``, ``"pipeline"``, ``"combined"``).
            timeout: for every collective (a dead rank then fails the others instead of hanging them).
            backend: process-group backend if vidpar creates the group (default nccl with CUDA, else gloo).
            fsdp: shard the denoiser and text-encoder weights over every rank (FSDP2); identical results, ~1/P of
                the weight memory per GPU. Without it the text encoder lives on rank 0 only and its output is
                broadcast.
            loras: LoRAs merged after loading (see ``load_loras``), e.g. ``[("lightx2v.safetensors", 1.0)]``.
            compile: ``True`` or a ``vidpar.compile.CompileOptions``: regional ``torch.compile`` of every denoiser
                block (compiled once per input shape, at the first forward), without graph breaks on any mesh.
            ulysses_overlap: overlap the Ulysses all-to-alls with the q/k/v and output projections.
            fused_qkv: one GEMM for the q, k, v projections of self-attention.
        """
        if loras:
            from vidpar.lora import LoraSpec

            loras = [LoraSpec.coerce(x) for x in loras]  # every rank, before any collective
        if compile is not False:
            from vidpar.compile import CompileOptions

            CompileOptions.coerce(compile)  # a bad value fails on every rank before any collective
        family, source = check_source(path_or_name)  # every rank, before any collective or weight
        card = family.card(source)  # configs typed and weight files checked (headers only), before any collective
        if isinstance(parallel, ParallelContext):
            ctx = parallel
        else:
            ctx = init_parallel(_resolve_parallel(parallel, family, source, plan_for), backend=backend,
                                timeout=timeout)
        if dtype is None:
            dtype = torch.bfloat16 if ctx.device.type == "cuda" else torch.float32
        check_attention_backend(attention_backend, ctx, dtype, card)  # identical on every rank: no agreement needed
        holds_text_encoder = fsdp or ctx.rank == 0  # without FSDP rank 0 alone encodes and broadcasts
        comps = ctx_agree(ctx, lambda: family.load(
            source, dtype=dtype, device=ctx.device, attention_backend=attention_backend,
            load_text_encoder=holds_text_encoder, load_image_encoder=ctx.rank == 0))
        return cls(comps, ctx, dtype, vae_mode, fsdp, loras, compile, ulysses_overlap, fused_qkv)

    # ---- LoRAs ----

    def load_loras(self, loras: Sequence[Any]) -> None:
        """Merge LoRAs (``LoraSpec``, ``"FILE[:STRENGTH[:TARGET]]"`` or ``(path, strength[, target])``; same list on
        every rank) into the denoisers, exactly (``W + strength * alpha/rank * B @ A`` in fp32, cast once). A bad
        file raises ``ValueError`` on every rank with no weight changed."""
        from vidpar.lora import LoraHandle, LoraSpec

        specs = [LoraSpec.coerce(x) for x in loras]
        if self.comps.lora_keys is None:
            raise ValueError(f"{self.card.name}: its family ({self.card.family}) does not take LoRAs yet")
        if self._loras is None:
            self._loras = LoraHandle(self.comps.lora_targets(), self.comps.lora_keys, self.ctx)
        self._loras.add(specs)

    def load_lora(self, path: str | Path, strength: float = 1.0, target: str = "both") -> None:
        """Merge one LoRA file (``target``: ``"both"``, or one expert of a two-expert model: ``"high"``/``"low"``)."""
        from vidpar.lora import LoraSpec

        self.load_loras([LoraSpec(Path(path), strength, target)])

    def unload_loras(self) -> None:
        """Restore the denoisers' original weights, bit for bit."""
        if self._loras is not None:
            self._loras.remove()
            self._loras = None

    @property
    def loras(self) -> tuple:
        """The merged ``LoraSpec``s, in the order they were loaded."""
        return () if self._loras is None else self._loras.specs

    # ---- the steps of a generation ----

    def resolve(self, req: GenerationRequest) -> GenerationRequest:
        """``req`` with the model's defaults filled in."""
        return req.resolved(self.card)

    def validate(self, req: GenerationRequest, image: Any = None) -> tuple[int, ...]:
        """Check a request on this rank (identical everywhere): values, sizes, prompt lengths, scheduler, and
        whether the model takes an image and this one is usable. Returns the latent shape ``[1, C, T, h, w]``."""
        req = self.resolve(req)
        check_request_values(req)
        shape = self.card.geometry.latent_shape(req.height, req.width, req.num_frames)
        self.comps.check_prompts([req.prompt, req.negative_prompt])
        make_scheduler(req.scheduler, req.flow_shift)
        self.comps.check_request(guidance_scale_2=req.guidance_scale_2)
        if self.ctx.config.cfg == 2 and not self._two_branches(req):
            raise ValueError(f"guidance_scale {req.guidance_scale} runs one branch: cfg=2 would compute it twice; "
                             "use --cfg 1 (the ranks can go to ulysses or ring)")
        kind = self.card.image
        if image is None and kind == "required":
            raise ValueError("this is an image-to-video model: pass image=... (a PIL image, uint8 array or tensor)")
        if image is not None:
            if kind == "none":
                raise ValueError("this is a text-to-video model: it takes no image (image must be None)")
            self.comps.check_image(image, req.height, req.width)
        return shape

    def _two_branches(self, req: GenerationRequest) -> bool:
        """Whether a step runs two guidance branches (CFG with a scale above 1, on either expert)."""
        if self.card.guidance != "cfg":
            return False
        return req.guidance_scale > 1.0 or (req.guidance_scale_2 is not None and req.guidance_scale_2 > 1.0)

    def encode_text(self, req: GenerationRequest) -> list[dict[str, torch.Tensor]]:
        """``[cond]`` or ``[cond, uncond]`` prompt states (``comps.text_spec`` shapes): encoded once on rank 0 and
        broadcast to all ranks (with FSDP every rank takes part in the sharded encoder's forward instead)."""
        req = self.resolve(req)
        prompts = [req.prompt, req.negative_prompt] if self._two_branches(req) else [req.prompt]
        if self.fsdp:
            return ctx_agree(self.ctx, lambda: self.comps.encode_text(prompts))
        spec = self.comps.text_spec(self.dtype)
        states = [{k: s.empty(self.ctx.device) for k, s in spec.items()} for _ in prompts]

        def encode():
            for mine, theirs in zip(states, self.comps.encode_text(prompts)):
                _copy_into(mine, theirs, spec)

        ctx_agree(self.ctx, encode, only_rank0=True)
        return [self._broadcast(s) for s in states]

    def encode_image(self, image: Any, req: GenerationRequest, shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """The image's conditioning tensors (``comps.image_spec``), computed once on rank 0 and broadcast.

        One VAE encode (and an image encoder, if the model has one) is cheap next to the denoise loop, so the other
        ranks wait rather than repeat it; the broadcast also makes the conditioning bit-identical on every rank.
        """
        req = self.resolve(req)
        spec = self.comps.image_spec(shape, self.dtype, self.latent_dtype)
        tensors = {k: s.empty(self.ctx.device) for k, s in spec.items()}

        def encode():
            out = self.comps.encode_image(image, req.height, req.width, req.num_frames, shape, self.dtype,
                                          self.latent_dtype)
            _copy_into(tensors, out, spec)

        ctx_agree(self.ctx, encode, only_rank0=True)
        return self._broadcast(tensors)

    def _broadcast(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: self.ctx.comm.broadcast(v, 0, "world") for k, v in tensors.items()}

    def denoise(
        self,
        latents: torch.Tensor,
        text: list[dict[str, torch.Tensor]],
        req: GenerationRequest,
        checkpoint: DenoiseCheckpoint | None = None,
        stop: StopRequest | None = None,
        progress: bool = False,
        image: dict[str, torch.Tensor] | None = None,
        sparse: Sequence[Any] = (),
        cache: CacheSession | None = None,
    ) -> torch.Tensor:
        """Run the sampler. latents ``[1, C, T, h, w]`` full on every rank; returns the final latents (after
        ``comps.finalize_latents``, e.g. the image latent imposed on frame 0 for Wan TI2V).

        ``text``: ``encode_text``'s states; ``image``: ``encode_image``'s conditioning (or None); ``sparse``: the
        sparse-attention handles to switch per step (dense warm-up and final steps); ``cache``: a step-cache session
        for this request, attached (``with cache.attached():``); its state is part of every snapshot."""
        if cache is not None and not cache.is_attached:
            raise ValueError("denoise(cache=session) needs the session attached: with session.attached(): ...")
        req = self.resolve(req)
        sched = make_scheduler(req.scheduler, req.flow_shift)
        sched.set_timesteps(req.num_steps, device=self.ctx.device)
        start = 0
        if checkpoint is not None and (state := checkpoint.load()) is not None:
            start = int(state["step"])
            latents = state["latents"].to(device=latents.device, dtype=latents.dtype)
            sched.load_state_dict(_to_device(state["scheduler"], self.ctx.device))
            if cache is not None:
                cache.load_state_dict(state["extra"]["cache"])
        bar = _progress(req.num_steps, start) if progress and self.ctx.rank == 0 else None
        for i in range(start, req.num_steps):
            t = sched.timesteps[i]
            step = StepInfo(i, req.num_steps, t, sched.num_train_timesteps)
            scale = self.comps.guidance_scale(step, req.guidance_scale, req.guidance_scale_2)
            for handle in sparse:
                handle.set_step(i, req.num_steps)
            if cache is not None:
                cache.begin_step(step, self._branches(text, scale))
            with torch.no_grad():
                flow = self._guided_flow(latents, step, text, image, scale, cache)
            latents = sched.step(flow, t, latents)
            if bar is not None:
                bar.update(1)
            stopping, broken = step_flags(self.ctx, latents, stop)  # one small all-reduce, agreed everywhere
            if broken:
                raise non_finite_error(i + 1, req.num_steps, scale, req.flow_shift)
            if checkpoint is not None and (stopping or (i + 1) % checkpoint.every == 0):
                extra = {"cache": cache.state_dict()} if cache is not None else None  # a collective: every rank
                ctx_agree(self.ctx, lambda: checkpoint.save(i + 1, latents, sched.state_dict(), extra),
                          only_rank0=True)
            if stopping:
                if bar is not None:
                    bar.close()
                raise GenerationInterrupted(i + 1, checkpoint.path if checkpoint else None)
        if bar is not None:
            bar.close()
        return self.comps.finalize_latents(latents, image)

    def _branches(self, text, scale: float) -> tuple[str, ...]:
        """The guidance branches a step evaluates: ``("cond",)`` for embedded guidance and scales <= 1."""
        if self.card.guidance != "cfg" or scale <= 1.0 or len(text) == 1:
            return ("cond",)
        return ("cond", "uncond")

    def _guided_flow(self, latents, step: StepInfo, text, image, scale: float,
                     cache: CacheSession | None = None) -> torch.Tensor:
        """Classifier-free guidance; with cfg=2 the two branches run on the two cfg rank groups. Embedded-guidance
        models and scales <= 1 run the conditional branch alone."""
        predict = self.comps.predict_flow if cache is None else cache.predictor(self.comps.predict_flow)
        if len(self._branches(text, scale)) == 1:
            return predict(latents, step, text[0], image, scale)
        uncond = replace(step, branch="uncond")
        if self.ctx.config.cfg == 2:
            mine = (step, text[0]) if self.ctx.coords["cfg"] == 0 else (uncond, text[1])
            flow = predict(latents, mine[0], mine[1], image, scale).contiguous()
            both = self.ctx.comm.all_gather(flow, "cfg")
            flow_c, flow_u = both[0], both[1]
        else:
            flow_c = predict(latents, step, text[0], image, scale)
            flow_u = predict(latents, uncond, text[1], image, scale)
        return flow_u + scale * (flow_c - flow_u)

    def _enable_sparse(self, sparse) -> list:
        """Sparse self-attention on every denoiser (after parallelize: the sparse op wraps the parallel one)."""
        if sparse is None:
            return []
        from vidpar.parallel.sparse import enable_sparse_attention

        handles = []
        try:
            for dit in self.comps.denoisers():
                ops, grid_fn = self.comps.attention_sites(dit)
                handles.append(enable_sparse_attention(dit, self.ctx, sparse, grid_fn, ops))
        except Exception:
            for h in handles:
                h.remove()
            raise
        return handles

    def decode(self, latents: torch.Tensor, output: str = "rank0") -> Video:
        """De-normalise and decode over every rank; frames on rank 0 (``"rank0"``) or on every rank (``"all"``)."""
        vae = self.comps.vae
        with torch.no_grad():
            z = vae.denormalize_latents(latents.to(next(vae.parameters()).dtype))
            video = vae.decode(z)  # the full video on rank 0, None elsewhere
        frames = to_uint8_frames(video[0]) if self.ctx.rank == 0 else None
        if output == "all" and self.ctx.world_size > 1:
            geo = self.card.geometry
            t, h, w = z.shape[2:]
            shape = (geo.video_frames(t), h * geo.spatial_stride, w * geo.spatial_stride, 3)
            buf = torch.from_numpy(frames) if frames is not None else torch.empty(shape, dtype=torch.uint8)
            frames = self.ctx.comm.broadcast(buf.to(self.ctx.device), 0, "world").cpu().numpy()
        return Video(frames, fps=self.card.defaults.fps)

    def generate(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        *,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_scale_2: float | None = None,
        seed: int = 0,
        scheduler: str | None = None,
        flow_shift: float | None = None,
        output: str = "rank0",
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 1,
        stop: StopRequest | None = None,
        progress: bool = False,
        image: Any = None,
        sparse_attention: Any = None,
        memory_check: bool = True,
        cache: Any = None,
    ) -> Video:
        """Generate one clip. Same arguments on every rank; returns a ``Video`` (frames on rank 0 by default).

        Settings left as None take the model's own defaults (``pipe.card.defaults``: its size, frames, steps and
        guidance; ``pipe.card.sampler``: the checkpoint's scheduler and shift).

        ``image``: the first frame for image-to-video models (required by I2V models, optional for Wan 2.2
        TI2V-5B, refused by text-to-video models): a PIL image or uint8 array ``[H, W, 3]`` (resized to
        ``height`` x ``width``) or a float tensor ``[3, height, width]`` in [0, 1].

        ``checkpoint_dir``: snapshot latents + scheduler state every ``checkpoint_every`` steps and resume from an
        existing snapshot of the same request; the folder is locked for the call (another run using it is
        refused). ``stop`` (see ``StopRequest``) ends the run after the current step with
        ``GenerationInterrupted`` once any rank's flag is set. Latents that become NaN/Inf end the run with
        ``vidpar.step_guard.NonFiniteLatents`` naming the step.

        ``memory_check``: refuse (``ValueError`` on every rank) a request the planner's memory model predicts not
        to fit this mesh and device, naming the predicted peak and the largest size that fits.

        ``sparse_attention``: structured sparse self-attention for this generation (``vidpar.parallel.sparse.
        SparseAttention`` or its CLI spec, e.g. ``"window"``, ``"radial:decay_factor=0.2"``, ``"svg"``), exact to its
        own mask on every mesh; None (default): dense, bit-identical to no sparsity.

        ``cache``: step caching (``vidpar.cache``): a policy (``FBCache(0.08)``, ``TeaCache()``, ``MagCache()``,
        ``TaylorSeer()``), a policy name, or ``(name, threshold)``; None (the default) runs every block of every
        step. Its settings are part of a snapshot's key; ``video.metadata["cache"]`` says which steps and how
        many blocks ran and were skipped.
        """
        if output not in ("rank0", "all"):
            raise ValueError(f"output must be 'rank0' or 'all', got {output!r}")
        req = self.resolve(GenerationRequest(
            prompt, negative_prompt, height, width, num_frames, num_steps, guidance_scale, guidance_scale_2, seed,
            scheduler, flow_shift,
        ))
        shape = self.validate(req, image)
        sparse = _sparse_config(sparse_attention)
        if sparse is not None and self.compiled["denoiser"]:
            raise ValueError("sparse attention does not run inside compiled blocks (its masks are built at run "
                             "time); use a pipeline loaded without compile for sparse_attention")
        session = CacheSession(cache, self.comps, self.ctx, req.num_steps) if cache is not None else None
        if memory_check:
            check_fits(self.card, req, self.ctx, self.dtype, self.vae_mode, self.fsdp)
        image_key = self.comps.image_digest(image, req.height, req.width) if image is not None else None
        record = {"request": request_fields(self.card.name, req, self.dtype), "mesh": asdict(self.ctx.config)}
        extras = {}  # what else makes this video: part of the snapshot key and of the output record
        if sparse is not None:
            extras["sparse_attention"] = sparse.describe()
        if self._loras is not None and self._loras.specs:  # a resume with other LoRAs must not mix two runs
            extras["loras"] = self._loras.digest
        if image_key is not None:  # a snapshot must not be resumed with another image
            extras["image"] = image_key
        if session is not None:  # resuming with other cache settings would mix two generations
            extras["cache"] = session.settings
        record["request"].update(extras)
        ckpt = None
        if checkpoint_dir is not None:
            key = {**asdict(req), "model": self.card.name, **extras}
            ckpt = DenoiseCheckpoint(Path(checkpoint_dir), checkpoint_every, key)
        with hold_checkpoint_dir(self.ctx, checkpoint_dir):  # no other run may use the snapshot folder meanwhile
            text = self.encode_text(req)
            cond = self.encode_image(image, req, shape) if image is not None else None
            latents = initial_noise(shape, req.seed, self.ctx.device, self.latent_dtype)
            handles = self._enable_sparse(sparse)
            try:
                with session.attached() if session is not None else nullcontext():
                    latents = self.denoise(latents, text, req, ckpt, stop, progress, cond, sparse=handles,
                                           cache=session)
            finally:
                for h in handles:
                    h.remove()
            video = self.decode(latents, output)
            if session is not None:
                video.metadata["cache"] = record["cache"] = session.summary()
                if self.ctx.rank == 0:
                    log.info(session.describe())
            if ckpt is not None:
                ckpt_done_barrier(self.ctx)
                if self.ctx.rank == 0:
                    ckpt.clear()
        video.record = record
        return video


def _sparse_config(spec: Any):
    """``None``, a ``SparseAttention`` or its CLI spec string -> ``SparseAttention`` or None (ValueError if bad)."""
    if spec is None:
        return None
    from vidpar.parallel.sparse import SparseAttention

    if isinstance(spec, SparseAttention):
        return spec
    if isinstance(spec, str):
        return SparseAttention.from_cli(spec)
    raise ValueError(f"sparse_attention must be a SparseAttention, a spec such as 'window', or None; got {spec!r}")


def _copy_into(dst: dict[str, torch.Tensor], src: dict[str, torch.Tensor], spec: dict[str, TensorSpec]) -> None:
    """Copy a family's output into the pre-shaped buffers, refusing any shape that differs from its spec."""
    if set(src) != set(spec):
        raise ValueError(f"the model returned {sorted(src)}, its spec promises {sorted(spec)}")
    for k, t in src.items():
        if tuple(t.shape) != spec[k].shape:
            raise ValueError(f"{k}: the model returned shape {tuple(t.shape)}, its spec promises {spec[k].shape}")
        dst[k].copy_(t)


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


def _resolve_parallel(parallel, family, source, plan_for: tuple[int, int, int] | None) -> ParallelConfig:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if parallel is None:
        return ParallelConfig(ulysses=world)
    if isinstance(parallel, ParallelConfig):
        return parallel
    if parallel == "auto":
        from vidpar.plan_cli import auto_parallel_config_for  # planner: ranks layouts for this model and world

        if plan_for is None:
            d = family.card(source).defaults
            plan_for = (d.height, d.width, d.num_frames)
        height, width, frames = plan_for
        return auto_parallel_config_for(source, world, height=height, width=width, frames=frames)
    raise ValueError(f"parallel must be a ParallelConfig, 'auto' or None, got {parallel!r}")


def _progress(total: int, initial: int):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc="denoise", unit="step")


__all__ = ["GenerationRequest", "Pipeline", "check_request_values", "initial_noise"]
