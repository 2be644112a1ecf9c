"""Multi-scale residual VQ: Tian et al. 2024, "Visual Autoregressive Modeling" (VAR).

One latent z [B, H, W, D] (H = W = patch_nums[-1]) becomes K token maps of growing size
pn_k × pn_k sharing one codebook. Scale k quantizes the residual r_k area-downsampled to
pn_k × pn_k; its codes are bicubic-upsampled back to H × W, refined by a 3×3 conv Phi
(h ← (1 − ratio)·h + ratio·conv(h)) and added to f̂ and subtracted from r:

  r_0 = z;  ids_k = argmin_c ||area(r_k, pn_k) − e_c||;  h_k = Phi_k(bicubic(e[ids_k], H));
  f̂ = Σ_k h_k;  r_{k+1} = r_k − h_k.

The last scale (pn = H) needs no resampling. Phi convs are shared over scale groups: with
num_phi convs, scale k uses the one whose tick (evenly spread over [0, 1]) lies nearest k/(K−1).
Resampling is PyTorch's `F.interpolate` (mode "area" = adaptive average pooling; "bicubic"
with align_corners=False, a = −0.75, clamped borders) written as two small [out, in] matrices
per axis, so results match VAR's code.

Indices are the token maps flattened and concatenated, scale after scale: [B, L] with
L = Σ pn_k² (680 for VAR's 1, 2, 3, 4, 5, 6, 8, 10, 13, 16). `split_scales` gives the per-scale
maps [B, pn, pn]; `indices_to_codes` decodes any prefix of whole scales to f̂ of those scales.

Shape letters: B batch, H W latent grid, D channels, K codebook size, L tokens of all scales,
S scales, P Q a scale's side and an interpolation target side.
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.kernels.nearest_code import nearest_code
from jaxtok.quantizers.base import (
    QuantizerOutput, check_indices, check_last_dim, code_usage_metrics, straight_through)

VAR_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
_BICUBIC_A = -0.75  # PyTorch's cubic convolution constant
sg = jax.lax.stop_gradient


# ---------------------------------------------------------------- pure maths (no Flax)

def area_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[out, in] f32 matrix of PyTorch's adaptive average pooling along one axis."""
  m = np.zeros((size_out, size_in), np.float64)
  for i in range(size_out):
    start, end = (i * size_in) // size_out, -(-((i + 1) * size_in) // size_out)
    m[i, start:end] = 1.0 / (end - start)
  return m.astype(np.float32)


def _cubic_weights(t: float) -> list[float]:
  a = _BICUBIC_A
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # noqa: E731  |x| <= 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # noqa: E731  1 < |x| < 2
  return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[out, in] f32 matrix of PyTorch's bicubic resize (align_corners=False) along one axis.

  Output i reads source position (i + 0.5)·in/out − 0.5 from the 4 nearest inputs, indices
  clamped into [0, in − 1] (border replicated).
  """
  m = np.zeros((size_out, size_in), np.float64)
  scale = size_in / size_out
  for i in range(size_out):
    src = scale * (i + 0.5) - 0.5
    base = math.floor(src)
    for k, w in enumerate(_cubic_weights(src - base)):
      m[i, min(max(base - 1 + k, 0), size_in - 1)] += w
  return m.astype(np.float32)


def resize(x_BHWD: jax.Array, size: int, mode: str) -> jax.Array:
  """x [B, H, W, D] resized to [B, size, size, D] by "area" or "bicubic" (PyTorch's), f32."""
  height, width = x_BHWD.shape[1:3]
  if (height, width) == (size, size):
    return x_BHWD.astype(jnp.float32)
  make = {"area": area_matrix, "bicubic": bicubic_matrix}[mode]
  rows_QH, cols_PW = jnp.asarray(make(height, size)), jnp.asarray(make(width, size))
  return jnp.einsum("qh,bhwd,pw->bqpd", rows_QH, x_BHWD.astype(jnp.float32), cols_PW,
                    precision=jax.lax.Precision.HIGHEST)


def phi_ticks(num_phi: int) -> np.ndarray:
  """Where VAR places num_phi shared Phi convs on [0, 1] (its PhiPartiallyShared)."""
  k = num_phi
  if k == 4:
    return np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k)
  return np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)


def phi_index(scale: int, num_scales: int, num_phi: int) -> int:
  """Which of num_phi Phi convs scale `scale` of num_scales uses (nearest tick)."""
  if num_phi == 1:
    return 0
  at = scale / (num_scales - 1) if num_scales > 1 else 0.0
  return int(np.argmin(np.abs(phi_ticks(num_phi) - at)))


