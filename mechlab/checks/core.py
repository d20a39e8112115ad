"""The machinery shared by every checker: cases, comparison, and a message that says what went wrong.

Example::

    import torch
    from mechlab.checks.core import Case, run_cases
    cases = [Case("3x3", (torch.ones(3, 3),)), Case("batch", (torch.randn(2, 4, 4),))]
    run_cases(lambda x: x * 2, lambda x: x + x, cases, name="double")   # passes

What :func:`run_cases` does for every case (it never stops at the first failure):

- **The same objects.** The reference runs first, then the learner's function, on the *same* argument objects
  (no clones that would hide an edit). Every tensor in the arguments (inside tuples, lists and dicts too) and
  every parameter and buffer of an ``nn.Module`` argument (a ``TransformerBridge`` included) is snapshotted
  before and compared after: a function that modifies its inputs or the model's weights in place fails with a
  message naming the argument or weight, and the inputs are restored so that one bad attempt cannot poison the
  later cases or checks. Modules larger than ``_MODULE_SNAPSHOT_LIMIT`` elements are watched through their
  tensors' version counters only (an edit is reported, not undone).
- **Clean models.** Before each case every hook left on a model argument is removed (``reset_hooks()`` and the
  HookPoints' own hook dicts); a hook the learner's function leaves behind fails the case ("you left a hook on
  the model: use ``with model.hooks(...)``") and is removed.
- **Gradients** (``grad=True``): the reference and the learner run under ``torch.enable_grad()``, even if the
  notebook turned gradients off globally.
- **Named mistakes** (``mistakes={"the sign is flipped": negated(reference), ...}``): when cases fail, each
  mistake function (same signature as the reference, returning what that wrong version would return) is tried
  in order on the failing cases (targeted cases first, stopping at the first case where one matches), and the
  first whose output the learner's matches is named in the message. :func:`negated` builds the sign-flip one
  (it costs nothing: the reference's output is negated).
- **Targeted cases** (``Case(..., hint="is the 1/sqrt(d_head) scale there?")``): a failing case's hint is
  shown with its failure.
- **The report** leads with the most specific failure (an in-place edit or a leftover hook, then a failure
  that matched a named mistake, then an exception, then a failing case with a hint, then the first failing
  case), and lists every failing case's name and how many passed.

:func:`compare_tensors` refuses a floating-point answer where the reference is an integer tensor (token ids,
counts), and reports shape, NaN and value mismatches. A custom ``compare(got, want)`` returns "" for a match or
a sentence describing the mismatch.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


class CheckFailed(AssertionError):
    """The learner's function disagreed with the reference; the message names the case and the gap."""


@dataclass
class Case:
    """One input to try: a name a learner can read, positional and keyword arguments, and optionally the mistake
    this case was built to catch (shown when it fails)."""

    name: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    hint: str = ""


def compare_tensors(got: Any, want: Tensor, *, atol: float = 1e-5, rtol: float = 1e-4, what: str = "output") -> str:
    """Return "" when ``got`` matches ``want``, else a sentence describing the first mismatch."""
    if got is None:
        return f"{what} is None: did the function forget to `return`?"
    if not isinstance(got, Tensor):
        return f"{what} is a {type(got).__name__}, expected a torch.Tensor of shape {tuple(want.shape)}"
    if got.shape != want.shape:
        return f"{what} has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    if _is_integer(want) and not (_is_integer(got) or got.dtype == torch.bool):
        return (f"{what} has dtype {got.dtype}, expected an integer tensor ({want.dtype}): ids and counts are "
                f"integers; keep the integer tensor (e.g. `topk(...).indices`) instead of converting it to floats")
    if got.dtype == torch.bool or want.dtype == torch.bool:
        wrong = (got.cpu() != want.cpu()).nonzero()
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


def negated(reference: Callable) -> Callable:
    """A mistake function for ``run_cases(mistakes=...)``: the reference's output with every tensor negated."""

    def flipped(*args, **kwargs):
        return _map_tensors(reference(*args, **kwargs), lambda t: -t)

    flipped.negates_reference = True  # run_cases negates the output it already has instead of rerunning
    return flipped


@dataclass
class _Failure:
    case: Case
    problems: list[str]
    definite: bool = False  # an in-place edit or a leftover hook: certainly a mistake
    mistake: str = ""
    error: BaseException | None = None
    got: Any = None
    want: Any = None


