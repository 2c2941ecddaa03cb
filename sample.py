#!/usr/bin/env python
"""Generate N images from a saved pipeline (or a training run folder) into one .npz and/or PNG files.

    python sample.py runs/cog --out samples/cog -n 10000 --scheduler dpm++ --steps 50 --batch-size 500 --bf16
    accelerate launch --num_processes 2 sample.py runs/cog --out samples/cog -n 50000 ...   # split over GPUs

The same as ``python -m cogdiff.workflows.sample``; ``--help`` lists the options.
"""

import sys

from cogdiff.workflows.sample import main

if __name__ == "__main__":
    sys.exit(main())
