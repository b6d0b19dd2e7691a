"""The HTTP request and response shapes (the OpenAI videos API, with vidpar's extras) and their validation.

A request body (JSON, or ``multipart/form-data`` as the OpenAI client sends it) becomes a ``VideoRequest``: a
``GenerationRequest`` resolved with the model's defaults, plus the image bytes and LoRA references. Its values are
then checked exactly as ``vidpar generate`` checks them (``Pipeline.validate``: sizes, frame rule, prompt length,
scheduler, image), so a bad request gets the CLI's one-line message and never reaches the GPUs.

Fields: ``model`` (must name the served model if given), ``prompt``, ``size`` ``"WIDTHxHEIGHT"``, ``seconds``
(clip length, rounded to the model's frame rule) or ``num_frames``; vidpar extras ``negative_prompt``, ``seed``,
``steps``, ``guidance_scale``, ``guidance_scale_2``, ``scheduler``, ``flow_shift``, ``image`` (base64, or a
multipart file ``image`` / ``input_reference``), ``format`` (``"mp4"``, the default, or ``"npy"``: the exact
uint8 frames ``[T, H, W, 3]``, lossless; H.264 is lossy and its encoder's output varies slightly between runs)
and ``loras`` (``[{"name": ..., "scale": ...}]``: LoRAs registered with the service, ``scale`` defaulting to the
registered one; the app resolves each name to its file and SHA-256 when it accepts the job, see
``vidpar.serve.lora_registry``) and ``cache`` (step caching: a policy name, or ``{"policy": "fbcache",
"threshold": 0.1, "warmup_steps": 2, "max_skips": ..., "final_steps": ..., "probe_blocks": ..., "interval": ...}``
as ``vidpar generate --cache``; the model's defaults for options left out). Status 422: the body is malformed (not JSON, unknown field, wrong type); 400: the
values are ones the model cannot use.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from vidpar.models.family import ModelCard
from vidpar.pipeline import GenerationRequest

from .jobs import JobRecord

MAX_IMAGE_BYTES = 32 * 2**20
FIELD_KINDS = {
    "model": "str", "prompt": "str", "size": "str", "seconds": "seconds", "num_frames": "int",
    "negative_prompt": "str", "seed": "int", "steps": "int", "guidance_scale": "number",
    "guidance_scale_2": "number", "scheduler": "str", "flow_shift": "number", "image": "str", "loras": "list",
    "format": "str", "cache": "cache",
}
CACHE_OPTIONS = ("threshold", "warmup_steps", "max_skips", "final_steps", "probe_blocks", "interval")
FORMATS = {"mp4": "video/mp4", "npy": "application/x-npy"}  # output format -> content type
IMAGE_FILE_FIELDS = ("image", "input_reference")


class RequestError(ValueError):
    """A request the service refuses: ``status`` 422 (malformed) or 400 (unusable values); ``param`` names the
    field when one is to blame."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


@dataclass(frozen=True)
class LoraRef:
    """A LoRA registered with the service, applied to one job with ``scale`` (None: the registered default).

    As parsed from a request only ``name`` (and maybe ``scale``) is set; once the job is accepted the registry
    fills in ``path``, ``sha256``, ``target`` and the scale, and the job keeps these (a name registered again later
    does not change it)."""

    name: str
    scale: float | None = None
    path: str | None = None
    sha256: str | None = None
    target: str = "both"


