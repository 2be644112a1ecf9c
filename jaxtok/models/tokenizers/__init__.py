"""Image tokenizers sharing one API (tokenizer.py): CNN VQGAN, ViT-VQGAN, TiTok (and
the released two-stage TiTok) and the per-patch MLP tokenizer."""

from jaxtok.models.tokenizers.patch import PatchTokenizer
from jaxtok.models.tokenizers.titok import TITOK_SIZES, TiTok
from jaxtok.models.tokenizers.titok_two_stage import TiTokTwoStage
from jaxtok.models.tokenizers.tokenizer import (
    Tokenizer, TokenizerOutput, check_tokens, prepare_images)
from jaxtok.models.tokenizers.vit import VIT_SIZES, ViTSize, ViTTokenizer
from jaxtok.models.tokenizers.vqgan import VQGAN, VQGANConfig

__all__ = ["PatchTokenizer", "TITOK_SIZES", "VIT_SIZES", "VQGAN", "TiTok", "TiTokTwoStage",
           "Tokenizer", "TokenizerOutput", "VQGANConfig", "ViTSize", "ViTTokenizer",
           "check_tokens", "prepare_images"]
