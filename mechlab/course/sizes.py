"""How big a notebook's experiments are, chosen by the model and the device, and printed.

A notebook writes its sizes once, at full scale (what a GPU runtime runs), plus the cuts for a CPU::

    from mechlab.course.sizes import course_sizes
    size = course_sizes(model, full={"n_prompts": 16, "ig_steps": 16}, cpu={"n_prompts": 4, "ig_steps": 8},
                        ci={"n_prompts": 2})
    samples = make_ioi(size["n_prompts"], seed=0)

Three tiers:

- ``full``: the sizes as written. On a CUDA device, and for every model that is not a real-size hub model (the
  organism, tiny random models): those are fast anywhere, and the organism's committed outputs stay the same.
- ``cpu``: a real-size model (GPT-2 small, Gemma-2b, or a stand-in under their name) on the CPU: the ``cpu``
  cuts, so each notebook finishes in minutes on a 2-core machine.
- ``ci``: as ``cpu``, then the ``ci`` cuts on top; chosen by ``MECHLAB_SIZES=ci`` (CI's GPT-2 / Gemma code-path
  mode sets it). ``MECHLAB_SIZES=full`` or ``cpu`` forces that tier for a real-size model.

``course_sizes`` prints the tier, every size it cut (``full -> used``), and that a GPU runtime runs the full size.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

SIZES_ENV = "MECHLAB_SIZES"
TIERS = ("full", "cpu", "ci")
# where a model came from (ModelInfo.source) when it is a real-size model: a hub name, a stand-in under one
REAL_SIZE_SOURCES = ("hub",)


@dataclass(frozen=True)
class Sizes(Mapping):
    """The sizes a notebook runs at: ``size["n_prompts"]``; ``cut`` lists what differs from the full sizes."""

    tier: str  # "full", "cpu" or "ci"
    used: dict[str, int]  # what the notebook uses
    full: dict[str, int] = field(repr=False)  # what a GPU runtime uses
    reason: str = ""  # why this tier

    def __getitem__(self, key: str) -> int:
        if key not in self.used:
            raise KeyError(f"no size named {key!r}; this notebook's sizes are {sorted(self.used)}")
        return self.used[key]

    def __iter__(self):
        return iter(self.used)

    def __len__(self) -> int:
        return len(self.used)

    @property
    def cut(self) -> dict[str, tuple[int, int]]:
        """``{name: (full, used)}`` for each size smaller than the full one."""
        return {k: (self.full[k], v) for k, v in self.used.items() if v != self.full[k]}

    @property
    def is_cut(self) -> bool:
        return bool(self.cut)

    def __str__(self) -> str:
        if not self.is_cut:
            return f"mechlab sizes: full ({self.reason})"
        cuts = ", ".join(f"{k} {full} -> {used}" for k, (full, used) in self.cut.items())
        return (f"mechlab sizes: {self.tier} ({self.reason}), cut: {cuts}. A GPU runtime runs the full size "
                "(in Colab: Runtime > Change runtime type > T4 GPU).")


def size_tier(model) -> tuple[str, str]:
    """The tier for ``model`` on its device, and why (see the module docstring)."""
    info = getattr(model, "mechlab_info", None)
    if info is None:
        raise ValueError(f"{type(model).__name__} has no mechlab_info; load it with mechlab.core.loading.load_model "
                         "or course_model, which record what it is.")
    forced = os.environ.get(SIZES_ENV, "")
    if forced and forced not in TIERS:
        raise ValueError(f"{SIZES_ENV}={forced!r}; expected one of {TIERS} (or unset, to choose by device).")
    real = info.source.split(",")[0] in REAL_SIZE_SOURCES
    name = f"{info.name}{' (stand-in)' if getattr(info, 'standin', False) else ''}"
    if not real:
        return "full", f"{name} is small enough for any machine"
    if forced:
        return forced, f"{SIZES_ENV}={forced} for {name}"
    if str(info.device).startswith("cuda"):
        return "full", f"{name} on a GPU"
    return "cpu", f"{name} on the CPU"


def course_sizes(model, full: Mapping[str, int], *, cpu: Mapping[str, int] | None = None,
                 ci: Mapping[str, int] | None = None, verbose: bool = True) -> Sizes:
    """The sizes to run at: ``full``, with the ``cpu`` cuts on a CPU, and the ``ci`` cuts on top under
    ``MECHLAB_SIZES=ci``. Prints the choice (``verbose``). Cuts name only sizes that ``full`` has."""
    if not full or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in full.values()):
        raise ValueError(f"full={dict(full)!r}: expected a non-empty mapping of size names to positive ints.")
    for what, cuts in (("cpu", cpu), ("ci", ci)):
        unknown = sorted(set(cuts or {}) - set(full))
        if unknown:
            raise ValueError(f"{what} cuts {unknown} that full does not have (full has {sorted(full)}); name each cut "
                             "size in full too.")
        bad = {k: v for k, v in (cuts or {}).items() if not isinstance(v, int) or isinstance(v, bool) or v < 1}
        if bad:
            raise ValueError(f"{what}={bad!r}: every size must be a positive int.")
    tier, reason = size_tier(model)
    values = dict(full)
    if tier in ("cpu", "ci"):
        values.update(cpu or {})
    if tier == "ci":
        values.update(ci or {})
    sizes = Sizes(tier=tier, used=values, full=dict(full), reason=reason)
    if verbose:
        print(sizes)
    return sizes


__all__ = ["REAL_SIZE_SOURCES", "SIZES_ENV", "Sizes", "TIERS", "course_sizes", "size_tier"]
