"""vidpar: video diffusion transformers on many GPUs, with exact sequence parallelism."""

__version__ = "0.1.0"
