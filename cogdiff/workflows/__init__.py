"""The workflow layer: whole jobs built from the library (training run, sampling to a folder, compare, report,
demo). Nothing in the library (attention, kernels, models, pipelines, sampling, data, latents, metrics, analysis,
io, rundir, grids, config, training) imports this package; every module here has a ``python -m`` entry point.

    python -m cogdiff.workflows.train --config configs/tiny.yaml     # what the top-level train.py runs
    python -m cogdiff.workflows.sample runs/tiny --out samples/tiny -n 100   # what sample.py runs
"""