def scale_bounds(patch_nums: Sequence[int]) -> list[tuple[int, int]]:
  """(begin, end) of each scale's tokens in the flat [B, L] view."""
  ends = np.cumsum([p * p for p in patch_nums]).tolist()
  return [(e - p * p, e) for p, e in zip(patch_nums, ends)]


def split_scales(ids_BL: jax.Array, patch_nums: Sequence[int]) -> list[jax.Array]:
  """Flat ids [B, l] (l a whole number of scales) -> per-scale maps [B, pn, pn]."""
  maps = []
  for (begin, end), pn in zip(scale_bounds(patch_nums), patch_nums):
    if end > ids_BL.shape[1]:
      break
    maps.append(ids_BL[:, begin:end].reshape(ids_BL.shape[0], pn, pn))
  return maps


def flatten_scales(maps: Sequence[jax.Array]) -> jax.Array:
  """Per-scale maps [B, pn, pn] -> flat ids [B, Σ pn²]."""
  return jnp.concatenate([m.reshape(m.shape[0], -1) for m in maps], axis=1)


# ---------------------------------------------------------------- module

class Phi(nn.Module):
  """VAR's residual refinement: (1 − ratio)·h + ratio·conv3x3(h), channels unchanged."""

  dim: int
  ratio: float

  @nn.compact
  def __call__(self, h_BHWD: jax.Array) -> jax.Array:
    conv = nn.Conv(self.dim, (3, 3), padding="SAME", param_dtype=jnp.float32,
                   precision=jax.lax.Precision.HIGHEST, name="conv")
    return h_BHWD * (1.0 - self.ratio) + conv(h_BHWD) * self.ratio


