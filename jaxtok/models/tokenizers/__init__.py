"""Image tokenizers sharing one API (tokenizer.py): CNN VQGAN, ViT-VQGAN and TiTok."""

from jaxtok.models.tokenizers.titok import TITOK_SIZES, TiTok
from jaxtok.models.tokenizers.tokenizer import (
    Tokenizer, TokenizerOutput, check_tokens, prepare_images)
from jaxtok.models.tokenizers.vit import VIT_SIZES, ViTSize, ViTTokenizer
from jaxtok.models.tokenizers.vqgan import VQGAN, VQGAN_PRESETS, VQGANConfig

__all__ = ["TITOK_SIZES", "VIT_SIZES", "VQGAN", "VQGAN_PRESETS", "TiTok", "Tokenizer",
           "TokenizerOutput", "VQGANConfig", "ViTSize", "ViTTokenizer", "check_tokens",
           "prepare_images"]
