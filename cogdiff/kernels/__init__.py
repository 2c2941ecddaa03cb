"""Optional fused kernels. ``cogdiff.kernels.cog_triton`` (needs Triton) is imported lazily by
:mod:`cogdiff.attention` on first use and registers ``impl="triton"``; importing this package
alone imports nothing else."""
