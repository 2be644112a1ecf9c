"""Which implementation `nearest_code(impl="auto")` runs: the fastest measured per backend and
shape class. Regenerate on the hardware with
`python tools/bench/nearest_code.py --winners jaxtok/kernels/nearest_code/measured.py`.

GPU: the only measurement so far (an H100, JAX 0.11.2, 2026-11, NOTES.md) had a first
Triton kernel (pallas_gpu) 4-6x faster than XLA at N=65536, K=16384, D=16-32. mosaic_gpu has
not run on a GPU yet, so auto stays on pallas_gpu until tools/bench/run_all_gpu.sh has
timed both. TPU: pallas_tpu, the only kernel there. Any other backend runs "xla".
"""

# backend -> shape class (`shape_class`) -> implementation
WINNERS = {
    "gpu": {"small_d": "pallas_gpu", "large_d": "pallas_gpu"},
    "tpu": {"small_d": "pallas_tpu", "large_d": "pallas_tpu"},
}
SMALL_D = 64  # VQ codebooks (D <= 64): the argmin dominates; above, the dot does


def shape_class(d: int) -> str:
  return "small_d" if d <= SMALL_D else "large_d"
