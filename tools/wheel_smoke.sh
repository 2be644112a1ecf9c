#!/usr/bin/env bash
# The wheel as a user gets it: `pip install .` (not editable) into a fresh venv, then
# `jaxtok demo --quick` from a directory outside the repository, with the configs shipped in
# the package. Run by .ci/run after the test suite; pip's cache makes the install quick.
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(sh tools/find_python.sh)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip
"$tmp/venv/bin/python" -m pip install -q .
cd "$tmp"
"$tmp/venv/bin/jaxtok" demo --quick --workdir "$tmp/demo"
for f in metrics.json recon.png samples.png samples.npz quantizers/metrics.json; do
  [ -s "$tmp/demo/$f" ] || { echo "wheel smoke: $f missing" >&2; exit 1; }
done
echo "wheel smoke: pip install . and jaxtok demo --quick from $tmp passed"
