"""Building blocks shared by the models: conv blocks, attention, RoPE, transformer blocks,
patchify and embeddings."""

from jaxtok.layers.attention import Attention, cudnn_supports, dot_product_attention
from jaxtok.layers.conv import AttnBlock, Downsample, GroupNorm, ResnetBlock, Upsample, conv2d, swish
from jaxtok.layers.embed import dense, embedding_param
from jaxtok.layers.patchify import patchify, unpatchify
from jaxtok.layers.rope import apply_rope, apply_rope_2d, grid_positions, rope_angles
from jaxtok.layers.transformer import Mlp, Transformer, TransformerBlock, make_norm

__all__ = ["Attention", "AttnBlock", "Downsample", "GroupNorm", "Mlp", "ResnetBlock",
           "Transformer", "TransformerBlock", "Upsample", "apply_rope", "apply_rope_2d",
           "conv2d", "cudnn_supports", "dense", "dot_product_attention", "embedding_param",
           "grid_positions", "make_norm", "patchify", "rope_angles", "swish", "unpatchify"]
