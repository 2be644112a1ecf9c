"""The `jaxtok` command: train, eval, export, reconstruct, tokenize, sample and demo.

Config overrides follow the config file: `jaxtok train --config configs/demo/tokenizer.py
--workdir runs/x --config.train.steps=100 --config.optimizer.lr=3e-4`. Configs shipped in
the package (configs/demo/...) are found from any directory.
"""

import argparse
import os
import sys

import jaxtok
from jaxtok import cli_eval

def _config(args: argparse.Namespace):
  from jaxtok.config import load_config

  return load_config(args.config, args.overrides)


def _print_result(result: dict) -> None:
  print({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()})


def _train(args):
  from jaxtok import train

  _print_result(train.train(_config(args), args.workdir))


def _eval(args):
  if args.model is not None or args.images is not None:  # a tokenizer export on an image set
    if args.model is None or args.images is None or args.workdir is not None:
      raise ValueError("jaxtok eval takes --workdir (a training run), or --model and --images "
                       "(a tokenizer export on an image set)")
    cli_eval.eval_tokenizer(args, _tokenizer(args.model))
    return
  if args.workdir is None:
    raise ValueError("jaxtok eval needs --workdir (a training run) or --model and --images")
  from jaxtok import train

  config = _config(args) if args.config else None  # None: the run's saved config
  _print_result(train.evaluate(config, args.workdir, step=args.step, overrides=args.overrides))


def _export(args):
  from jaxtok.train import export

  out = export.export(args.workdir, args.out, step=args.step, use_ema=not args.no_ema)
  print(f"exported to {out}")


def _load(path: str, kind: type, flag: str):
  """The export at `path`, which must hold a `kind` (LoadedTokenizer / LoadedGenerator); a
  generator's training workdir is also accepted (its newest checkpoint, EMA params)."""
  from jaxtok import inference

  is_workdir = (not os.path.isfile(os.path.join(path, inference.CONFIG_FILE))
                and os.path.isdir(os.path.join(path, "checkpoints")))
  try:
    if kind is inference.LoadedGenerator and is_workdir:
      from jaxtok.train import export

      config, variables, _ = export.restore_model(path)
      loaded = inference.assemble(config, variables)
    else:
      loaded = inference.load(path)
  except (ValueError, FileNotFoundError) as e:  # say which of the paths given is the bad one
    error = FileNotFoundError if isinstance(e, FileNotFoundError) else ValueError
    raise error(f"{flag}: {e}") from e
  if not isinstance(loaded, kind):
    wanted = "tokenizer" if kind is inference.LoadedTokenizer else "generator"
    raise ValueError(f"{flag} {path!r} holds a {loaded.config.trainer!r} model; expected a "
                     f"{wanted} export")
  return loaded


def _tokenizer(path: str):
  from jaxtok import inference

  return _load(path, inference.LoadedTokenizer, "--model")


def _reconstruct(args):
  import jax

  from jaxtok.data import pipeline, transforms
  from jaxtok.eval import reconstruct

  requested = None if args.resolution is None else transforms.parse_resolution(args.resolution)
  tok = _tokenizer(args.model)
  factor = tok.model.downsample_factor
  resolution = reconstruct.resolve_resolution(requested, tok.model, tok.image_size)
  described = transforms.describe_resolution(resolution, factor=factor,
                                             train_size=tok.image_size)
  if requested is None and resolution == "train":
    described += " (this tokenizer takes only its training size)"
  print(f"resolution: {described}")
  result = reconstruct.reconstruct(
      jax.jit(tok.reconstruct), args.images, args.out, image_size=tok.image_size,
      factor=factor, resolution=resolution, batch_size=args.batch_size,
      max_skipped=args.max_skipped, progress=True)
  ssim = "n/a (images under 11 pixels)" if result["mean_ssim"] is None else (
      f"{result['mean_ssim']:.4f}")
  print(pipeline.describe_skipped(result["skipped"], result["ignored"]))
  print(f"{result['num_images']} images: PSNR {result['mean_psnr']:.2f} dB, SSIM {ssim}; "
        f"wrote the pictures (original | reconstruction) and {reconstruct.METRICS} to "
        f"{args.out}")


