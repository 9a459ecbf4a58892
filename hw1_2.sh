#!/usr/bin/env bash
# Problem 2 grading entry: bash hw1_2.sh IMAGE_DIR OUTPUT_DIR  (masks for every xxxx_sat.jpg).
set -euo pipefail
if [ "$#" -ne 2 ]; then
  echo "usage: bash hw1_2.sh IMAGE_DIR OUTPUT_DIR" >&2
  exit 2
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${HW1_PYTHON:-$REPO/.venv/bin/python}"  # HW1_PYTHON: another interpreter that has requirements.txt
[ -n "${HW1_PYTHON:-}" ] || [ -x "$PYTHON" ] || PYTHON=python3
# find_spec looks the packages up without importing them (no seconds spent loading torch twice)
if ! "$PYTHON" -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ("torch", "torchvision", "PIL", "tqdm")))' 2>/dev/null; then
  echo "error: $PYTHON: no Python with torch and torchvision found — set up once in $REPO: python3 -m venv .venv && .venv/bin/pip install -r requirements.txt (or set HW1_PYTHON)" >&2
  exit 2
fi
exec "$PYTHON" "$REPO/p2_inference.py" "$1" "$2"
