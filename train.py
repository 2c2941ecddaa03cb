#!/usr/bin/env python
"""Train a U-ViT (softmax) or U-ViC (Cog attention) diffusion model, in pixel or latent space.

    python train.py --config configs/tiny.yaml [section.key=value ...]
    python train.py --config configs/cifar10_uvit_s2_cog.yaml data.path=/data/cifar10 --dry-run
    accelerate launch --num_processes 2 train.py --config configs/cifar10_uvit_s2_cog.yaml data.path=...
    python train.py --config configs/tiny.yaml train.resume=latest        # continue a killed run
    python train.py --config configs/tiny.yaml --export latest            # checkpoint -> <run>/pipeline

The same as ``python -m cogdiff.workflows.train`` (which also works from an installed package); from Python,
``cogdiff.workflows.train.run_training(cfg)``. The run folder is described in ``cogdiff/rundir.py``.
"""

import sys

from cogdiff.workflows.train import main

if __name__ == "__main__":
    sys.exit(main())
