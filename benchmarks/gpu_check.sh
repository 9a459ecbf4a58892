#!/usr/bin/env bash
# Every CUDA path of the project once, then bench.py at the reference sizes and hw1_2.sh timed (issue 29):
#
#   bash benchmarks/gpu_check.sh OUT [--cpu] [--only STEP ...] [--budget-s S]
#
# A log per step in OUT/logs/, every step run even when an earlier one fails, a summary table at the end
# (OUT/summary.md, .json; OUT/logs.tar.gz). On a GPU it also writes BENCHMARKS.md's gpu_check block; --cpu runs the
# same steps on the CPU at tiny sizes and touches nothing outside OUT. Exit status 0 when every step is ok.
# The steps and their sizes: benchmarks/gpu_steps.py; the runner and the summary: gpu_check.py, gpu_report.py.
#
# On the device machine (its python3 has torch, torchvision, scikit-learn, matplotlib, tqdm, einops and accelerate,
# not byol-pytorch and beartype), first here, once, in the repository root (.whl/ and .data/ are git-ignored): the
# wheels, and Fashion-MNIST's idx files (about 30 MB; apt-get install -y dataset-fashion-mnist) for the side by side:
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl byol-pytorch==0.9.1 beartype==0.23.1
#   mkdir -p .data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz .data/fashion-mnist/
# then one 10-minute call on the GPU machine, carrying .whl and .data along, timeout 600 s (the check keeps to 560 s):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site;
#   bash benchmarks/gpu_check.sh /tmp/gc; cp /tmp/gc/summary.md /tmp/gc/summary.json /tmp/gc/logs.tar.gz "$OUT"/;
#   for d in ssl ssl_small_stem; do mkdir -p "$OUT/$d"; cp -r /tmp/gc/$d/curves "$OUT/$d"/; done
# and back here, with the folder the files came back to:
#   .venv/bin/python -m benchmarks.gpu_check apply FOLDER     # summary.md and the side by side into BENCHMARKS.md
# Device time: the steps before the side by side fit the 560 s budget (their limits: gpu_steps.py); the side by
# side comes last and takes what is left: an estimated ~2 min for its pair (2 x 3,000 steps of 256 at ~15 ms a
# step, plus kNN) and ~1 min for the small stem's row (1,000 steps at ~40 ms); the call stays under 10 minutes.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/grading_python.sh"  # sets PYTHON, or says how to set up and exits 2
export HW1_PYTHON="$PYTHON"       # hw1_1.sh and hw1_2.sh run under the same interpreter as the other steps
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m benchmarks.gpu_check run "$@"
