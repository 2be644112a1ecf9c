"""Token generators: autoregressive GPT (ar.py, LlamaGen layout), masked MaskGIT
(maskgit.py), and the sampling maths they share (sampling.py).

Both models expose `logits(tokens, labels)` for training and `sample(params, rng, labels,
...)`, a single jitted loop returning int32 ids shaped [B, *token_shape].
"""

from jaxtok.models.generators.ar import GPT
from jaxtok.models.generators.maskgit import MaskGIT
from jaxtok.models.generators.sampling import SamplingConfig

__all__ = ["GPT", "MaskGIT", "SamplingConfig"]
