"""How the Pallas kernels cut the problem: block sizes, their per-shape choice, the padding they
imply, and the merge of per-chunk partial results.

Shape letters: N rows of x, K codes, D features; S codebook chunks (k_splits) scored by separate
programs. Padded sizes carry a `_pad` suffix.
"""

import dataclasses

import jax
import jax.numpy as jnp

BACKENDS = ("gpu", "tpu")
_GPU_MIN_BLOCK = 16  # Triton's tl.dot needs every matrix dimension >= 16
_GPU_MIN_D = 16
_TPU_LANES = 128  # last dimension of a TPU vector register, and of any lane-dense block
_TPU_SUBLANES = {4: 8, 2: 16}  # rows of a TPU vector register, by bytes per element
# A GPU launch wants several programs per SM (H100: 132 SMs): below this many row blocks the
# codebook is split across programs, each chunk keeping at least _MIN_TILES_PER_SPLIT tiles.
_GPU_TARGET_PROGRAMS = 512
_MIN_TILES_PER_SPLIT = 8


def _is_pow2(v: int) -> bool:
  return v > 0 and v & (v - 1) == 0


def next_pow2(v: int) -> int:
  return 1 << max(int(v) - 1, 0).bit_length()


def round_up(v: int, multiple: int) -> int:
  return -(-v // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes of one nearest-code kernel launch; validates itself on construction.

  Every size is a power of two. `check(backend, dtype)` adds what a backend's matrix unit needs.
  """

  block_n: int  # rows of x per program (GPU) or per grid step (TPU)
  block_k: int  # codes scored per inner step: one fori_loop tile (GPU), one grid step (TPU)
  k_splits: int = 1  # codebook chunks scored by separate programs, merged in chunk order after
  block_d: int | None = None  # GPU: feature chunk of each dot (None: the whole padded D)
  num_warps: int | None = None  # GPU (Triton) only; None: Triton's default
  num_stages: int | None = None  # GPU (Triton) only: software-pipelining depth of the tile loop

  def __post_init__(self):
    for name in ("block_n", "block_k", "k_splits", "block_d", "num_warps", "num_stages"):
      value = getattr(self, name)
      if value is None and name in ("block_d", "num_warps", "num_stages"):
        continue
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"BlockSizes.{name} must be a positive int; got {value!r}")
      if name != "num_stages" and not _is_pow2(value):
        raise ValueError(f"BlockSizes.{name} must be a power of two; got {value}")

  def check(self, backend: str, dtype) -> "BlockSizes":
    """Raises a ValueError naming the field when `backend`'s hardware cannot use these sizes."""
    if backend == "gpu":
      for name in ("block_n", "block_k", "block_d"):
        value = getattr(self, name)
        if value is not None and value < _GPU_MIN_BLOCK:
          raise ValueError(f"BlockSizes.{name} must be >= {_GPU_MIN_BLOCK} on GPU (Triton dot); "
                           f"got {value}")
    elif backend == "tpu":
      sublanes = _TPU_SUBLANES.get(jnp.dtype(dtype).itemsize, 8)
      if self.block_n % sublanes:
        raise ValueError(f"BlockSizes.block_n must be a multiple of {sublanes} on TPU for "
                         f"{jnp.dtype(dtype).name}; got {self.block_n}")
      if self.block_k % _TPU_LANES:
        raise ValueError(f"BlockSizes.block_k must be a multiple of {_TPU_LANES} on TPU (lanes); "
                         f"got {self.block_k}")
      for name in ("block_d", "num_warps", "num_stages"):
        if getattr(self, name) is not None:
          raise ValueError(f"BlockSizes.{name} is GPU-only and must be None on TPU; "
                           f"got {getattr(self, name)}")
    else:
      raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    return self


def padded_dim(d: int, backend: str) -> int:
  """Feature width the kernels run at: zero columns change no dot product or norm.

  GPU: a power of two >= 16 (Triton tensors are powers of two, tl.dot needs >= 16).
  TPU: a multiple of 128, the lane width.
  """
  return max(_GPU_MIN_D, next_pow2(d)) if backend == "gpu" else round_up(d, _TPU_LANES)


def choose(n: int, k: int, d: int, dtype, backend: str) -> BlockSizes:
  """Block sizes for an [n, d] x against a [k, d] codebook on `backend`.

  Two regimes, split at a padded D of 64 (GPU) / 128 (TPU):
    small D (VQ codebooks, D = 4..64): the dot is cheap and the per-score elementwise work and
      the running argmin dominate, so a tall row block (GPU 128 rows x 64 codes, TPU 512 x 512)
      keeps each program busy on scores while the whole D is one dot;
    large D (D = 128..1024): the dot dominates and the kernel behaves like a matmul, so square
      64 x 64 tiles with D consumed in chunks of 32 (f32) / 128 (bf16) bound the registers and
      shared memory of a Triton program (TPU: 256 x 256 tiles, whole D in VMEM). Compiled for
      sm_90 these use 150-230 registers per thread and no spills (f32 chunks of 64 spill).
  Blocks shrink to the problem for small n or k (less padding). When the row blocks alone
  cannot fill the machine (GPU: fewer than 512 programs; TPU: one row block for its one or two
  cores), the codebook is split into k_splits chunks of at least 8 tiles each, scored by
  separate programs and merged after: small-N / huge-K shapes (N=4096, K=2^18) need this.
  """
  d_pad = padded_dim(d, backend)
  if backend == "gpu":
    if d_pad <= 64:
      bn, bk, bd, warps, stages = 128, 64, d_pad, 4, 2
    else:
      bn, bk, warps, stages = 64, 64, 4, 3
      bd = min(d_pad, 128 if jnp.dtype(dtype).itemsize == 2 else 32)
    bn = min(bn, max(_GPU_MIN_BLOCK, next_pow2(n)))
    bk = min(bk, max(_GPU_MIN_BLOCK, next_pow2(k)))
    target = _GPU_TARGET_PROGRAMS
    extra = {"block_d": bd, "num_warps": warps, "num_stages": stages}
  else:
    bn, bk = (512, 512) if d_pad <= _TPU_LANES else (256, 256)
    bn = min(bn, max(_TPU_SUBLANES.get(jnp.dtype(dtype).itemsize, 8), next_pow2(n)))
    bk = min(bk, max(_TPU_LANES, next_pow2(k)))
    target = 2
    extra = {}
  row_blocks, tiles = -(-n // bn), -(-k // bk)
  splits = 1
  while (row_blocks * splits < target
         and tiles // (2 * splits) >= _MIN_TILES_PER_SPLIT):
    splits *= 2
  return BlockSizes(block_n=bn, block_k=bk, k_splits=splits, **extra).check(backend, dtype)


@dataclasses.dataclass(frozen=True)
class Plan:
  """Padded sizes one launch runs at."""

  n_pad: int  # rows, a multiple of block_n
  k_pad: int  # codes, k_splits chunks of tiles_per_split tiles of block_k
  d_pad: int
  tiles_per_split: int


def plan(n: int, k: int, d: int, blocks: BlockSizes, backend: str) -> Plan:
  tiles_per_split = -(-k // (blocks.block_k * blocks.k_splits))
  return Plan(n_pad=round_up(n, blocks.block_n),
              k_pad=blocks.k_splits * tiles_per_split * blocks.block_k,
              d_pad=padded_dim(d, backend), tiles_per_split=tiles_per_split)


def pad_operands(x_ND, codebook_KD, bias_K, weight_K, p: Plan):
  """Zero-pads x and the codebook to the plan; padded codes get bias +inf so they never win.

  bias/weight must come from the unpadded codebook (reference.code_terms), in f32.
  """
  (n, d), k = x_ND.shape, codebook_KD.shape[0]
  x = jnp.pad(x_ND, ((0, p.n_pad - n), (0, p.d_pad - d)))
  e = jnp.pad(codebook_KD, ((0, p.k_pad - k), (0, p.d_pad - d)))
  bias = jnp.pad(bias_K, (0, p.k_pad - k), constant_values=jnp.inf)
  weight = jnp.pad(weight_K, (0, p.k_pad - k))
  return x, e, bias, weight


def merge_splits(best_SN: jax.Array, idx_SN: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Merges per-chunk (score, index) partials in chunk order with a strict `<`.

  `argmin` over the chunk axis returns the first chunk holding the minimum, which is exactly a
  left-to-right fold keeping the earlier chunk on a tie: ties go to the lowest code index. A row
  whose every score is +inf keeps chunk 0's partial (index 0), as `jnp.argmin` would.
  """
  if best_SN.shape[0] == 1:
    return best_SN[0], idx_SN[0]
  s = jnp.argmin(best_SN, axis=0)[None, :]
  return (jnp.take_along_axis(best_SN, s, axis=0)[0],
          jnp.take_along_axis(idx_SN, s, axis=0)[0])