def _tokenize(args):
  import jax

  from jaxtok.data import pipeline, tokens, transforms
  from jaxtok.eval import reconstruct

  resolution = tokens.parse_resolution(args.resolution)  # refuses "native" before loading
  tok = _tokenizer(args.model)
  resolution = reconstruct.resolve_resolution(resolution, tok.model, tok.image_size)
  described = transforms.describe_resolution(resolution, factor=tok.model.downsample_factor,
                                             train_size=tok.image_size)
  print(f"resolution: {described}")
  latents = tok.model.quantizer.codebook_size == 0  # KL: continuous latents (MAR's inputs)
  encode = (lambda x: tok.encode(x, return_latents=True)[1]) if latents else tok.encode
  meta = tokens.tokenize_folder(
      jax.jit(encode), args.images, args.out, image_size=tok.image_size,
      codebook_size=tok.model.quantizer.codebook_size, tokenizer_config=tok.config.to_dict(),
      resolution=resolution, num_shards=args.shards, batch_size=args.batch_size,
      max_skipped=args.max_skipped, progress=True, dtype="float32" if latents else "int32")
  print(pipeline.describe_skipped(meta["skipped"], meta["ignored"]))
  print(f"{meta['num_records']} images -> tokens {meta['token_shape']} in "
        f"{len(meta['shards'])} shard(s) under {args.out} ({len(meta['skipped'])} skipped)")


def _sample(args):
  from jaxtok import inference
  from jaxtok.models.generators.mar import MAR
  from jaxtok.models.generators.maskgit import MaskGIT

  # Checked before loading (slow) and sampling (slower), naming the flags.
  if args.num < 1:
    raise ValueError(f"--num must be >= 1; got {args.num}")
  if not 0 <= args.seed < 2**32:
    raise ValueError(f"--seed must lie in [0, 2**32) (PRNG seeds are 32-bit); got {args.seed}")
  if args.cfg_scale != 1.0 and args.class_id is None and args.fid_ref is None:
    raise ValueError(f"--cfg-scale {args.cfg_scale:g} needs --class-id: classifier-free "
                     f"guidance steers samples towards a class (--cfg-scale 1 samples without)")
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    raise ValueError(f"--out {args.out!r} is a file; pass a directory")
  generator = _load(args.model, inference.LoadedGenerator, "--model")
  tok = _load(args.tokenizer, inference.LoadedTokenizer, "--tokenizer")
  options = dict(cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k,
                 top_p=args.top_p)
  masked = {"num_steps": args.num_steps, "choice_temperature": args.choice_temperature}
  if isinstance(generator.model, (MaskGIT, MAR)):  # iterative samplers
    options.update({k: v for k, v in masked.items() if v is not None})
  elif any(v is not None for v in masked.values()):
    raise ValueError("--num-steps and --choice-temperature are MaskGIT options; "
                     f"{args.model!r} holds a {type(generator.model).__name__}")
  options.update(_sampler_options(generator.model, args.option))
  if args.fid_ref is not None:  # scored in batches; only a preview grid is written
    cli_eval.sample_fid(args, generator, tok, options)
    return
  result = inference.sample_images(generator, tok, num=args.num, seed=args.seed,
                                   class_id=args.class_id, **options)
  inference.write_samples(result, args.out)
  print(f"{len(result['tokens'])} samples of {result['tokens'].shape[1:]} tokens -> "
        f"{args.out}/samples.png and {args.out}/samples.npz")


# Keywords of a generator's `sample` that have flags of their own or are not options.
_SAMPLE_FLAGS = {"self", "params", "rng", "labels", "num_samples", "cfg_scale", "temperature",
                 "top_k", "top_p", "num_steps", "choice_temperature"}


def _sampler_options(model, items: list[str] | None) -> dict:
  """`--option NAME=VALUE` -> the generator's own sampling keywords, each checked against
  its `sample` signature (RAR's cfg_power; MAR's sampler, sampling_steps, cfg_schedule...)."""
  import inspect

  from jaxtok import convert

  options = convert.parse_options(items)
  known = sorted(set(inspect.signature(model.sample).parameters) - _SAMPLE_FLAGS)
  unknown = sorted(set(options) - set(known))
  if unknown:
    raise ValueError(f"--option {', '.join(unknown)}: not a sampling option of "
                     f"{type(model).__name__}; its options: {known or 'none'}")
  return options


def _convert(args):
  from jaxtok import convert

  if args.list:
    print(convert.describe())
    return
  missing = [f for f, v in (("from", args.source), ("checkpoint", args.checkpoint),
                                ("out", args.out)) if v is None]
  if missing:
    raise ValueError(f"jaxtok convert needs {', '.join('--' + f for f in missing)} "
                     f"(or --list to see the sources)")
  out = convert.convert(args.source, args.checkpoint, args.out, use_ema=args.ema,
                        **convert.parse_options(args.option))
  print(f"converted {args.checkpoint} ({args.source}) to {out}")


