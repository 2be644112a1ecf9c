"""Rotary position embeddings (Su et al. 2021, RoFormer), 1D and 2D, as pure functions.

Shape letters: B batch, T tokens, N heads, H head dim, F = H // 2 rotated pairs.

Pairs are interleaved: channels (2i, 2i+1) rotate together by angle pos * theta^(-2i/H), as
in Meta's Llama and LlamaGen. 2D RoPE follows LlamaGen's `precompute_freqs_cis_2d`: the first
H/2 channels rotate with the row index and the last H/2 with the column index, each half
using the 1D frequencies of a head of size H/2. Because a rotation by a then b is a rotation
by a + b, q.k after RoPE depends only on the position difference (rows and columns apart).
"""

import jax
import jax.numpy as jnp


def rope_angles(positions: jax.Array, dim: int, *, theta: float = 10_000.0) -> jax.Array:
  """Angles [..., dim // 2] (f32) for integer or float positions [...] and an even `dim`."""
  if dim % 2:
    raise ValueError(f"RoPE needs an even number of channels; got {dim}")
  inv_freq = theta ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)  # [dim // 2]
  positions = jnp.asarray(positions, jnp.float32)
  return positions[..., None] * jnp.expand_dims(inv_freq, tuple(range(positions.ndim)))


def rotate_pairs(x_BTNH: jax.Array, angles_BTF: jax.Array) -> jax.Array:
  """Rotates channel pairs (2i, 2i+1) of x by angles[..., i]; same for every head.

  angles may also be [T, F] (shared by the batch). Computed in f32, returned in x's dtype.
  """
  *lead, heads, head_dim = x_BTNH.shape
  if angles_BTF.shape[-1] * 2 != head_dim:
    raise ValueError(
        f"angles must have last dimension head_dim // 2 = {head_dim // 2}; "
        f"got angles.shape={angles_BTF.shape} for x.shape={x_BTNH.shape}")
  pairs = x_BTNH.astype(jnp.float32).reshape(*lead, heads, head_dim // 2, 2)
  x0, x1 = pairs[..., 0], pairs[..., 1]
  # [B, T, F] or [T, F] -> [B or 1, T, 1, F]: the same angles for every head (and batch row).
  angles = jnp.expand_dims(angles_BTF, -2)
  angles = jnp.expand_dims(angles, tuple(range(x0.ndim - angles.ndim)))
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  out = jnp.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
  return out.reshape(x_BTNH.shape).astype(x_BTNH.dtype)


def apply_rope(x_BTNH: jax.Array, positions_BT: jax.Array, *,
               theta: float = 10_000.0) -> jax.Array:
  """1D RoPE: positions [B, T] or [T] (integers, or floats for interpolated positions)."""
  return rotate_pairs(x_BTNH, rope_angles(positions_BT, x_BTNH.shape[-1], theta=theta))


def apply_rope_2d(x_BTNH: jax.Array, positions_BT2: jax.Array, *,
                  theta: float = 10_000.0) -> jax.Array:
  """2D RoPE: positions [B, T, 2] or [T, 2] holding (row, column); head dim % 4 == 0."""
  head_dim = x_BTNH.shape[-1]
  if head_dim % 4:
    raise ValueError(f"2D RoPE needs a head dim divisible by 4; got {head_dim}")
  if positions_BT2.shape[-1] != 2:
    raise ValueError(
        f"2D RoPE positions must end in (row, column); got shape {positions_BT2.shape}")
  rows = rope_angles(positions_BT2[..., 0], head_dim // 2, theta=theta)  # [..., H / 4]
  cols = rope_angles(positions_BT2[..., 1], head_dim // 2, theta=theta)
  return rotate_pairs(x_BTNH, jnp.concatenate([rows, cols], axis=-1))


def grid_positions(height: int, width: int) -> jax.Array:
  """(row, column) int32 positions [height * width, 2] of a row-major token grid."""
  rows, cols = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
  return jnp.stack([rows.reshape(-1), cols.reshape(-1)], axis=-1).astype(jnp.int32)
