"""`jaxtok demo` (`make demo`): on the CPU, with the real trainers and packaged configs,
1. train the CNN VQGAN of configs/demo/tokenizer.py on crops of the bundled photos, evaluate
   it on a held-out photo and export it (`recon.png`, `metrics.json`);
2. train one patch tokenizer per quantizer family (configs/demo/patch_tokenizer.py) and
   tokenize a held-out 256x256 photo with each (`quantizers/`);
3. tokenize crops with part 1's tokenizer, train the GPT of configs/demo/ar.py on them and
   sample a grid (`samples.png`, `samples.npz`).
A rerun resumes each run where it stopped; a part stopped by a signal ends the demo.
"""

import glob
import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from jaxtok import inference, train
from jaxtok.config import load_config
from jaxtok.configs.demo import patch_tokenizer
from jaxtok.data import images as image_lib
from jaxtok.data import samples, tokens
from jaxtok.eval import metrics as eval_metrics
from jaxtok.train import export
from jaxtok.train.metrics import read_jsonl

HELDOUT_SIDE = 256  # part 2 tokenizes the held-out photo as one 256x256 image
QUICK = ("train.steps=8", "checkpoint.every_steps=8")


class Stopped(Exception):
  """A demo run was stopped by a signal; its checkpoint is saved."""


def _train(config, workdir: str) -> dict:
  """Trains (or resumes) `config` in workdir; raises Stopped if a signal ended it early."""
  result = train.train(config, workdir)
  if result["stopped_by"]:
    raise Stopped(f"{workdir} stopped by {result['stopped_by']} at step {result['step']}; "
                  f"run the demo again to resume")
  return result


def last_eval(workdir: str) -> dict:
  """The newest held-out evaluation of the run in `workdir` (its metrics.jsonl)."""
  rows = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "eval"]
  if not rows:
    raise ValueError(f"{workdir} holds no evaluation: train it with eval.every_steps > 0")
  return {k: v for k, v in rows[-1].items() if k != "split"}


def train_tokenizer_demo(workdir: str, overrides=()) -> dict:
  """Part 1: configs/demo/tokenizer.py trained in workdir/tokenizer and exported to
  workdir/tokenizer/export; its last reconstruction grid and evaluation copied to workdir."""
  config = load_config("configs/demo/tokenizer.py", overrides)
  run_dir = os.path.join(workdir, "tokenizer")
  print(f"part 1: a CNN VQGAN ({config.quantizer.codebook_size} codes) on "
        f"{config.data.image_size}x{config.data.image_size} crops, {config.train.steps} steps")
  _train(config, run_dir)
  export.export(run_dir, os.path.join(run_dir, "export"))
  tok = inference.load(os.path.join(run_dir, "export"))
  crops = samples.random_crops(config.data.num_eval, tok.image_size, seed=0,
                               photos=samples.HELDOUT_PHOTOS)
  result = {**last_eval(run_dir), "colour_shift_rgb": colour_shift(tok, crops)}
  shutil.copy(sorted(glob.glob(os.path.join(run_dir, "recon", "*.png")))[-1],
              os.path.join(workdir, "recon.png"))
  with open(os.path.join(workdir, "metrics.json"), "w") as f:
    json.dump(result, f, indent=2)
  print(f"held-out (step {result['step']}): PSNR {result['psnr']:.2f} dB, SSIM "
        f"{result['ssim']:.3f}, codebook usage {result['usage']:.2f}, perplexity "
        f"{result['perplexity']:.1f}, mean colour shift (R, G, B) "
        f"{tuple(result['colour_shift_rgb'])} of 255; tokenizer exported to "
        f"{run_dir}/export (jaxtok.load)")
  return result


def colour_shift(tok: inference.LoadedTokenizer, images_u8: np.ndarray) -> list[float]:
  """Mean reconstructed minus mean original value per channel, in uint8 levels: a tokenizer's
  colour cast (the README's demo section explains the demo's)."""
  recon = np.asarray(image_lib.to_uint8(jax.jit(tok.reconstruct)(jnp.asarray(images_u8))))
  shift = recon.reshape(-1, 3).mean(0) - images_u8.reshape(-1, 3).astype(np.float64).mean(0)
  return [round(float(v), 1) for v in shift]


def heldout_photo() -> np.ndarray:
  photo = samples.load_photo(samples.HELDOUT_PHOTOS[0], HELDOUT_SIDE)
  left = (photo.shape[1] - HELDOUT_SIDE) // 2
  return photo[:HELDOUT_SIDE, left:left + HELDOUT_SIDE]


def tokenize_heldout(tok: inference.LoadedTokenizer, photo: np.ndarray) -> tuple[dict, np.ndarray]:
  """PSNR, code usage and perplexity of `tok` on one photo, and its reconstruction (uint8)."""
  images = image_lib.to_float(jnp.asarray(photo[None]))
  ids = jax.jit(tok.encode)(images)
  recon = jax.jit(tok.decode)(ids)
  codebook_size = tok.model.quantizer.codebook_size
  levels = ids.shape[-1] if ids.ndim == 4 else 1  # residual levels
  result = {"heldout_psnr": float(eval_metrics.psnr(jnp.clip(recon, -1, 1), images)[0]),
            **{f"heldout_{k}": v for k, v in eval_metrics.usage_from_counts(
                eval_metrics.code_counts(ids, codebook_size)).items()},
            "bits_per_token": levels * math.log2(codebook_size)}
  return result, np.asarray(image_lib.to_uint8(recon[0]))


