"""LoRAs for any model family: read the common file layouts, merge exactly, unmerge bit for bit, on any mesh.

A family hands over its denoisers (``{"high": dit, "low": dit_2}``) and a ``LoraKeyMap`` (its module renaming);
nothing here knows a family. Typical use::

    handle = apply_loras({"high": dit}, [LoraSpec.parse("style.safetensors:0.8")], family_keys, ctx)
    ...
    handle.add([LoraSpec("lightning.safetensors")])   # more, re-merged from the originals
    handle.remove()                                     # the original weights, bit for bit
"""

from .keys import LoraKeyMap, NameResolver
from .layouts import LoraFile, LoraModule, read_lora_file
from .merge import LoraHandle, apply_loras
from .plan import build_plan
from .spec import EVERY_DENOISER, LoraSpec, file_sha256, lora_set_digest

__all__ = [
    "EVERY_DENOISER",
    "LoraFile",
    "LoraHandle",
    "LoraKeyMap",
    "LoraModule",
    "LoraSpec",
    "NameResolver",
    "apply_loras",
    "build_plan",
    "file_sha256",
    "lora_set_digest",
    "read_lora_file",
]