def _demo(args):
  from jaxtok import demo

  demo.run(workdir=args.workdir, quick=args.quick)


def _budget(text: str) -> int | float:
  value = float(text)
  if value < 0 or (value >= 1 and value != int(value)):
    raise argparse.ArgumentTypeError(f"a count >= 0 or a fraction in [0, 1); got {text!r}")
  return int(value) if value >= 1 or text.isdigit() else value


def _add_sample_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--model", required=True, help="a generator's `jaxtok export` (or workdir)")
  p.add_argument("--tokenizer", required=True, help="the tokenizer's `jaxtok export` directory")
  p.add_argument("--out", required=True, help="writes samples.png and samples.npz here")
  p.add_argument("--num", type=int, default=16, help="number of samples")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--class-id", type=int, default=None, help="class of every sample (default: "
                 "the null class, i.e. unconditional)")
  p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale")
  p.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
  p.add_argument("--top-k", type=int, default=0, help="0: off")
  p.add_argument("--top-p", type=float, default=1.0, help="1: off")
  p.add_argument("--num-steps", type=int, default=None, help="MaskGIT: decoding steps (12)")
  p.add_argument("--option", action="append", metavar="NAME=VALUE",
                 help="a sampling keyword of the generator's own, e.g. cfg_power=2.75 (RAR), "
                 "sampler=ddim or sampling_steps=50 (MAR); repeatable")
  p.add_argument("--choice-temperature", type=float, default=None,
                 help="MaskGIT: Gumbel noise on the re-masking confidence (4.5)")
  p.add_argument("--fid-ref", default=None, help="score the samples (gFID, IS, precision/"
                 "recall) against this stats .npz or image set, in batches, without writing "
                 "them; a conditional model samples every class equally often unless "
                 "--class-id is given")
  p.add_argument("--batch-size", type=int, default=250, help="with --fid-ref: samples per batch")
  cli_eval.add_inception_weights_argument(p)


def _add_images_arguments(p: argparse.ArgumentParser, name: str) -> None:
  """The options of `reconstruct` and `tokenize`."""
  p.add_argument("--model", required=True, help="a directory made by `jaxtok export`")
  p.add_argument("--images", required=True, help="an image folder (or, to reconstruct, a file)")
  p.add_argument("--out", required=True)
  p.add_argument("--batch-size", type=int, default=16,
                 help="images per call (at a fixed resolution; native runs one at a time)")
  if name == "tokenize":
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--resolution", default="train",
                   help="'train' (default: the tokenizer's training crop size) or N (shorter "
                   "side resized to N, central NxN crop); not 'native': the shards hold one "
                   "token grid")
  else:
    p.add_argument("--resolution", default=None,
                   help="'native' (default: each image's own size, H and W center-cropped to "
                   "multiples of the downsampling factor; 'train' for tokenizers that take "
                   "only their training size), 'train' (the training crop size) or N "
                   "(shorter side resized to N, central NxN crop)")
  p.add_argument("--max-skipped", type=_budget, default=0.01 if name == "tokenize" else 0.5,
                 help="unreadable files allowed before the command fails: a count (3) or a "
                 "fraction (0.01); default %(default)s")


