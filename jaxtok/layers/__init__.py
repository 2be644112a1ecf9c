"""Building blocks shared by the models: conv blocks, attention, RoPE, transformer blocks."""

from jaxtok.layers.attention import Attention, cudnn_supports, dot_product_attention
from jaxtok.layers.conv import AttnBlock, Downsample, GroupNorm, ResnetBlock, Upsample, conv2d, swish
from jaxtok.layers.rope import apply_rope, apply_rope_2d, grid_positions, rope_angles
from jaxtok.layers.transformer import Mlp, Transformer, TransformerBlock, make_norm

__all__ = ["Attention", "AttnBlock", "Downsample", "GroupNorm", "Mlp", "ResnetBlock",
           "Transformer", "TransformerBlock", "Upsample", "apply_rope", "apply_rope_2d",
           "conv2d", "cudnn_supports", "dot_product_attention", "grid_positions", "make_norm",
           "rope_angles", "swish"]
