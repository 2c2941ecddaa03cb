#!/usr/bin/env bash
# The README's first command: set up .venv (scripts/setup.sh), then run the main job
# (python -m cogdiff.demo: the two-arm study configs/studies/demo.yaml, softmax vs Cog U-ViT on Fashion-MNIST,
# CPU, about 5-6 minutes on 2 cores). Extra arguments go to the demo (python -m cogdiff.demo --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m cogdiff.demo "$@"
