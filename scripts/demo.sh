#!/usr/bin/env bash
# The README's first command: set up .venv (scripts/setup.sh), then run the main job
# (python -m cogdiff.demo: tiny softmax vs Cog U-ViT on Fashion-MNIST, CPU). Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m cogdiff.demo "$@"
