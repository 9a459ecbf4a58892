#!/usr/bin/env bash
# Problem 1 grading: bash hw1_1.sh IMAGES_CSV IMAGE_DIR OUTPUT_CSV  (checkpoint: $P1_CHECKPOINT or checkpoints/p1_classifier.pt)
if [ "$#" -ne 3 ]; then
  echo "usage: bash hw1_1.sh IMAGES_CSV IMAGE_DIR OUTPUT_CSV" >&2
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
exec "$PYTHON" "$REPO/p1_inference.py" --csv "$1" --image-dir "$2" --out "$3"
