"""A generated clip: uint8 frames and atomic saving to mp4, lossless npy, or a folder of PNGs (with a record of what
made it; see ``vidpar.outputs`` for which paths may be written)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidpar.outputs import (
    OutputRecord, check_output_target, frame_files, output_kind, write_file_output, write_folder_output,
)

VIDEO_SUFFIXES = (".mp4", ".npy", "")  # "" = a folder of PNGs


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """``[3, T, H, W]`` in [-1, 1] -> uint8 ``[T, H, W, 3]`` (as diffusers' video processor rounds)."""
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a decoded video [3, T, H, W], got {tuple(video.shape)}")
    x = (video.double() / 2 + 0.5).clamp(0, 1) * 255
    return x.round().to(torch.uint8).permute(1, 2, 3, 0).contiguous().cpu().numpy()


def check_output_path(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Validate an output path before any work (see ``vidpar.outputs.check_output_target``): a known suffix or a
    new folder, a writable parent, and an existing output only with ``overwrite`` and only if vidpar wrote it."""
    return check_output_target(path, overwrite=overwrite)


@dataclass
class Video:
    """Frames of one clip. ``frames`` is uint8 ``[T, H, W, 3]``, or None on ranks that did not receive it.

    ``record``: what made it (``Pipeline.generate`` fills it: model, request, mesh, dtype), written beside the
    output by ``save``. ``metadata``: facts about how it was made, identical on every rank (e.g. ``"cache"``: the
    steps and blocks a step-cache policy ran and skipped, see ``vidpar.cache.CacheSession.summary``).
    """

    frames: np.ndarray | None
    fps: int = 16
    record: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike, fps: int | None = None, *, overwrite: bool = False) -> Path:
        """Write ``.mp4`` (H.264 via PyAV or imageio-ffmpeg), ``.npy`` (raw uint8) or a folder of PNGs, with a
        record of what made it (``x.mp4.vidpar.json`` beside a file, ``vidpar.json`` inside a folder).

        A file appears atomically (written to a temporary name beside the target and renamed); a new folder is
        built under a temporary name and renamed. An existing output is refused unless ``overwrite``, and even
        then only what vidpar wrote is replaced (see ``vidpar.outputs``); nothing else is ever deleted.
        """
        if self.frames is None:
            raise ValueError("this rank holds no frames (only rank 0 receives the video by default)")
        fps = fps or self.fps
        t, h, w = self.frames.shape[:3]
        request = {**self.record.get("request", {}), "fps": fps}
        info = {**{k: v for k, v in self.record.items() if k != "request"}, "video": {"frames": t, "height": h,
                                                                                      "width": w}}
        record = OutputRecord(request, info)
        if output_kind(path) == "folder":
            writers = [partial(_write_png, frame) for frame in self.frames]
            return write_folder_output(Path(path), writers, record, overwrite=overwrite)
        if Path(path).suffix == ".npy":
            return write_file_output(Path(path), lambda tmp: np.save(tmp, self.frames), record, overwrite=overwrite)
        return write_file_output(Path(path), lambda tmp: _write_mp4(self.frames, tmp, fps), record,
                                 overwrite=overwrite)


def _write_png(frame: np.ndarray, filename: str) -> None:
    import av  # PyAV encodes PNG too, so no extra imaging dependency is needed

    with av.open(filename, mode="w", format="image2") as out:
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = frame.shape[1], frame.shape[0], "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _write_mp4(frames: np.ndarray, filename: str, fps: int) -> None:
    try:
        import av
    except ImportError:
        av = None
    if av is None:
        import imageio.v2 as imageio  # imageio-ffmpeg fallback

        imageio.mimwrite(filename, list(frames), fps=fps, codec="libx264", quality=8)
        return
    height, width = frames.shape[1:3]
    with av.open(filename, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        # yuv420p needs even sizes; pad by repeating the last row/column
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            if frame.shape[0] % 2 or frame.shape[1] % 2:
                frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Read frames back as uint8 ``[T, H, W, 3]`` (mp4 via PyAV, npy, or a PNG folder)."""
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path)
    import av

    files = frame_files(path) if path.is_dir() else [path]
    frames = []
    for f in files:
        with av.open(str(f)) as src:
            frames += [fr.to_ndarray(format="rgb24") for fr in src.decode(video=0)]
    return np.stack(frames)