def _labelled(image: np.ndarray, label: str) -> Image.Image:
  pil = Image.fromarray(image)
  ImageDraw.Draw(pil).text((4, 4), label, fill=(255, 255, 0))
  return pil


def compare_quantizers(workdir: str, families=tuple(patch_tokenizer.QUANTIZERS),
                       overrides=(), arg_suffix: str = "") -> dict[str, dict]:
  """Part 2: one patch tokenizer per quantizer family in workdir/<family>; writes
  metrics.json and recon.png (the held-out photo, then each family's reconstruction)."""
  photo = heldout_photo()
  results, panels = {}, [_labelled(photo, "held-out original")]
  for family in families:
    config = load_config(f"configs/demo/patch_tokenizer.py:{family}{arg_suffix}", overrides)
    run_dir = os.path.join(workdir, family)
    _train(config, run_dir)
    export.export(run_dir, os.path.join(run_dir, "export"))
    results[family], recon = tokenize_heldout(inference.load(os.path.join(run_dir, "export")),
                                              photo)
    results[family]["steps"] = int(config.train.steps)
    panels.append(_labelled(recon, f"{family}: {results[family]['heldout_psnr']:.2f} dB"))
  grid = Image.new("RGB", (HELDOUT_SIDE * len(panels), HELDOUT_SIDE))
  for i, panel in enumerate(panels):
    grid.paste(panel, (i * HELDOUT_SIDE, 0))
  grid.save(os.path.join(workdir, "recon.png"))
  with open(os.path.join(workdir, "metrics.json"), "w") as f:
    json.dump(results, f, indent=2)
  print(f"\nheld-out photo ({samples.HELDOUT_PHOTOS[0]}, {HELDOUT_SIDE}x{HELDOUT_SIDE}):")
  print(f"{'quantizer':>9} | {'bits/token':>10} | {'PSNR dB':>7} | {'usage':>5} | "
        f"{'perplexity':>10}")
  for name, r in results.items():
    print(f"{name:>9} | {r['bits_per_token']:>10.1f} | {r['heldout_psnr']:>7.2f} | "
          f"{r['heldout_usage']:>5.2f} | {r['heldout_perplexity']:>10.1f}")
  print(f"wrote {workdir}/metrics.json and {workdir}/recon.png")
  return results


def train_generator_demo(workdir: str, tokenizer_export: str, *, num_crops: int = 2048,
                         overrides=()) -> dict:
  """Part 3: `num_crops` bundled crops tokenized with the exported tokenizer, the GPT of
  configs/demo/ar.py trained on them in workdir/generator, and 16 samples decoded to
  workdir/samples.png (token ids: workdir/samples.npz)."""
  tok = inference.load(tokenizer_export)
  run_dir = os.path.join(workdir, "generator")
  crops_dir, tokens_dir = os.path.join(run_dir, "crops"), os.path.join(run_dir, "tokens")
  if not os.path.isfile(os.path.join(tokens_dir, tokens.METADATA)):
    os.makedirs(crops_dir, exist_ok=True)
    for i, crop in enumerate(samples.random_crops(num_crops, tok.image_size, seed=1)):
      Image.fromarray(crop).save(os.path.join(crops_dir, f"{i:05d}.png"))
    tokens.tokenize_folder(jax.jit(tok.encode), crops_dir, tokens_dir,
                           image_size=tok.image_size,
                           codebook_size=tok.model.quantizer.codebook_size,
                           tokenizer_config=tok.config.to_dict(), batch_size=64)
  config = load_config("configs/demo/ar.py", (f"data.path={tokens_dir}", *overrides))
  print(f"part 3: a GPT ({config.model.depth} layers, width {config.model.width}) on "
        f"{num_crops} token grids, {config.train.steps} steps")
  _train(config, run_dir)
  export.export(run_dir, os.path.join(run_dir, "export"))
  final = [r for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl")) if r["split"] == "train"]
  result = {"step": final[-1]["step"], "loss": final[-1]["loss"],
            "accuracy": final[-1]["accuracy"]}
  samples_out = inference.sample_images(inference.load(os.path.join(run_dir, "export")), tok,
                                        num=16, seed=0, top_k=64)
  inference.write_samples(samples_out, workdir)
  print(f"final loss {result['loss']:.3f} (uniform: {math.log(config.model.codebook_size):.3f});"
        f" wrote {workdir}/samples.png and {workdir}/samples.npz")
  return result


def run(workdir: str = "runs/demo", quick: bool = False) -> dict:
  """The whole demo; `quick` shortens every part to a few steps (a smoke test)."""
  os.makedirs(workdir, exist_ok=True)
  try:
    tokenizer = train_tokenizer_demo(workdir, (*QUICK, "eval.every_steps=8", "data.num_train=64",
                                               "data.num_eval=16") if quick else ())
    print("\npart 2: four quantizer families at 10 bits per token")
    compared = compare_quantizers(os.path.join(workdir, "quantizers"),
                                  overrides=("eval.every_steps=8", "data.num_train=256",
                                             *QUICK) if quick else ())
    print()
    generator = train_generator_demo(workdir, os.path.join(workdir, "tokenizer", "export"),
                                     num_crops=64 if quick else 2048,
                                     overrides=QUICK if quick else ())
  except Stopped as e:
    print(f"\ndemo stopped: {e}")
    return {"stopped": str(e)}
  return {"tokenizer": tokenizer, "quantizers": compared, "generator": generator}