def run_cases(
    fn: Callable,
    reference: Callable,
    cases: Sequence[Case],
    *,
    name: str,
    compare: Callable[[Any, Any], str] | None = None,
    verbose: bool = True,
    mistakes: Mapping[str, Callable] | None = None,
    grad: bool = False,
) -> None:
    """Run ``fn`` and ``reference`` on every case; raise :class:`CheckFailed` naming every failing case.

    ``compare(got, want)`` returns "" for a match or a description of the mismatch; the default compares
    tensors with ``compare_tensors``. ``mistakes`` maps a description of a likely mistake to a function with the
    reference's signature that returns what that mistake gives; ``grad=True`` runs under ``torch.enable_grad()``.
    See the module docstring for the in-place and hook checks.
    """
    compare = compare or (lambda got, want: compare_tensors(got, want))
    failures: list[_Failure] = []
    for case in cases:
        failure = _run_case(fn, reference, case, name, compare, mistakes or {}, grad)
        if failure is not None:
            failures.append(failure)
    if failures:
        _name_mistake(failures, compare, mistakes or {}, grad)
        raise CheckFailed(_report(name, failures, len(cases))) from failures[0].error
    if verbose:
        print(f"{name}: passed {len(cases)} cases.")


def _run_case(fn, reference, case: Case, name: str, compare, mistakes, grad: bool) -> _Failure | None:
    args, kwargs = case.args, case.kwargs
    labels = _argument_labels(reference, fn, args, kwargs)
    models = [(label, obj) for label, obj in _walk(args, kwargs, labels) if isinstance(obj, nn.Module)]
    for label, model in models:
        left = clear_hooks(model)
        if left:
            print(f"{name}: note: {label} had {_hook_text(left)} left on it from earlier code; removed. Add hooks "
                  "only inside `with model.hooks(...)` or `run_with_hooks` so that none survives.")
    snapshot = _Snapshot(args, kwargs, labels)
    scope = torch.enable_grad if grad else contextlib.nullcontext
    with scope():
        want = _clone(reference(*args, **kwargs))
    changed = snapshot.restore_changed()
    if changed:
        raise RuntimeError(f"{name}: the checker's reference modified {', '.join(changed)}; this is a bug in "
                           "mechlab, please report it.")
    before = {id(model): _torch_hook_keys(model) for _, model in models}
    problems: list[str] = []
    definite, error, got = False, None, None
    try:
        with scope():
            got = fn(*args, **kwargs)
    except NotImplementedError as err:
        snapshot.restore_changed()
        for _, model in models:
            clear_hooks(model)
        raise CheckFailed(f"{name}: not implemented yet (the function still raises NotImplementedError).") from err
    except Exception as err:  # the learner's bug: report it with the case that triggered it
        error = err
        problems.append(f"raised {type(err).__name__}: {err}")
    for label, model in models:
        left = clear_hooks(model, keep=before[id(model)])
        if left:
            definite = True
            problems.append(f"you left {_hook_text(left)} on {label}: add hooks only inside "
                            "`with model.hooks(...)` or `model.run_with_hooks(...)`, so that none survives the "
                            "function (removed now)")
    changed = snapshot.restore_changed()
    if changed:
        definite = True
        problems.append(f"the function modified {_join(changed)} in place; it must not modify its inputs "
                        f"({snapshot.restored_text()}). Work on a copy (`x.clone()`) or use out-of-place "
                        "operations (`x = x - m`, not `x -= m` or `x.sub_(m)`)")
    if error is None:
        problem = compare(got, want)
        if problem:
            problems.append(problem)
    if not problems:
        return None
    return _Failure(case, problems, definite, "", error, got, want)


def _name_mistake(failures: list[_Failure], compare, mistakes, grad: bool) -> None:
    """Try the named mistakes on the failing cases, targeted cases first, until one matches (each try costs a
    reference-like computation, so the search stops at the first case that names one)."""
    scope = torch.enable_grad if grad else contextlib.nullcontext
    for failure in sorted((f for f in failures if f.error is None), key=lambda f: not f.case.hint):
        args, kwargs = failure.case.args, failure.case.kwargs
        snapshot = _Snapshot(args, kwargs, {})
        for text, wrong in mistakes.items():
            try:
                if getattr(wrong, "negates_reference", False):
                    alt = _map_tensors(failure.want, lambda t: -t)
                else:
                    with scope():
                        alt = _clone(wrong(*args, **kwargs))
            except Exception:  # a mistake that cannot be computed on this case simply does not match
                continue
            finally:
                snapshot.restore_changed()
            if not compare(failure.got, alt):
                failure.mistake = text
                return


