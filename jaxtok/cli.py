"""The `jaxtok` command."""

import argparse
import os
import sys

import jaxtok


def _demo(args: argparse.Namespace) -> None:
  from jaxtok import demo  # imported here: it pulls in jax, which `--help` should not wait for

  demo.run(workdir=args.workdir, steps=args.steps, batch_size=args.batch_size, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="jaxtok", description="JAX/Flax visual tokenizers and token-based image generators.")
  parser.add_argument("--version", action="version", version=f"jaxtok {jaxtok.__version__}")
  commands = parser.add_subparsers(dest="command", metavar="COMMAND")
  demo = commands.add_parser(
      "demo", help="train small patch tokenizers with several quantizers on bundled photos (CPU)")
  demo.add_argument("--workdir", default="runs/demo", help="where metrics and pictures go")
  demo.add_argument("--steps", type=int, default=400, help="training steps per quantizer")
  demo.add_argument("--batch-size", type=int, default=32, help="crops per step")
  demo.add_argument("--seed", type=int, default=0)
  demo.set_defaults(func=_demo)
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.command is None:
    parser.print_help()
    return 0
  for name in ("steps", "batch_size"):
    if getattr(args, name, 1) < 1:
      parser.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
  try:
    args.func(args)
  except (ValueError, TypeError, FileNotFoundError) as e:  # user errors: one line, no traceback
    if os.environ.get("JAXTOK_TRACEBACK"):
      raise
    print(f"jaxtok {args.command}: error: {e} (set JAXTOK_TRACEBACK=1 for the traceback)",
          file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
