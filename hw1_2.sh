#!/usr/bin/env bash
# Problem 2 grading entry: bash hw1_2.sh IMAGE_DIR OUTPUT_DIR  (masks for every xxxx_sat.jpg).
set -euo pipefail
if [ "$#" -ne 2 ]; then
  echo "usage: bash hw1_2.sh IMAGE_DIR OUTPUT_DIR" >&2
  exit 2
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$REPO/grading_python.sh"  # sets PYTHON, or says how to set up and exits 2
exec "$PYTHON" "$REPO/p2_inference.py" "$1" "$2"
