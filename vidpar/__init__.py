"""vidpar: video diffusion transformers on many GPUs, with exact sequence parallelism."""

from .parallel import ParallelConfig, ParallelContext, attention, init_parallel
from .parallelize import parallelize, unparallelize
from .pipeline import GenerationRequest, Pipeline
from .video import Video

__version__ = "0.1.0"

__all__ = [
    "GenerationRequest",
    "ParallelConfig",
    "ParallelContext",
    "Pipeline",
    "Video",
    "attention",
    "init_parallel",
    "parallelize",
    "unparallelize",
]
