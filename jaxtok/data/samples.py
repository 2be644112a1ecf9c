"""A bundled sample set: random crops of the colour photos that ship inside scikit-image.

Nothing is downloaded: `skimage.data` carries these files in its wheel. One photo is held
out so that demo and test figures are measured on pixels the model never trained on.
"""

import functools

import numpy as np
from PIL import Image

TRAIN_PHOTOS = ("astronaut", "rocket", "coffee", "hubble_deep_field", "immunohistochemistry",
                "retina", "stereo_motorcycle", "colorwheel")
HELDOUT_PHOTOS = ("chelsea",)


@functools.cache
def load_photo(name: str, short_side: int = 256) -> np.ndarray:
  """One photo as uint8 [H, W, 3], resized so its shorter side is `short_side` pixels."""
  import skimage.data  # imported lazily: it is slow to import and only the demo/tests need it

  known = TRAIN_PHOTOS + HELDOUT_PHOTOS
  if name not in known:
    raise ValueError(f"photo must be one of {known}; got {name!r}")
  image = getattr(skimage.data, name)()
  if isinstance(image, tuple):  # stereo_motorcycle returns (left, right, disparity)
    image = image[0]
  pil = Image.fromarray(image).convert("RGB")
  scale = short_side / min(pil.size)
  pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), Image.BICUBIC)
  return np.asarray(pil, dtype=np.uint8)


def random_crops(count: int, size: int, *, seed: int, photos=TRAIN_PHOTOS,
                 short_side: int = 256) -> np.ndarray:
  """`count` random size×size crops (uint8 [count, size, size, 3]), photos taken in turn."""
  if size > short_side:
    raise ValueError(f"size must be <= short_side={short_side}; got size={size}")
  rng = np.random.default_rng(seed)
  images = [load_photo(p, short_side) for p in photos]
  crops = np.empty((count, size, size, 3), np.uint8)
  for i in range(count):
    image = images[i % len(images)]
    top = rng.integers(0, image.shape[0] - size + 1)
    left = rng.integers(0, image.shape[1] - size + 1)
    crop = image[top:top + size, left:left + size]
    crops[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
  return crops


class SampleCrops:
  """A Grain random-access source of `random_crops`: the demo and test dataset.

  split="train" crops the training photos, split="eval" the held-out one. Records are
  {"key": "samples/<split>/<i>", "image": uint8 [size, size, 3]} (already decoded; see
  `jaxtok.data.sources` for the record format). The crops are made once, here, so worker
  processes receive them instead of importing scikit-image.
  """

  def __init__(self, count: int = 256, size: int = 64, *, seed: int = 0, split: str = "train",
               short_side: int = 256):
    splits = {"train": TRAIN_PHOTOS, "eval": HELDOUT_PHOTOS}
    if split not in splits:
      raise ValueError(f"split must be one of {tuple(splits)}; got {split!r}")
    if count < 1:
      raise ValueError(f"count must be >= 1; got {count}")
    self.split = split
    self.crops = random_crops(count, size, seed=seed, photos=splits[split],
                              short_side=short_side)

  def __len__(self) -> int:
    return len(self.crops)

  def __getitem__(self, index: int) -> dict:
    return {"key": f"samples/{self.split}/{index}", "image": self.crops[index]}

  def __repr__(self) -> str:
    return f"SampleCrops(split={self.split!r}, {len(self)} crops of {self.crops.shape[1]}px)"
