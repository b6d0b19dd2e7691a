"""A generated clip: uint8 frames and atomic saving to mp4, lossless npy, or a folder of PNGs."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

VIDEO_SUFFIXES = (".mp4", ".npy", "")  # "" = a folder of PNGs


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """``[3, T, H, W]`` in [-1, 1] -> uint8 ``[T, H, W, 3]`` (as diffusers' video processor rounds)."""
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a decoded video [3, T, H, W], got {tuple(video.shape)}")
    x = (video.double() / 2 + 0.5).clamp(0, 1) * 255
    return x.round().to(torch.uint8).permute(1, 2, 3, 0).contiguous().cpu().numpy()


def check_output_path(path: str | os.PathLike) -> Path:
    """Validate an output path before any work: known suffix and a writable parent folder."""
    path = Path(path)
    if path.suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"output {path}: use .mp4, .npy, or a folder name without suffix (PNG frames)")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise ValueError(f"output {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"output {path}: folder {parent} is not writable")
    return path


@dataclass
class Video:
    """Frames of one clip. ``frames`` is uint8 ``[T, H, W, 3]``, or None on ranks that did not receive it.

    ``metadata``: facts about how it was made, identical on every rank (e.g. ``"cache"``: the steps and blocks a
    step-cache policy ran and skipped, see ``vidpar.cache.CacheSession.summary``)."""

    frames: np.ndarray | None
    fps: int = 16
    metadata: dict = field(default_factory=dict)

    def save(self, path: str | os.PathLike, fps: int | None = None) -> Path:
        """Write ``.mp4`` (H.264 via PyAV or imageio-ffmpeg), ``.npy`` (raw uint8) or a folder of PNGs.

        The file appears atomically: it is written to a temporary name beside the target and renamed.
        """
        if self.frames is None:
            raise ValueError("this rank holds no frames (only rank 0 receives the video by default)")
        path = check_output_path(path)
        fps = fps or self.fps
        parent = path.resolve().parent
        if path.suffix == "":
            tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}.tmp"))
            try:
                _write_pngs(self.frames, tmp)
                if path.exists():
                    shutil.rmtree(path)
                os.replace(tmp, path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return path
        fd, tmp_name = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=path.suffix)
        os.close(fd)
        try:
            if path.suffix == ".npy":
                np.save(tmp_name, self.frames)
            else:
                _write_mp4(self.frames, tmp_name, fps)
            os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; a video is meant to be shared
            os.replace(tmp_name, path)
        finally:
            if os.path.exists(tmp_name):
                os.remove(tmp_name)
        return path


def _write_pngs(frames: np.ndarray, folder: Path) -> None:
    import av  # PyAV encodes PNG too, so no extra imaging dependency is needed

    for i, frame in enumerate(frames):
        with av.open(str(folder / f"{i:05d}.png"), mode="w", format="image2") as out:
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

    files = sorted(path.glob("*.png")) if path.is_dir() else [path]
    frames = []
    for f in files:
        with av.open(str(f)) as src:
            frames += [fr.to_ndarray(format="rgb24") for fr in src.decode(video=0)]
    return np.stack(frames)