class MultiScaleVQ(nn.Module):
  """VAR's multi-scale residual quantizer (see the module docstring).

  Parameters: "codebook" [K, D] and "phi_{i}" convs (none when resi_ratio is 0).
  loss = mean over scales s of (beta·||sg(f̂_s) − z||² + ||f̂_s − sg(z)||²) (means over
  entries), as VAR's VectorQuantizer2: the second term trains codebook and Phi, the first
  the encoder. `quantized` is f̂ with a straight-through gradient to z. metrics: usage and
  perplexity over all scales' ids, usage_s{k} per scale.
  """

  codebook_size: int = 4096  # K
  dim: int = 32  # D (VAR's Cvae)
  patch_nums: tuple[int, ...] = VAR_PATCH_NUMS  # side of each scale's token map, small to large
  resi_ratio: float = 0.5  # Phi's conv share; 0 disables Phi
  num_phi: int = 4  # shared Phi convs (VAR's share_quant_resi); 0: one per scale
  beta: float = 0.25  # commitment weight

  def __post_init__(self):
    pns = tuple(int(p) for p in self.patch_nums)
    if not pns or any(p < 1 for p in pns) or list(pns) != sorted(set(pns)):
      raise ValueError(f"patch_nums must be strictly increasing positive sides; got "
                       f"{self.patch_nums}")
    object.__setattr__(self, "patch_nums", pns)
    if self.num_phi < 0:
      raise ValueError(f"num_phi must be >= 0 (0: one Phi per scale); got {self.num_phi}")
    super().__post_init__()

  @property
  def input_dim(self) -> int:
    return self.dim

  @property
  def code_dim(self) -> int:
    return self.dim

  @property
  def num_tokens(self) -> int:
    """L, the tokens of all scales."""
    return sum(p * p for p in self.patch_nums)

  @property
  def phi_count(self) -> int:
    return self.num_phi or len(self.patch_nums)

  def setup(self):
    bound = 1.0 / self.codebook_size  # VAR's eini = -1: uniform in ±1/K
    self.codebook = self.param(
        "codebook", lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound),
        (self.codebook_size, self.dim))
    if self.resi_ratio:
      self.phis = [Phi(self.dim, abs(self.resi_ratio), name=f"phi_{i}")
                   for i in range(self.phi_count)]

  def _refine(self, scale: int, h_BHWD: jax.Array) -> jax.Array:
    if not self.resi_ratio:
      return h_BHWD
    return self.phis[phi_index(scale, len(self.patch_nums), self.phi_count)](h_BHWD)

  def _upsample(self, scale: int, codes_BPPD: jax.Array) -> jax.Array:
    """A scale's codes -> its contribution h [B, H, W, D] to f̂."""
    size = self.patch_nums[-1]
    return self._refine(scale, resize(codes_BPPD, size, "bicubic"))

  def _check_grid(self, z: jax.Array) -> None:
    check_last_dim(z, self.dim)
    side = self.patch_nums[-1]
    if z.ndim != 4 or z.shape[1:3] != (side, side):
      raise ValueError(f"z must be [B, {side}, {side}, {self.dim}] (the last patch_num is the "
                       f"latent side); got z.shape={tuple(z.shape)}")

  def _scales(self, z_BHWD: jax.Array):
    """The residual loop: per-scale ids [B, pn, pn] and f̂ after each scale (f32)."""
    codebook = self.codebook
    rest = sg(z_BHWD.astype(jnp.float32))
    f_hat, ids, f_hats = jnp.zeros_like(rest), [], []
    for k, pn in enumerate(self.patch_nums):
      r_BPPD = resize(rest, pn, "area")
      idx, _ = nearest_code(r_BPPD, sg(codebook), metric="l2")
      h = self._upsample(k, jnp.take(codebook, idx, axis=0))
      f_hat = f_hat + h
      rest = rest - sg(h)
      ids.append(idx.astype(jnp.int32))
      f_hats.append(f_hat)
    return ids, f_hats

  def __call__(self, z: jax.Array, *, train: bool = False) -> QuantizerOutput:
    """z [B, H, W, D] -> f̂ (straight-through), flat ids [B, L], loss and metrics."""
    del train  # no state, no randomness: training and inference quantize alike
    self._check_grid(z)
    ids, f_hats = self._scales(z)
    z32 = z.astype(jnp.float32)
    loss = sum(self.beta * jnp.mean(jnp.square(sg(f) - z32)) + jnp.mean(jnp.square(f - sg(z32)))
               for f in f_hats) / len(f_hats)
    flat = flatten_scales(ids)
    metrics = code_usage_metrics(flat, self.codebook_size)
    metrics.update({f"usage_s{k}": code_usage_metrics(i, self.codebook_size)["usage"]
                    for k, i in enumerate(ids)})
    return QuantizerOutput(straight_through(z32, f_hats[-1]).astype(z.dtype), flat, loss,
                           metrics)

  def encode(self, z: jax.Array) -> jax.Array:
    """Flat token ids [B, L] int32 of z [B, H, W, D], scale after scale."""
    self._check_grid(z)
    return flatten_scales(self._scales(z)[0])

  def encode_scales(self, z: jax.Array) -> list[jax.Array]:
    """Per-scale token maps [B, pn, pn] int32 of z [B, H, W, D], smallest first."""
    self._check_grid(z)
    return self._scales(z)[0]

  def _check_prefix(self, ids_BL: jax.Array) -> int:
    ends = [e for _, e in scale_bounds(self.patch_nums)]
    if ids_BL.ndim != 2 or ids_BL.shape[1] not in ends:
      raise ValueError(f"indices must be flat ids [B, l] of whole scales, l in {ends}; got "
                       f"shape {tuple(ids_BL.shape)}")
    return ends.index(ids_BL.shape[1]) + 1

  def indices_to_codes(self, indices) -> jax.Array:
    """f̂ [B, H, W, D] f32 of flat ids [B, l] of the first scales (any prefix of whole scales);
    all L ids give `quantized` of the z they came from, exactly."""
    indices = jnp.asarray(indices)
    check_indices(indices, self.codebook_size)
    num_scales = self._check_prefix(indices)
    f_hat = None
    for k, ids in enumerate(split_scales(indices, self.patch_nums[:num_scales])):
      h = self._upsample(k, jnp.take(self.codebook, ids, axis=0))
      f_hat = h if f_hat is None else f_hat + h
    return f_hat

  def next_scale_inputs(self, indices) -> jax.Array:
    """VAR's teacher-forcing inputs [B, L − pn_0², D] of flat ids [B, L]: for each scale k ≥ 1,
    f̂ of scales < k area-downsampled to pn_k × pn_k, flattened (VAR's idxBl_to_var_input)."""
    indices = jnp.asarray(indices)
    check_indices(indices, self.codebook_size)
    maps = split_scales(indices, self.patch_nums)
    f_hat, inputs = None, []
    for k, ids in enumerate(maps[:-1]):
      h = self._upsample(k, jnp.take(self.codebook, ids, axis=0))
      f_hat = h if f_hat is None else f_hat + h
      nxt = resize(f_hat, self.patch_nums[k + 1], "area")
      inputs.append(nxt.reshape(nxt.shape[0], -1, self.dim))
    return jnp.concatenate(inputs, axis=1)

  def add_scale(self, scale: int, f_hat: jax.Array, ids_BPP: jax.Array):
    """One sampling step: f̂ [B, H, W, D] plus scale `scale`'s ids [B, pn, pn] -> (new f̂, the
    next scale's input [B, pn_next², D], or None after the last scale)."""
    f_hat = f_hat + self._upsample(scale, jnp.take(self.codebook, ids_BPP, axis=0))
    if scale == len(self.patch_nums) - 1:
      return f_hat, None
    nxt = resize(f_hat, self.patch_nums[scale + 1], "area")
    return f_hat, nxt.reshape(nxt.shape[0], -1, self.dim)
