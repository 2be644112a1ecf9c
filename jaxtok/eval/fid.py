"""Fréchet Inception Distance (Heusel et al. 2017) and the statistics files it compares.

Statistics are float64 NumPy: `mu` [D] and `sigma` [D, D] (the unbiased covariance, N - 1, as
TTUR, pytorch-fid, clean-fid and the ADM evaluator compute it). Files are `.npz` holding `mu`
and `sigma`, the format of pytorch-fid's `--save-stats` and of the ADM evaluator's reference
batches (`VIRTUAL_imagenet256_labeled.npz`, whose `arr_0` images and `mu_s`/`sigma_s` spatial
statistics are read too when present).

The matrix square root: FID needs tr sqrt(S1 S2). S1 S2 is not symmetric, and
`scipy.linalg.sqrtm` of it (TTUR, pytorch-fid) is inaccurate when the covariances are rank
deficient (fewer images than 2048 features), returning complex parts or NaNs that those tools
paper over by adding eps to the diagonals. Here, in float64 and without eps:
  - from statistics: S1 = U W U^T (`eigh`); with A = U_r W_r^(1/2) over the r directions
    where S1 is not zero (to rounding), S1 S2 = A A^T S2 has the nonzero eigenvalues of the
    symmetric PSD r x r matrix A^T S2 A, so the trace is the sum of their square roots. The
    null directions of a singular S1 are left out rather than each adding the square root of
    a rounding error (~1e-8).
  - from features (`fid_from_features`, fewer images than dimensions): with X1, X2 the
    centred features scaled by 1/sqrt(N - 1), S1 S2 = X1^T (X1 X2^T) X2 has the nonzero
    eigenvalues of (X1 X2^T)(X1 X2^T)^T, so the trace is the sum of the singular values of
    the small N1 x N2 matrix X1 X2^T: exact, and cheap for small sets. Against a statistics
    file (`fid_against_stats`) the same holds with the N x N matrix X1 S2 X1^T.
"""

import json
import os

import numpy as np

STATS_KEYS = ("mu", "sigma")


def feature_stats(features_ND) -> tuple[np.ndarray, np.ndarray]:
  """(mu [D], sigma [D, D]) of features [N, D] in float64; N must be >= 2."""
  x = np.asarray(features_ND, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f"features must be [N, D] with N >= 2 (a covariance needs two); got "
                     f"shape {x.shape}")
  return x.mean(axis=0), np.cov(x, rowvar=False)


def trace_sqrt_product(sigma1, sigma2) -> float:
  """tr sqrt(sigma1 sigma2) for PSD matrices, in float64, exact when they are singular."""
  s1 = np.asarray(sigma1, np.float64)
  s2 = np.asarray(sigma2, np.float64)
  w, u = np.linalg.eigh((s1 + s1.T) / 2)
  keep = w > w.max(initial=0.0) * len(w) * np.finfo(np.float64).eps
  a = u[:, keep] * np.sqrt(w[keep])
  m = a.T @ ((s2 + s2.T) / 2) @ a
  eig = np.linalg.eigvalsh((m + m.T) / 2)
  return float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)): the Fréchet distance of two
  Gaussians, in float64. Symmetric; 0 for equal statistics (up to rounding, clipped at 0)."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  d = mu1.shape[-1]
  for name, mu, sigma in (("1", mu1, sigma1), ("2", mu2, sigma2)):
    if mu.shape != (d,) or sigma.shape != (d, d):
      raise ValueError(f"statistics {name} must be mu [D] and sigma [D, D] with D = {d}; got "
                       f"{mu.shape} and {sigma.shape}")
  diff = mu1 - mu2
  value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1,
                                                                                       sigma2)
  return float(max(value, 0.0))


