"""`jaxtok demo` (`make demo`): train a small tokenizer, then compare quantizers, then train a
tiny generator on the tokenizer's tokens, on the CPU.

Part 1 trains the CNN VQGAN of configs/demo/tokenizer.py on random 32×32 crops of
scikit-image's colour photos with the real trainer (progress bar, checkpoints, metrics),
evaluates it on a held-out photo, exports it, and copies the newest reconstruction grid and
the held-out metrics to the work directory (`recon.png`, `metrics.json`).

Part 2 trains four small patch tokenizers, one per quantizer family at 10 bits per token
(4×4 RGB patches through an MLP encoder, the quantizer, an MLP decoder), and tokenizes a held-out
photo with each: PSNR, code usage and perplexity go to `quantizers/metrics.json` and the
reconstructions side by side to `quantizers/recon.png`.

Part 3 tokenizes bundled crops with part 1's tokenizer (`generator/tokens/`), trains the tiny
GPT of configs/demo/generator.py on them (`generator/`), and samples a grid of images:
`samples.png` and their token ids `samples.npz`.
"""

import glob
import json
import math
import os
import shutil
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image, ImageDraw
from tqdm import tqdm

from jaxtok.data import samples
from jaxtok.quantizers.fsq import FSQ
from jaxtok.quantizers.lfq import LFQ
from jaxtok.quantizers.residual import ResidualVQ
from jaxtok.quantizers.vq import VectorQuantizer

PATCH = 4  # pixels per patch side: one token covers 4·4·3 = 48 values
CROP = 32  # training crop side
HELDOUT_SIDE = 256  # the held-out photo is tokenized as one 256×256 image (4096 tokens)


def demo_quantizers() -> dict[str, nn.Module]:
  """Four quantizer families at about 10 bits per token."""
  return {
      "vq": VectorQuantizer(codebook_size=1024, dim=16, use_ema=True, data_init="kmeans++",
                            restart_threshold=0.05),
      "fsq": FSQ(levels=(8, 5, 5, 5)),
      "lfq": LFQ(bits=10),
      "rvq": ResidualVQ(VectorQuantizer(codebook_size=32, dim=16, use_ema=True,
                                        data_init="kmeans++", restart_threshold=0.05),
                        num_quantizers=2),
  }


def patchify(images_BHWC: jax.Array, p: int) -> jax.Array:
  b, h, w, c = images_BHWC.shape
  x = images_BHWC.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // p, w // p, p * p * c)


def unpatchify(patches_BhwP: jax.Array, p: int) -> jax.Array:
  b, h, w, _ = patches_BhwP.shape
  x = patches_BhwP.reshape(b, h, w, p, p, -1).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * p, w * p, -1)


class PatchTokenizer(nn.Module):
  """MLP encoder per patch → quantizer → MLP decoder per patch."""

  quantizer: nn.Module
  width: int = 128  # hidden width of both MLPs

  @nn.compact
  def __call__(self, images_BHWC: jax.Array, *, train: bool):
    x = patchify(images_BHWC, PATCH)
    h = nn.gelu(nn.Dense(self.width)(x))
    h = nn.gelu(nn.Dense(self.width)(h))
    out = self.quantizer(nn.Dense(self.quantizer.input_dim)(h), train=train)
    h = nn.gelu(nn.Dense(self.width)(out.quantized))
    h = nn.gelu(nn.Dense(self.width)(h))
    return unpatchify(nn.Dense(x.shape[-1])(h), PATCH), out


