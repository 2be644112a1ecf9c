"""Trains jaxtok/configs/demo/tokenizer.py:get_config("tiny") in a fresh process, for the tests.

  python tests/train/run_tiny.py WORKDIR '{"train.steps": 8}' [STOP_AFTER]

Prints one line `RESULT <json>` at the end. Overrides are flattened config keys. The CPU
platform, one device, and the compile cache come from the environment the test sets.
"""

import json
import logging
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()  # Grain worker processes need parsed absl flags under JAX


def main() -> None:
  logging.basicConfig(level=logging.WARNING)
  from jaxtok.configs.demo import tokenizer as demo_config  # pylint: disable=g-import-not-at-top
  from jaxtok.train import train  # pylint: disable=g-import-not-at-top

  workdir, overrides = sys.argv[1], json.loads(sys.argv[2])
  stop_after = int(sys.argv[3]) if len(sys.argv) > 3 else None
  config = demo_config.get_config("tiny")
  config.update_from_flattened_dict(overrides)
  result = train(config, workdir, stop_after=stop_after)
  print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
