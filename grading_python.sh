# Sourced by hw1_1.sh and hw1_2.sh (REPO set): PYTHON = an interpreter that has the project's packages,
# else one `error:` line with the set-up command and exit 2.
PYTHON="${HW1_PYTHON:-$REPO/.venv/bin/python}"  # HW1_PYTHON: another interpreter that has requirements.txt
[ -n "${HW1_PYTHON:-}" ] || [ -x "$PYTHON" ] || PYTHON=python3
# find_spec looks the packages up without importing them (no seconds spent loading torch twice)
if ! "$PYTHON" -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ("torch", "torchvision", "PIL", "tqdm")))' 2>/dev/null; then
  echo "error: $PYTHON: no Python with torch and torchvision found — set up once in $REPO: python3 -m venv .venv && .venv/bin/pip install -r requirements.txt (or set HW1_PYTHON)" >&2
  exit 2
fi