def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
  """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
  mse = jnp.mean((a.astype(jnp.float32) - b.astype(jnp.float32)) ** 2)
  return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-12))


def to_unit(images_uint8: np.ndarray) -> jax.Array:
  return jnp.asarray(images_uint8, jnp.float32) / 127.5 - 1.0


def to_uint8(images: jax.Array) -> np.ndarray:
  return np.asarray(jnp.round((jnp.clip(images, -1, 1) + 1.0) * 127.5), np.uint8)


def train_tokenizer(quantizer: nn.Module, crops: np.ndarray, heldout: np.ndarray, *, steps: int,
                    batch_size: int, seed: int, label: str):
  """Trains one PatchTokenizer; returns (metrics dict, held-out reconstruction uint8)."""
  model = PatchTokenizer(quantizer)
  init_key, loop_key = jax.random.split(jax.random.key(seed))
  variables = model.init({"params": init_key, "quantizer": init_key},
                         jnp.zeros((1, CROP, CROP, 3)), train=False)
  params = variables.pop("params")
  state = variables  # the "quantizer_state" collection, if the quantizer has one
  schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, max(steps // 20, 1), steps, 3e-4)
  tx = optax.adam(schedule)
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, state, opt_state, images, key):
    def loss_fn(params):
      (recon, out), new_state = model.apply(
          {"params": params, **state}, images, train=True, rngs={"quantizer": key},
          mutable=["quantizer_state"])
      mse = jnp.mean((recon - images) ** 2)
      return mse + out.loss, (new_state, recon, out)

    grads, (new_state, recon, out) = jax.grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return (optax.apply_updates(params, updates), {**state, **new_state}, opt_state,
            {"psnr": psnr(recon, images), **out.metrics})

  @jax.jit
  def evaluate(params, state, images):
    recon, out = model.apply({"params": params, **state}, images, train=False)
    return recon, out.indices, {"psnr": psnr(recon, images), **out.metrics}

  rng = np.random.default_rng(seed)
  start = time.perf_counter()
  bar = tqdm(range(steps), desc=f"{label:>4}", unit="step", dynamic_ncols=True)
  for step in bar:
    batch = to_unit(crops[rng.integers(0, len(crops), batch_size)])
    params, state, opt_state, metrics = train_step(
        params, state, opt_state, batch, jax.random.fold_in(loop_key, step))
    if step % 25 == 0 or step == steps - 1:
      bar.set_postfix(psnr=f"{float(metrics['psnr']):.2f}", usage=f"{float(metrics['usage']):.2f}")
  train_seconds = time.perf_counter() - start
  recon, indices, metrics = evaluate(params, state, to_unit(heldout[None]))
  ids_per_token = indices.shape[-1] if indices.ndim == 4 else 1  # residual levels
  result = {f"heldout_{k}": float(v) for k, v in metrics.items()}
  result.update(bits_per_token=ids_per_token * math.log2(quantizer.codebook_size),
                train_seconds=round(train_seconds, 2), steps=steps, batch_size=batch_size)
  return result, to_uint8(recon[0])


def _labelled(image: np.ndarray, label: str) -> Image.Image:
  pil = Image.fromarray(image)
  ImageDraw.Draw(pil).text((4, 4), label, fill=(255, 255, 0))
  return pil


def compare_quantizers(workdir: str, steps: int = 400, batch_size: int = 32, seed: int = 0,
                       quantizers: dict[str, nn.Module] | None = None
                       ) -> dict[str, dict[str, float]]:
  """Trains one patch tokenizer per quantizer; writes metrics.json and recon.png to workdir."""
  quantizers = quantizers or demo_quantizers()
  os.makedirs(workdir, exist_ok=True)
  print(f"jaxtok demo on {jax.devices()[0].platform}: {len(quantizers)} patch tokenizers, "
        f"{steps} steps of {batch_size} {CROP}x{CROP} crops each")
  crops = samples.random_crops(4096, CROP, seed=seed)
  photo = samples.load_photo(samples.HELDOUT_PHOTOS[0], HELDOUT_SIDE)
  left = (photo.shape[1] - HELDOUT_SIDE) // 2
  heldout = photo[:HELDOUT_SIDE, left:left + HELDOUT_SIDE]
  results, panels = {}, [_labelled(heldout, "held-out original")]
  for i, (name, quantizer) in enumerate(quantizers.items()):
    results[name], recon = train_tokenizer(quantizer, crops, heldout, steps=steps,
                                           batch_size=batch_size, seed=seed + i, label=name)
    panels.append(_labelled(recon, f"{name}: {results[name]['heldout_psnr']:.2f} dB"))
  grid = Image.new("RGB", (HELDOUT_SIDE * len(panels), HELDOUT_SIDE))
  for i, panel in enumerate(panels):
    grid.paste(panel, (i * HELDOUT_SIDE, 0))
  grid.save(os.path.join(workdir, "recon.png"))
  with open(os.path.join(workdir, "metrics.json"), "w") as f:
    json.dump(results, f, indent=2)
  print(f"\nheld-out photo ({samples.HELDOUT_PHOTOS[0]}, {HELDOUT_SIDE}x{HELDOUT_SIDE}):")
  print(f"{'quantizer':>9} | {'bits/token':>10} | {'PSNR dB':>7} | {'usage':>5} | {'perplexity':>10}")
  for name, r in results.items():
    print(f"{name:>9} | {r['bits_per_token']:>10.1f} | {r['heldout_psnr']:>7.2f} | "
          f"{r['heldout_usage']:>5.2f} | {r['heldout_perplexity']:>10.1f}")
  print(f"wrote {workdir}/metrics.json and {workdir}/recon.png")
  return results


DEMO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs", "demo", "tokenizer.py")


def train_tokenizer_demo(workdir: str, overrides: tuple[str, ...] = ()) -> dict:
  """Part 1: trains configs/demo/tokenizer.py in workdir/tokenizer, exports it to
  workdir/tokenizer/export, and copies its last reconstruction grid and held-out metrics."""
  from jaxtok import train  # imported here: part 2 alone needs none of the trainer
  from jaxtok.config import load_config
  from jaxtok.train import export

  config = load_config(DEMO_CONFIG, overrides)
  run_dir = os.path.join(workdir, "tokenizer")
  print(f"part 1: a CNN VQGAN ({config.quantizer.codebook_size} codes) on "
        f"{config.data.image_size}x{config.data.image_size} crops, {config.train.steps} steps")
  result = train.train(config, run_dir)
  export.export(run_dir, os.path.join(run_dir, "export"))
  grids = sorted(glob.glob(os.path.join(run_dir, "recon", "*.png")))
  if grids:
    shutil.copy(grids[-1], os.path.join(workdir, "recon.png"))
  with open(os.path.join(workdir, "metrics.json"), "w") as f:
    json.dump(result, f, indent=2)
  print(f"held-out: PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.3f}, codebook usage "
        f"{result['usage']:.2f}, perplexity {result['perplexity']:.1f}; tokenizer exported to "
        f"{run_dir}/export (jaxtok.load)")
  return result


GENERATOR_CONFIG = os.path.join(os.path.dirname(DEMO_CONFIG), "generator.py")


def train_generator_demo(workdir: str, tokenizer_export: str, *, num_crops: int = 2048,
                         overrides: tuple[str, ...] = ()) -> dict:
  """Part 3: tokenizes `num_crops` bundled crops with the exported tokenizer, trains
  configs/demo/generator.py on the tokens in workdir/generator, and writes a grid of decoded
  samples to workdir/samples.png (token ids: workdir/samples.npz)."""
  from jaxtok.config import load_config  # pylint: disable=g-import-not-at-top
  from jaxtok.data import tokens  # pylint: disable=g-import-not-at-top
  from jaxtok.train import export, generator_trainer  # pylint: disable=g-import-not-at-top

  tok = export.load(tokenizer_export)
  size = int(tok.config.data.image_size)
  run_dir = os.path.join(workdir, "generator")
  crops_dir, tokens_dir = os.path.join(run_dir, "crops"), os.path.join(run_dir, "tokens")
  os.makedirs(crops_dir, exist_ok=True)
  for i, crop in enumerate(samples.random_crops(num_crops, size, seed=1)):
    Image.fromarray(crop).save(os.path.join(crops_dir, f"{i:05d}.png"))
  meta = tokens.tokenize_folder(jax.jit(tok.encode), crops_dir, tokens_dir, image_size=size,
                                codebook_size=tok.model.quantizer.codebook_size,
                                tokenizer_config=tok.config.to_dict(), batch_size=64)
  config = load_config(GENERATOR_CONFIG, (f"data.path={tokens_dir}", *overrides))
  print(f"part 3: a GPT ({config.model.depth} layers, width {config.model.width}) on "
        f"{meta['num_records']} token grids {meta['token_shape']}, {config.train.steps} steps")
  result = generator_trainer.train(config, run_dir)
  generator_trainer.sample_images(generator_trainer.load_generator(run_dir), tok, workdir,
                                  num=16, seed=0, top_k=64)
  loss = f"final loss {result['loss']:.3f}" if "loss" in result else "already trained"
  print(f"{loss} (uniform: {math.log(config.model.codebook_size):.3f}); wrote "
        f"{workdir}/samples.png and {workdir}/samples.npz")
  return result


def run(workdir: str = "runs/demo", quick: bool = False) -> dict:
  """The whole demo; `quick` shortens every part to a few steps (a smoke test)."""
  os.makedirs(workdir, exist_ok=True)
  overrides = ("train.steps=8", "eval.every_steps=8", "checkpoint.every_steps=8",
               "data.num_train=64", "data.num_eval=16") if quick else ()
  tokenizer = train_tokenizer_demo(workdir, overrides)
  print("\npart 2: four quantizer families at 10 bits per token")
  compared = compare_quantizers(os.path.join(workdir, "quantizers"), steps=20 if quick else 400)
  print()
  generator = train_generator_demo(
      workdir, os.path.join(workdir, "tokenizer", "export"), num_crops=64 if quick else 2048,
      overrides=("train.steps=8", "checkpoint.every_steps=8") if quick else ())
  return {"tokenizer": tokenizer, "quantizers": compared, "generator": generator}
