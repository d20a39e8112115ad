"""The machinery shared by every checker: cases, comparison, and a message that says what went wrong.

Example::

    import torch
    from mechlab.checks.core import Case, run_cases
    cases = [Case("3x3", (torch.ones(3, 3),)), Case("batch", (torch.randn(2, 4, 4),))]
    run_cases(lambda x: x * 2, lambda x: x + x, cases, name="double")   # passes
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


class CheckFailed(AssertionError):
    """The learner's function disagreed with the reference; the message names the case and the gap."""


@dataclass
class Case:
    """One input to try: a name a learner can read, positional and keyword arguments."""

    name: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


def compare_tensors(got: Any, want: Tensor, *, atol: float = 1e-5, rtol: float = 1e-4, what: str = "output") -> str:
    """Return "" when ``got`` matches ``want``, else a sentence describing the first mismatch."""
    if got is None:
        return f"{what} is None: did the function forget to `return`?"
    if not isinstance(got, Tensor):
        return f"{what} is a {type(got).__name__}, expected a torch.Tensor of shape {tuple(want.shape)}"
    if got.shape != want.shape:
        return f"{what} has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    if got.dtype == torch.bool or want.dtype == torch.bool:
        wrong = (got != want).nonzero()
        if wrong.numel():
            first = tuple(wrong[0].tolist())
            return (f"{what} differs at {len(wrong)} places, first at index {first}: "
                    f"got {got[first]}, expected {want[first]}")
        return ""
    g, w = got.detach().float().cpu(), want.detach().float().cpu()
    if torch.isnan(g).any() and not torch.isnan(w).any():
        return f"{what} contains NaN where the reference has none"
    close = torch.isclose(g, w, atol=atol, rtol=rtol, equal_nan=True)
    if not bool(close.all()):
        diff = (g - w).abs()
        idx = tuple(int(i) for i in torch.unravel_index(diff.nan_to_num(0).argmax(), diff.shape))
        return (f"{what} differs from the reference at {int((~close).sum())} of {close.numel()} entries; "
                f"largest gap {float(diff.nan_to_num(0).max()):.3g} at index {idx} "
                f"(got {float(g[idx]):.4g}, expected {float(w[idx]):.4g})")
    return ""


def run_cases(
    fn: Callable,
    reference: Callable,
    cases: Sequence[Case],
    *,
    name: str,
    compare: Callable[[Any, Any], str] | None = None,
    verbose: bool = True,
) -> None:
    """Run ``fn`` and ``reference`` on each case; raise :class:`CheckFailed` at the first disagreement.

    ``compare(got, want)`` returns "" for a match or a description of the mismatch; the default compares
    tensors with ``compare_tensors``.
    """
    compare = compare or (lambda got, want: compare_tensors(got, want))
    for case in cases:
        want = reference(*_clone(case.args), **_clone(case.kwargs))
        try:
            got = fn(*_clone(case.args), **_clone(case.kwargs))
        except NotImplementedError:
            raise CheckFailed(f"{name}: not implemented yet (the function still raises NotImplementedError).") from None
        except Exception as err:  # the learner's bug: report it with the case that triggered it
            raise CheckFailed(f"{name}: case {case.name!r} raised {type(err).__name__}: {err}") from err
        problem = compare(got, want)
        if problem:
            raise CheckFailed(f"{name}: case {case.name!r} failed: {problem}.")
    if verbose:
        print(f"{name}: passed {len(cases)} cases.")


def _clone(obj: Any) -> Any:
    """Copy tensors so an in-place edit in the learner's function cannot leak into the reference's input."""
    if isinstance(obj, Tensor):
        return obj.clone()
    if isinstance(obj, tuple):
        return tuple(_clone(x) for x in obj)
    if isinstance(obj, list):
        return [_clone(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    return obj