def _add_convert_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--from", dest="source", help="the source model (see --list)")
  p.add_argument("--checkpoint", help="the released file (.pt/.pth/.bin/.safetensors/.msgpack)")
  p.add_argument("--out", help="the export directory to write")
  p.add_argument("--ema", action="store_true", help="convert the file's 'ema' weights")
  p.add_argument("--list", action="store_true", help="list the sources and their files")
  p.add_argument("--option", action="append", metavar="NAME=VALUE",
                 help="a source's own option (see --list), e.g. image_size=384; repeatable")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="jaxtok", allow_abbrev=False,
      description="JAX/Flax visual tokenizers and token-based image generators.")
  parser.add_argument("--version", action="version", version=f"jaxtok {jaxtok.__version__}")
  commands = parser.add_subparsers(dest="command", metavar="COMMAND")

  def command(name, func, help_text):
    p = commands.add_parser(name, help=help_text, allow_abbrev=False)
    p.set_defaults(func=func)
    return p

  for name, func, help_text in (("train", _train,
                                 "train (or resume) a tokenizer or generator in WORKDIR"),
                                ("eval", _eval, "evaluate WORKDIR's checkpoint on held-out "
                                 "data, or a tokenizer export on images (rFID, PSNR, SSIM, "
                                 "LPIPS, codebook usage)")):
    p = command(name, func, help_text)
    p.add_argument("--config", required=name == "train",
                   help="config file, e.g. configs/demo/tokenizer.py (file.py:arg passes arg to "
                   "get_config); then --config.x.y=value overrides" + (
                       "; default: the run's own config, saved with its checkpoint (the "
                       "overrides apply to it)" if name == "eval" else ""))
    p.add_argument("--workdir", required=name == "train", help="checkpoints, metrics and "
                   "pictures")
    if name == "eval":
      p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
      cli_eval.add_eval_model_arguments(p)
      p.add_argument("--max-skipped", type=_budget, default=0, help="with --model: unreadable "
                     "files allowed (a count or a fraction)")
  p = command("fid", cli_eval.fid_command, "FID, IS and precision/recall of an image set "
              "against another or a stats .npz (the FID Inception, offline)")
  cli_eval.add_fid_arguments(p)
  p.add_argument("--max-skipped", type=_budget, default=0,
                 help="unreadable files allowed (a count or a fraction)")

  p = command("export", _export, "write WORKDIR's model (params + config) for jaxtok.load")
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
  p.add_argument("--no-ema", action="store_true", help="export the raw, not the EMA, params")

  for name, func, help_text in (
      ("reconstruct", _reconstruct, "images in -> reconstructions and PSNR/SSIM out"),
      ("tokenize", _tokenize, "images in -> ArrayRecord token shards with metadata")):
    _add_images_arguments(command(name, func, help_text), name)

  _add_sample_arguments(command("sample", _sample, "draw token grids from a generator, decode "
                                "them to a PNG grid"))
  _add_convert_arguments(command(
      "convert", _convert, "convert a published checkpoint (LlamaGen, TiTok, MaskGIT, taming) "
      "into a jaxtok export"))
  p = command("demo", _demo, "train a small tokenizer, compare quantizers and train a tiny "
              "generator on bundled photos")
  p.add_argument("--workdir", default="runs/demo", help="where checkpoints, metrics, pictures go")
  p.add_argument("--quick", action="store_true", help="a few steps only (a smoke test)")
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  if args.command is None:
    parser.print_help()
    return 0
  overrides = [a[len("--config."):] for a in extra if a.startswith("--config.")]
  unknown = [a for a in extra if not a.startswith("--config.")]
  if unknown or (overrides and args.command not in ("train", "eval")):
    parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
  args.overrides = overrides
  for name in ("batch_size", "shards"):
    if getattr(args, name, 1) < 1:
      parser.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
  use_compile_cache()
  try:
    args.func(args)
  except KeyboardInterrupt:
    if os.environ.get("JAXTOK_TRACEBACK"):
      raise
    print(f"jaxtok {args.command}: interrupted", file=sys.stderr)
    return 130
  except Exception as e:  # pylint: disable=broad-except  # the user's errors: no traceback
    if os.environ.get("JAXTOK_TRACEBACK") or not _is_user_error(e):
      raise
    print(f"jaxtok {args.command}: error: {e} (set JAXTOK_TRACEBACK=1 for the traceback)",
          file=sys.stderr)
    return 2
  return 0


def _is_user_error(error: Exception) -> bool:
  """Errors the user acts on, reported without a traceback: bad arguments, paths or configs,
  and a run's state (a locked workdir, unreadable or mismatched checkpoints, divergence)."""
  if isinstance(error, (ValueError, TypeError, OSError, KeyError)):
    return True
  from jaxtok.train import checkpoint, guards  # pylint: disable=g-import-not-at-top

  return isinstance(error, (guards.NonFiniteError, guards.WorkdirLockedError,
                            checkpoint.CheckpointCorruptError))


def use_compile_cache() -> None:
  """Points XLA's persistent compile cache at $JAXTOK_CACHE/jax (default ~/.cache/jaxtok/jax)
  unless one is set (JAX_COMPILATION_CACHE_DIR): a rerun loads its train step, not compiles."""
  import jax  # pylint: disable=g-import-not-at-top

  if jax.config.jax_compilation_cache_dir:
    return
  root = os.environ.get("JAXTOK_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                         "jaxtok")
  jax.config.update("jax_compilation_cache_dir", os.path.join(root, "jax"))


if __name__ == "__main__":
  sys.exit(main())
