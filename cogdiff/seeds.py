"""The one seed derivation of cogdiff: well-mixed seeds from integer keys through numpy's ``SeedSequence``.

Training draws its per-step generators from ``derive_seed(seed, stream, step, slot)``, sampling its per-image
generators from ``image_seed(seed, index)``; both fold the same 64-bit word to 63 bits (low bits kept vs. top
bits kept; each is fixed by the outputs already published with it).
"""

from __future__ import annotations

import numpy as np

SEED_MASK = 2**63 - 1


def seed_word(*keys: int) -> int:
    """A 64-bit integer from integer keys (the first word of ``SeedSequence(keys)``)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0])


def derive_seed(*keys: int) -> int:
    """A 63-bit seed (low bits of :func:`seed_word`), e.g. from (seed, stream, step, slot)."""
    return seed_word(*keys) & SEED_MASK


def image_seed(seed: int, index: int) -> int:
    """A 63-bit seed for image ``index`` of a sampling run with ``seed`` (top bits of :func:`seed_word`)."""
    return seed_word(seed, index) >> 1
