"""Cog Attention implementations below the front end :mod:`cogdiff.attention`, which dispatches to them.

``reference`` (PyTorch only) is the written-out definition; ``cog_triton`` (needs Triton) is the fused CUDA
kernel, imported lazily by :mod:`cogdiff.attention` on first use and registered there as ``impl="triton"``.
Nothing here imports :mod:`cogdiff.attention`; importing this package alone imports nothing else."""