def _report(name: str, failures: list[_Failure], n_cases: int) -> str:
    def rank(f: _Failure) -> int:
        return 0 if f.definite else 1 if f.mistake else 2 if f.error is not None else 3 if f.case.hint else 4

    lead = min(failures, key=rank)  # min keeps the first of equal rank
    lines = [f"{name}: {len(failures)} of {n_cases} cases failed ({n_cases - len(failures)} passed).",
             f"Case {lead.case.name!r}: {'; '.join(lead.problems)}."]
    if lead.mistake:
        lines.append(f"Your output matches this mistake: {lead.mistake}.")
    elif lead.case.hint:
        lines.append(f"This case is there to catch: {lead.case.hint}")
    lines.append("Failing cases: " + ", ".join(repr(f.case.name) for f in failures) + ".")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# hooks


def clear_hooks(model: nn.Module, *, keep: set | None = None) -> list[str]:
    """Remove the hooks left on ``model``; return where they were (empty when it was clean).

    Removes every TransformerLens hook (``reset_hooks()``) and every torch hook on a HookPoint. With ``keep``
    (the hook keys taken earlier), torch hooks added on any other submodule since then are removed too, except the
    ones the libraries install for themselves (TL4 and transformers add some lazily on the first forward).
    """
    found = []
    names = _hook_point_names(model)
    for mod_name, mod in model.named_modules():
        is_hook_point = hasattr(mod, "fwd_hooks") and hasattr(mod, "bwd_hooks")
        for attr in _HOOK_DICTS:
            hooks = getattr(mod, attr, None)
            if not hooks:
                continue
            stale = [k for k in list(hooks) if is_hook_point or (
                keep is not None and (mod_name, attr, k) not in keep and not _library_hook(hooks[k]))]
            for k in stale:
                del hooks[k]
                for side in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                             "_forward_pre_hooks_with_kwargs"):
                    getattr(mod, side, {}).pop(k, None)
            if stale:
                found.append(names.get(id(mod), mod_name or "the model"))
        if is_hook_point:
            for attr in ("fwd_hooks", "bwd_hooks"):
                if getattr(mod, attr):
                    setattr(mod, attr, [])
    if hasattr(model, "reset_hooks"):
        model.reset_hooks()
    return sorted(set(found))


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_LIBRARIES = ("torch", "transformers", "transformer_lens", "accelerate", "mechlab")


def _library_hook(hook: Any) -> bool:
    """A hook function that a library defined (not the learner): judged by the module it was defined in."""
    func = getattr(hook, "func", hook)  # functools.partial
    module = getattr(func, "__module__", None) or ""
    return module.split(".")[0] in _LIBRARIES


def _torch_hook_keys(model: nn.Module) -> set:
    return {(mod_name, attr, k) for mod_name, mod in model.named_modules()
            for attr in _HOOK_DICTS for k in getattr(mod, attr, {})}


def _hook_point_names(model: nn.Module) -> dict[int, str]:
    names: dict[int, str] = {}
    for hook_name, point in getattr(model, "hook_dict", {}).items():
        names.setdefault(id(point), hook_name)
    return names


def _hook_text(where: list[str]) -> str:
    shown = ", ".join(where[:3]) + (f" and {len(where) - 3} more" if len(where) > 3 else "")
    return f"a hook ({shown})" if len(where) == 1 else f"hooks ({shown})"


# ---------------------------------------------------------------------------------------------------------
# in-place edits

_MODULE_SNAPSHOT_LIMIT = 200_000_000  # elements; above this a module is watched by version counters only


class _Snapshot:
    """Copies of every tensor the learner receives, to compare and restore after the call."""

    def __init__(self, args: tuple, kwargs: dict, labels: dict[int, str]):
        self.tensors: list[tuple[str, Tensor, Tensor | None, int]] = []
        self.containers: list[tuple[str, Any, Any]] = []
        self.unrestorable = False
        self.restored = False
        seen: set[int] = set()
        for label, obj in _walk(args, kwargs, labels):
            self._add(label, obj, seen)

    def _add(self, label: str, obj: Any, seen: set[int]) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, Tensor):
            self.tensors.append((label, obj, obj.detach().clone(), obj._version))
        elif isinstance(obj, nn.Module):
            named = list(obj.named_parameters(remove_duplicate=True)) + list(obj.named_buffers())
            small = sum(t.numel() for _, t in named) <= _MODULE_SNAPSHOT_LIMIT
            for pname, t in named:
                if id(t) not in seen:
                    seen.add(id(t))
                    copy = t.detach().clone() if small else None
                    self.tensors.append((f"{label}'s weight `{pname}`", t, copy, t._version))
        elif isinstance(obj, list | dict):
            self.containers.append((label, obj, list(obj) if isinstance(obj, list) else dict(obj)))

    def restore_changed(self) -> list[str]:
        """Labels of what changed since the snapshot; everything that can be restored is restored."""
        changed = []
        for i, (label, t, copy, version) in enumerate(self.tensors):
            if copy is None:
                if t._version != version:
                    changed.append(label)
                    self.unrestorable = True
                continue
            if _same(t, copy):
                continue
            changed.append(label)
            with torch.no_grad():
                if t.shape == copy.shape and t.dtype == copy.dtype:
                    t.copy_(copy)
                else:
                    t.data = copy.clone()
            self.tensors[i] = (label, t, copy, t._version)
            self.restored = True
        for label, obj, copy in self.containers:
            if isinstance(obj, list) and (len(obj) != len(copy) or any(a is not b for a, b in zip(obj, copy,
                                                                                                   strict=True))):
                changed.append(label)
                obj[:] = copy
                self.restored = True
            elif isinstance(obj, dict) and (obj.keys() != copy.keys() or any(obj[k] is not copy[k] for k in copy)):
                changed.append(label)
                obj.clear()
                obj.update(copy)
                self.restored = True
        return changed

    def restored_text(self) -> str:
        if self.unrestorable:
            return "the model is too large to keep a copy, so reload it before going on"
        return "they have been restored for the next cases"


