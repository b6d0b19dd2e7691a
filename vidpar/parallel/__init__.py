"""Sequence parallelism: the mesh, the communication layer, and exact distributed attention."""

from .attention import attention
from .config import ParallelConfig
from .context import ParallelContext, init_parallel
from .split import split_offsets, split_sizes

__all__ = ["ParallelConfig", "ParallelContext", "attention", "init_parallel", "split_offsets", "split_sizes"]
