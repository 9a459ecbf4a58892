#!/usr/bin/env bash
# Problem 1 grading: bash hw1_1.sh IMAGES_CSV IMAGE_DIR OUTPUT_CSV  (checkpoint: $P1_CHECKPOINT or checkpoints/p1_classifier.pt)
if [ "$#" -ne 3 ]; then
  echo "usage: bash hw1_1.sh IMAGES_CSV IMAGE_DIR OUTPUT_CSV" >&2
  exit 2
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$REPO/grading_python.sh"  # sets PYTHON, or says how to set up and exits 2
exec "$PYTHON" "$REPO/p1_inference.py" --csv "$1" --image-dir "$2" --out "$3"