def _same(t: Tensor, copy: Tensor) -> bool:
    if t.shape != copy.shape or t.dtype != copy.dtype:
        return False
    if t.is_floating_point() or t.is_complex():
        return bool(((t == copy) | (torch.isnan(t) & torch.isnan(copy))).all())
    return torch.equal(t, copy)


def _argument_labels(reference: Callable, fn: Callable, args: tuple, kwargs: dict) -> dict[int, str]:
    """Position -> "argument `W_O`" using the reference's (or else the learner's) parameter names."""
    for f in (reference, fn):
        try:
            params = [p for p in inspect.signature(f).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            continue
        if len(params) >= len(args):
            return {i: f"argument `{params[i].name}`" for i in range(len(args))}
    return {i: f"argument {i + 1}" for i in range(len(args))}


def _walk(args: tuple, kwargs: dict, labels: dict[int, str]):
    """(label, object) for every argument and everything inside its tuples, lists and dicts."""
    stack = [(labels.get(i, f"argument {i + 1}"), a) for i, a in enumerate(args)]
    stack += [(f"argument `{k}`", v) for k, v in kwargs.items()]
    while stack:
        label, obj = stack.pop(0)
        yield label, obj
        if isinstance(obj, tuple | list):
            stack.extend((f"{label}[{i}]", x) for i, x in enumerate(obj))
        elif isinstance(obj, dict):
            stack.extend((f"{label}[{k!r}]", v) for k, v in obj.items())


def _join(items: list[str]) -> str:
    shown = items[:4]
    text = ", ".join(shown)
    return text + (f" and {len(items) - 4} more" if len(items) > 4 else "")


def _is_integer(t: Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex()) and t.dtype != torch.bool


def _map_tensors(obj: Any, f: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(obj, Tensor):
        return f(obj)
    if isinstance(obj, tuple | list):
        return type(obj)(_map_tensors(x, f) for x in obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, f) for k, v in obj.items()}
    if isinstance(obj, float | int) and not isinstance(obj, bool):
        return f(torch.tensor(obj)).item()
    return obj


def _clone(obj: Any) -> Any:
    """Copy tensors, so that a later in-place edit of an input cannot change a stored output that views it."""
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    if isinstance(obj, tuple):
        return tuple(_clone(x) for x in obj)
    if isinstance(obj, list):
        return [_clone(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    return obj




# ---------------------------------------------------------------------------------------------------------
# asserts about learned behaviour


SKIPPED_ON_STANDIN: list[str] = []  # names of the learned-behaviour checks skipped in this process


def expect_learned(model: nn.Module, name: str, ok: bool, message: str = "") -> bool:
    """Assert a learned behaviour of the model (IOI answered, a name mover costs direct effect), by ``name``.

    On a stand-in (``model.mechlab_info.standin``: random weights served under a real model's name, the CI mode
    that runs the GPT-2 / Gemma code paths offline) the behaviour cannot be there, so the assert is skipped and
    ``skipped on a stand-in model: <name>`` is printed (and kept in ``SKIPPED_ON_STANDIN``). Everywhere else a false
    ``ok`` raises ``AssertionError(f"{name}: {message}")``. Returns ``ok``.
    """
    info = getattr(model, "mechlab_info", None)
    if info is not None and getattr(info, "standin", False):
        if name not in SKIPPED_ON_STANDIN:
            SKIPPED_ON_STANDIN.append(name)
        print(f"skipped on a stand-in model: {name}")
        return bool(ok)
    if not ok:
        raise AssertionError(f"{name}: {message}" if message else name)
    return True


__all__ = ["Case", "CheckFailed", "SKIPPED_ON_STANDIN", "clear_hooks", "compare_tensors", "expect_learned", "negated",
           "run_cases"]
