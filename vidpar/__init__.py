"""vidpar: video diffusion transformers on many GPUs, with exact sequence parallelism."""

from .parallel import ParallelConfig, ParallelContext, attention, init_parallel
from .parallelize import parallelize, unparallelize

__version__ = "0.1.0"

__all__ = ["ParallelConfig", "ParallelContext", "attention", "init_parallel", "parallelize", "unparallelize"]
