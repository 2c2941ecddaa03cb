"""Which examples each process reads at each step: a per-epoch seeded permutation, so position = step."""

from __future__ import annotations

import torch

from ..seeds import derive_seed

DATA_STREAM = 1  # seed stream of the epoch permutations (the per-step noise uses another)


class BatchPlan:
    """Global batch ``batch_size`` per optimizer step, split into ``grad_accum`` micro-batches on each of
    ``world`` processes. Epoch ``e`` is ``randperm(num_examples)`` seeded by (seed, e); the remainder that
    does not fill a whole batch is skipped that epoch (it lands elsewhere in the next permutation)."""

    def __init__(self, num_examples: int, batch_size: int, world: int, grad_accum: int, seed: int):
        if batch_size % (world * grad_accum):
            raise ValueError(f"train.batch_size={batch_size} must be divisible by processes x grad_accum = "
                             f"{world} x {grad_accum}; change train.batch_size or train.grad_accum")
        if num_examples < batch_size:
            raise ValueError(f"the dataset has {num_examples} examples, fewer than train.batch_size={batch_size}; "
                             f"lower train.batch_size or use more data")
        self.num_examples, self.batch_size, self.world, self.seed = num_examples, batch_size, world, seed
        self.grad_accum = grad_accum
        self.micro = batch_size // (world * grad_accum)
        self.steps_per_epoch = num_examples // batch_size
        self._epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, DATA_STREAM, epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.num_examples, generator=g)
        return self._perm

    def slots(self, rank: int) -> list:
        """This process's micro-batch slots in each global batch (slot = micro_index * world + rank). A slot
        fixes the examples and, in train.py, the noise: 1 process x 2 accumulation steps and 2 processes
        x 1 step compute the same micro-batches."""
        return [m * self.world + rank for m in range(self.grad_accum)]

    def indices(self, step: int, slot: int) -> torch.Tensor:
        """Example indices (LongTensor of length ``micro``) of micro-batch ``slot`` at ``step``."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        start = pos * self.batch_size + slot * self.micro
        return self.permutation(epoch)[start : start + self.micro]
