#!/bin/sh
# Prints the path of a Python >= 3.12 interpreter (JAX >= 0.11 needs it), or fails saying so.
# pyenv shims named python3.12 exist even when that version is not selected, so each
# candidate is run, not merely looked up.
for c in python3.12 python3.13 python3.14 python3 python \
         "$HOME"/.pyenv/versions/3.12*/bin/python3 "$HOME"/.pyenv/versions/3.1[3-9]*/bin/python3 \
         /usr/local/bin/python3.1[2-9] /usr/bin/python3.1[2-9]; do
  if "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then
    command -v "$c" 2>/dev/null || echo "$c"
    exit 0
  fi
done
echo "jaxtok needs Python >= 3.12 (JAX >= 0.11 requires it) and found none on PATH or under ~/.pyenv; install python3.12" >&2
exit 1