@dataclass(frozen=True)
class VideoRequest:
    """One accepted request: resolved settings (identical on every rank), the image file's bytes, LoRAs."""

    request: GenerationRequest
    image: bytes | None = None
    loras: tuple[LoraRef, ...] = ()
    format: str = "mp4"
    cache: dict[str, Any] | None = None  # ``vidpar.cache.make_policy`` arguments ({"name": ..., options}), or None

    def cache_policy(self):
        """The job's step-cache policy (``vidpar.cache``), or None."""
        if self.cache is None:
            return None
        from vidpar.cache import make_policy

        return make_policy(**self.cache)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (stored with the job and broadcast to every rank)."""
        return {"generation": asdict(self.request),
                "image": None if self.image is None else base64.b64encode(self.image).decode("ascii"),
                "loras": [asdict(lora) for lora in self.loras], "format": self.format, "cache": self.cache}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "VideoRequest":
        image = data.get("image")
        return cls(GenerationRequest(**data["generation"]),
                   None if image is None else base64.b64decode(image),
                   tuple(LoraRef(**lora) for lora in data.get("loras", ())), data.get("format", "mp4"),
                   data.get("cache"))


def _coerce(name: str, value: Any, from_form: bool) -> Any:
    """``value`` as the type of field ``name`` (form values arrive as strings); 422 when it is not one."""
    kind = FIELD_KINDS[name]
    if value is None:
        return None
    if kind == "cache":  # "fbcache" or {"policy": "fbcache", "threshold": 0.1, ...}
        if from_form and isinstance(value, str) and value.lstrip().startswith("{"):
            try:
                value = json.loads(value)
            except ValueError:
                raise RequestError(f"{name} must be a policy name or a JSON object", 422, name) from None
        if isinstance(value, str):
            value = {"policy": value}
        if not isinstance(value, dict) or not isinstance(value.get("policy"), str):
            raise RequestError(f"{name} must be a policy name or {{\"policy\": name, option: value, ...}}", 422, name)
        return value
    if kind == "list":
        if from_form:
            try:
                value = json.loads(value)
            except ValueError:
                raise RequestError(f"{name} must be a JSON list", 422, name) from None
        if not isinstance(value, list):
            raise RequestError(f"{name} must be a list, got {type(value).__name__}", 422, name)
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise RequestError(f"{name} must be a string, got {type(value).__name__}", 422, name)
        return value
    if kind in ("int", "number", "seconds") and isinstance(value, str) and (from_form or kind == "seconds"):
        try:
            value = int(value) if kind == "int" else float(value)
        except ValueError:
            what = "an integer" if kind == "int" else "a number"
            raise RequestError(f"{name} must be {what}, got {value!r}", 422, name) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "int" and isinstance(value, float)):
        what = "an integer" if kind == "int" else "a number"
        raise RequestError(f"{name} must be {what}, got {value!r}", 422, name)
    return value


def parse_fields(values: dict[str, Any], files: dict[str, bytes] | None = None,
                 from_form: bool = False) -> dict[str, Any]:
    """Typed fields of a request body (JSON object or form fields, plus uploaded files); 422 when malformed."""
    if not isinstance(values, dict):
        raise RequestError("the request body must be a JSON object", 422)
    unknown = sorted(set(values) - set(FIELD_KINDS) - set(IMAGE_FILE_FIELDS))
    if unknown:
        raise RequestError(f"unknown field(s) {unknown}; known: {sorted(FIELD_KINDS)}", 422, unknown[0])
    if "input_reference" in values:
        raise RequestError("input_reference: upload the image as a multipart file, or give 'image' as base64",
                           422, "input_reference")
    out = {name: _coerce(name, value, from_form) for name, value in values.items()}
    out = {k: v for k, v in out.items() if v is not None}
    for name, data in (files or {}).items():
        if name not in IMAGE_FILE_FIELDS:
            raise RequestError(f"unexpected file field {name!r}; upload the image as 'image' or 'input_reference'",
                               422, name)
        if "image_bytes" in out:
            raise RequestError("give one image (a file 'image' or 'input_reference', or base64 'image')", 422, name)
        out["image_bytes"] = data
        out.pop("image", None)
    if "image" in out:
        text = out.pop("image")
        if text.startswith("data:") and "," in text:  # a data URL: data:image/png;base64,....
            text = text.split(",", 1)[1]
        try:
            out["image_bytes"] = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError("image must be base64 (or a data: URL) of a PNG/JPEG file", 422, "image") from None
    if "prompt" not in out:
        raise RequestError("prompt is required", 422, "prompt")
    return out


def parse_size(size: str) -> tuple[int, int]:
    """``"832x480"`` -> ``(width, height)``."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", size)
    if m is None:
        raise RequestError(f"size must be 'WIDTHxHEIGHT' (e.g. '832x480'), got {size!r}", 400, "size")
    return int(m.group(1)), int(m.group(2))


def frames_for_seconds(seconds: float, card: ModelCard) -> int:
    """Frames of a clip of about ``seconds`` at the model's frame rate, on its frame rule (``k * stride + 1``)."""
    if not math.isfinite(seconds) or seconds <= 0:
        raise RequestError(f"seconds must be a positive number, got {seconds!r}", 400, "seconds")
    stride = card.geometry.temporal_stride
    return max(1, round(seconds * card.defaults.fps / stride)) * stride + 1


def parse_loras(items: list) -> tuple[LoraRef, ...]:
    """The ``loras`` field -> unresolved ``LoraRef`` items (names not checked against the registry yet); 422 when
    malformed."""
    refs = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or set(item) - {"name", "scale"}:
            raise RequestError(f"loras[{i}] must be {{\"name\": str, \"scale\": number}}", 422, "loras")
        scale = item.get("scale")
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                                  or not math.isfinite(scale)):
            raise RequestError(f"loras[{i}].scale must be a finite number, got {scale!r}", 422, "loras")
        refs.append(LoraRef(item["name"], None if scale is None else float(scale)))
    return tuple(refs)


