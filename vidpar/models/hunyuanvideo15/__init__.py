"""HunyuanVideo-1.5 (text- and image-to-video): prompt, glyph and image encoders and the DiT's conditioning."""

from .conditioning import HunyuanConditioning, i2v_conditioning, t2v_conditioning
from .glyph_encoder import GlyphEncoder, GlyphTokenizer, extract_glyph_text
from .image_encoder import HunyuanImageEncoder
from .prompt_encoder import HunyuanPromptEncoder, PromptSpec, PromptStates, PromptTokenizers
from .text_encoder import HunyuanTextEncoder, TemplateTokenizer

__all__ = [
    "GlyphEncoder",
    "GlyphTokenizer",
    "HunyuanConditioning",
    "HunyuanImageEncoder",
    "HunyuanPromptEncoder",
    "HunyuanTextEncoder",
    "PromptSpec",
    "PromptStates",
    "PromptTokenizers",
    "TemplateTokenizer",
    "extract_glyph_text",
    "i2v_conditioning",
    "t2v_conditioning",
]
