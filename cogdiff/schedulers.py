"""The sampler names of cogdiff, one table for YAML configs and command lines alike (no diffusers import here:
:func:`cogdiff.sampling.make_scheduler` builds them).

"""

from __future__ import annotations

# Every sampler starts from pure noise at the last training timestep (t = 999 of 1000) and takes
# equal steps of 1000 / steps: diffusers' "trailing" spacing. Set explicitly for all of them, because
# ``from_config`` otherwise inherits the base config's spacing: a DDPMScheduler config saved to disk says
# "leading", with which DDIM at 4 steps runs [750, 500, 250, 0] and DPM++ at 50 steps starts at t = 950
# (leading: the first step is at t < T, from an image that is pure noise only at T).
TIMESTEP_SPACING = "trailing"
_SPACING = {"timestep_spacing": TIMESTEP_SPACING}

# name -> (diffusers class, extra config). "dpm++" is DPM-Solver++(2M), U-ViT's "fast" sampler family.
SCHEDULERS = {
    "ddpm": ("DDPMScheduler", {**_SPACING}),
    "ddim": ("DDIMScheduler", {**_SPACING}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, **_SPACING}),
    "dpm++sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, **_SPACING}),
    "euler": ("EulerDiscreteScheduler", {**_SPACING}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {**_SPACING}),
    "heun": ("HeunDiscreteScheduler", {**_SPACING}),
    "unipc": ("UniPCMultistepScheduler", {**_SPACING}),
    "pndm": ("PNDMScheduler", {**_SPACING}),
}
# diffusers-style names accepted wherever a sampler is named -> names in SCHEDULERS (tests check every target).
SCHEDULER_ALIASES = {"dpmsolver++": "dpm++", "dpmsolver": "dpm++", "euler_ancestral": "euler_a"}
SCHEDULER_CHOICES = sorted(SCHEDULERS) + sorted(SCHEDULER_ALIASES)  # for argparse ``choices``


def scheduler_name(name: str) -> str:
    """The cogdiff name of sampler ``name`` (an alias resolved); ValueError naming the choices otherwise."""
    name = SCHEDULER_ALIASES.get(name, name)
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    return name