def build_request(fields: dict[str, Any], card: ModelCard, served: tuple[str, ...]) -> VideoRequest:
    """A ``VideoRequest`` from ``parse_fields`` output, resolved with ``card``'s defaults; ``served``: the names
    ``model`` may take (the model's own and the ``--model`` value)."""
    model = fields.get("model")
    if model is not None and model not in served:
        raise RequestError(f"model {model!r} is not served here; this service runs {card.name!r}", 400, "model")
    width = height = None
    if "size" in fields:
        width, height = parse_size(fields["size"])
    frames = fields.get("num_frames")
    if "seconds" in fields:
        if frames is not None:
            raise RequestError("give seconds or num_frames, not both", 400, "seconds")
        frames = frames_for_seconds(float(fields["seconds"]), card)
    fmt = fields.get("format", "mp4")
    if fmt not in FORMATS:
        raise RequestError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}", 400, "format")
    loras = parse_loras(fields.get("loras", []))
    cache = parse_cache(fields.get("cache"))
    req = GenerationRequest(
        fields["prompt"], fields.get("negative_prompt"), height, width, frames, fields.get("steps"),
        fields.get("guidance_scale"), fields.get("guidance_scale_2"), fields.get("seed", 0), fields.get("scheduler"),
        fields.get("flow_shift"),
    ).resolved(card)
    image = fields.get("image_bytes")
    if image is not None and len(image) > MAX_IMAGE_BYTES:
        raise RequestError(f"image is larger than {MAX_IMAGE_BYTES // 2**20} MiB", 400, "image")
    return VideoRequest(req, image, loras, fmt, cache)


def parse_cache(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``cache`` field -> ``make_policy`` arguments, checked by building the policy (400 naming the option as
    ``vidpar generate --cache`` would; 422 for an unknown option)."""
    if spec is None:
        return None
    from vidpar.cache import make_policy

    unknown = sorted(set(spec) - {"policy", *CACHE_OPTIONS})
    if unknown:
        raise RequestError(f"cache: unknown option(s) {unknown}; known: {list(CACHE_OPTIONS)}", 422, "cache")
    args = {"name": spec["policy"], **{k: v for k, v in spec.items() if k != "policy"}}
    try:
        make_policy(**args)
    except (TypeError, ValueError) as e:
        raise RequestError(f"cache {spec['policy']}: {e}", 400, "cache") from None
    return args


def decode_image(data: bytes | None):
    """The uploaded image file as an RGB PIL image (None stays None); ``ValueError`` if it is not an image."""
    if data is None:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"image is not a readable image file ({e})") from None


def clip_seconds(num_frames: int, fps: int) -> str:
    """OpenAI's ``seconds`` field: the clip's length as a string (``"4"``, ``"0.25"``)."""
    return f"{(num_frames - 1) / fps:g}"


def video_object(job: JobRecord, fps: int) -> dict[str, Any]:
    """The OpenAI ``Video`` object of a job (plus vidpar's ``num_frames``, ``steps``, ``seed``, ``attempts``,
    ``format``, ``loras``: ``[{"name", "scale", "sha256"}]``)."""
    gen = job.request["generation"]
    return {
        "id": job.id, "object": "video", "model": job.model, "status": job.status, "progress": int(job.progress),
        "created_at": int(job.created_at),
        "completed_at": None if job.completed_at is None else int(job.completed_at),
        "expires_at": None, "prompt": gen["prompt"], "seconds": clip_seconds(gen["num_frames"], fps),
        "size": f"{gen['width']}x{gen['height']}", "remixed_from_video_id": None, "error": job.error,
        "num_frames": gen["num_frames"], "steps": gen["num_steps"], "seed": gen["seed"], "attempts": job.attempts,
        "format": job.request.get("format", "mp4"), "cache": job.request.get("cache"),
        "loras": [{k: lora.get(k) for k in ("name", "scale", "sha256")} for lora in job.request.get("loras", ())],
    }


def error_body(message: str, status: int, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    kind = "invalid_request_error" if status in (400, 404, 409, 422) else "server_error"
    if status == 401:
        kind = "authentication_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


__all__ = ["FORMATS", "LoraRef", "RequestError", "VideoRequest", "build_request", "clip_seconds",
           "decode_image", "error_body", "frames_for_seconds", "parse_fields", "parse_size", "video_object"]