def fid_from_features(features1, features2) -> float:
  """FID of two feature sets [N1, D], [N2, D]; equal to `frechet_distance` of their
  `feature_stats`, computed from the features when a set has fewer images than dimensions."""
  x1 = np.asarray(features1, np.float64)
  x2 = np.asarray(features2, np.float64)
  mu1, sigma1 = feature_stats(x1)
  mu2, sigma2 = feature_stats(x2)
  if min(len(x1), len(x2)) >= x1.shape[1]:
    return frechet_distance(mu1, sigma1, mu2, sigma2)
  a1 = (x1 - mu1) / np.sqrt(len(x1) - 1)
  a2 = (x2 - mu2) / np.sqrt(len(x2) - 1)
  diff = mu1 - mu2
  cross = np.sum(np.linalg.svd(a1 @ a2.T, compute_uv=False))
  return float(max(diff @ diff + np.sum(a1 * a1) + np.sum(a2 * a2) - 2 * cross, 0.0))


def fid_against_stats(features, mu, sigma) -> float:
  """FID of a feature set [N, D] against statistics (mu [D], sigma [D, D]). For N <= D the
  features' covariance is X^T X (X: centred, scaled by 1/sqrt(N - 1)) and S X^T X has the
  nonzero eigenvalues of the N x N matrix X S X^T: no D x D decomposition is needed."""
  x = np.asarray(features, np.float64)
  mu_x, sigma_x = feature_stats(x)
  if len(x) > x.shape[1]:
    return frechet_distance(mu_x, sigma_x, mu, sigma)
  mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
  if mu.shape != mu_x.shape or sigma.shape != sigma_x.shape:
    raise ValueError(f"statistics must be mu [D] and sigma [D, D] with D = {x.shape[1]}; got "
                     f"{mu.shape} and {sigma.shape}")
  a = (x - mu_x) / np.sqrt(len(x) - 1)
  m = a @ ((sigma + sigma.T) / 2) @ a.T
  cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)))
  diff = mu_x - mu
  return float(max(diff @ diff + np.sum(a * a) + np.trace(sigma) - 2 * cross, 0.0))


def save_stats(path: str, mu, sigma, *, protocol: dict | None = None, **extra) -> str:
  """Writes mu, sigma (and `extra` arrays) to `path` (.npz), plus the protocol (resize, image
  count, source) as a JSON string under "protocol". Returns the path written."""
  if not path.endswith(".npz"):
    raise ValueError(f"stats path must end in .npz; got {path!r}")
  folder = os.path.dirname(path)
  if folder:
    os.makedirs(folder, exist_ok=True)
  arrays = {"mu": np.asarray(mu, np.float64), "sigma": np.asarray(sigma, np.float64), **extra}
  if protocol is not None:
    arrays["protocol"] = np.asarray(json.dumps(protocol, sort_keys=True))
  np.savez(path, **arrays)
  return path


def load_stats(path: str) -> dict:
  """{"mu", "sigma"} (float64) of a `.npz` stats file: jaxtok's, pytorch-fid's or an ADM
  reference batch. Also "protocol" (a dict) when jaxtok wrote it, and "images" (uint8 NHWC,
  the ADM batch's `arr_0`) and "mu_s"/"sigma_s" when present."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"stats file {path!r} does not exist")
  try:
    data = np.load(path, allow_pickle=False)
  except ValueError as e:
    raise ValueError(f"stats file {path!r} is not a NumPy .npz/.npy file ({e})") from None
  if not hasattr(data, "files"):
    raise ValueError(f"stats file {path!r} holds one array; expected an .npz with 'mu' and "
                     f"'sigma'")
  with data:
    missing = [k for k in STATS_KEYS if k not in data.files]
    if missing:
      raise ValueError(f"stats file {path!r} lacks {missing}; it holds {sorted(data.files)} "
                       f"(expected 'mu' [2048] and 'sigma' [2048, 2048])")
    out = {k: np.asarray(data[k], np.float64) for k in STATS_KEYS}
    for key in ("mu_s", "sigma_s"):
      if key in data.files:
        out[key] = np.asarray(data[key], np.float64)
    if "arr_0" in data.files and data["arr_0"].ndim == 4:
      out["images"] = data["arr_0"]
    if "protocol" in data.files:
      out["protocol"] = json.loads(str(data["protocol"]))
  if out["mu"].ndim != 1 or out["sigma"].shape != 2 * out["mu"].shape:
    raise ValueError(f"stats file {path!r}: mu must be [D] and sigma [D, D]; got "
                     f"{out['mu'].shape} and {out['sigma'].shape}")
  return out
