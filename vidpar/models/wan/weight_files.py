"""Cheap checks of a Wan checkpoint folder's weight files before anything loads, and the text encoder's real size.

Every safetensors file's header is parsed and its length checked against the header (a partial download is
refused naming the file); official ``.pth`` files get their zip directory read. Nothing here reads tensor data, so
every rank can run it before the process group starts. The text encoder's parameter count comes from the same
headers (diffusers layout) or its config (built-in ``tiny``), so the memory model sees the encoder this checkpoint
really has, not always umT5-XXL.
"""

from __future__ import annotations

from pathlib import Path

from vidpar.models.weights import check_safetensors, check_torch_file, find_weight_files, safetensors_params

from .workload import TEXT_ENCODER_PARAMS

# Sub-folders of a diffusers Wan folder whose weights vidpar loads (the DiTs' headers are read by their loader).
DIFFUSERS_WEIGHT_DIRS = ("vae", "text_encoder", "image_encoder")


def umt5_encoder_params(vocab: int, d_model: int, d_kv: int, num_heads: int, d_ff: int, num_layers: int,
                        num_buckets: int) -> int:
    """Exact parameter count of a gated-GELU ``UMT5EncoderModel`` (tied input embedding counted once): per layer
    q/k/v/o, its own relative-position bias, two RMSNorm weights and the gated FFN."""
    inner = num_heads * d_kv
    layer = 4 * d_model * inner + num_buckets * num_heads + 2 * d_model + 3 * d_model * d_ff
    return vocab * d_model + num_layers * layer + d_model


def check_weight_files(source: str | Path) -> float:
    """Check the weight files of a checked source (see the module docstring); returns the text encoder's
    parameter count. ``ValueError`` names a truncated or corrupt file."""
    if str(source) == "tiny":
        from .builtin import TINY_TEXT_DIM, TINY_UMT5

        return float(umt5_encoder_params(d_model=TINY_TEXT_DIM, **TINY_UMT5))
    path = Path(source)
    if (path / "model_index.json").is_file():
        params = TEXT_ENCODER_PARAMS
        for sub in DIFFUSERS_WEIGHT_DIRS:
            if not (path / sub).is_dir():
                continue
            try:
                files = find_weight_files(path / sub)
            except FileNotFoundError as e:
                raise ValueError(str(e)) from None
            if sub == "text_encoder":
                params = float(safetensors_params(files))
            else:
                for file in files:
                    check_safetensors(file)
        return params
    from .components import OFFICIAL_T5

    for name in ("Wan2.1_VAE.pth", "Wan2.2_VAE.pth", OFFICIAL_T5):
        if (path / name).is_file():
            check_torch_file(path / name)
    return TEXT_ENCODER_PARAMS  # the official layout ships umT5-XXL (its file name says so)


__all__ = ["check_weight_files", "umt5_encoder_params"]
