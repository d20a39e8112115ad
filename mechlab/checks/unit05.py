"""Checkers for unit 05 (activation patching and attribution patching), each against mechlab's reference.

The learner writes, for the head outputs ``z`` of one layer:

    atp_heads(model, clean, corrupted, metric, layer, direction)  -> Float[Tensor, "head"]
        AtP estimate per head (summed over positions, mean over prompts) of patching the target run's ``z``
        into the baseline run: noising = corrupted into clean (gradient on the clean run), denoising = clean
        into corrupted (gradient on the corrupted run).
    ig_heads(model, clean, corrupted, metric, layer, steps)       -> Float[Tensor, "head"]
        The same estimate (noising) with integrated gradients: the layer's ``z`` moves from the clean to the
        corrupted value, gradients averaged with the trapezoidal rule (``mechlab.methods.attribution.ig_alphas``).

Each check runs every case on tiny random-init GPT-2-like and Gemma-like models, under ``torch.enable_grad()``, on
the checker's own cached models (hooks cleared before each case, weights watched for in-place edits), and names
the mistake it recognises: a flipped sign, noising and denoising swapped, the gradient on the wrong run and, for
IG, the integration rule (uniform weights, midpoint, steps + 1 points, Riemann sums, plain AtP), told apart by a
strongly curved metric (:func:`curved_metric`), or an interpolation that never reaches the model.

Example::

    from mechlab.checks import unit05
    unit05.check_atp_heads(atp_heads)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, lru_cache, wraps

import torch
from torch import Tensor

from mechlab.checks.core import Case, compare_tensors, negated, run_cases
from mechlab.core.activations import hook_name, n_heads_for
from mechlab.core.cpu_math import one_thread
from mechlab.core.loading import load_model
from mechlab.core.runs import Metric, cache_acts, logit_diff_metric
from mechlab.core.tokens import logit_diff
from mechlab.methods.attribution import attribution_patching, ig_alphas, integrated_gradients
from mechlab.methods.patching import activation_patching


def _on_one_thread(check: Callable) -> Callable:
    """Run a check on one torch thread (the setting restored after). The checkers' models are 2 layers of width
    64: extra threads only add synchronisation, and on a busy 2-core machine they made these checks 4-10x slower
    (the unit's checker tests: 99 s of CPU with the default threads, 18 s on one)."""

    @wraps(check)
    def on_one(fn: Callable) -> None:
        with one_thread():
            check(fn)

    return on_one


@lru_cache(maxsize=2)
def _model(name: str):
    return load_model(name, seed=3, verbose=False)


def _prompts(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(5, 250, (2, 6), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1] = torch.randint(5, 250, (2,), generator=g)
    corrupted[:, 3] = torch.randint(5, 250, (2,), generator=g)
    metric = logit_diff_metric(torch.randint(5, 250, (2,), generator=g), torch.randint(5, 250, (2,), generator=g))
    return clean, corrupted, metric


@lru_cache(maxsize=2)
def _cases(with_direction: bool) -> tuple[Case, ...]:
    """Built once per session; ``run_cases`` restores whatever a learner edits in place, so sharing is safe."""
    cases = []
    for name, seed in (("tiny-gpt2", 0), ("tiny-gemma", 1)):
        model = _model(name)
        clean, corrupted, metric = _prompts(model, seed)
        for layer in range(model.cfg.n_layers):
            for direction in (("noising", "denoising") if with_direction else ("noising",)):
                args = (model, clean, corrupted, metric, layer)
                label = f"{name}, layer {layer}" + (f", {direction}" if with_direction else "")
                cases.append(Case(label, args + ((direction,) if with_direction else (4,))))
    return tuple(cases)


def _z_of(model, tokens, layer: int) -> Tensor:
    cache, _ = cache_acts(model, tokens, {hook_name("z", layer)})
    return cache[hook_name("z", layer)]


@torch.no_grad()
def curved_metric(model, clean, corrupted, metric: Metric, layer: int, sharpness: float = 4.0) -> Metric:
    """``exp(sharpness * u)`` with ``u`` the metric rescaled per prompt to 0 on the clean run and 1 with layer
    ``layer``'s ``z`` patched to the corrupted value: along the IG path the gradient then grows like
    ``exp(sharpness * alpha)``, so integration rules that agree on a straight line (trapezoid, uniform weights,
    midpoint, one more point) give clearly different answers."""
    name = hook_name("z", layer)
    z_corr = _z_of(model, corrupted, layer)
    low = metric(model(clean)).float()
    high = metric(model.run_with_hooks(clean, fwd_hooks=[(name, lambda z, hook: z_corr)])).float()
    if bool(((high - low).abs() < 1e-3).any()):
        raise ValueError(f"curved_metric: patching layer {layer} moves the metric by {(high - low).tolist()}, too "
                         "little to rescale; choose other prompts.")

    def curved(logits):
        return torch.exp(sharpness * (metric(logits).float() - low) / (high - low))

    return curved


@lru_cache(maxsize=1)
def _curved_cases() -> tuple[Case, ...]:
    cases = []
    for name, seed in (("tiny-gpt2", 0), ("tiny-gemma", 1)):
        model = _model(name)
        clean, corrupted, metric = _prompts(model, seed)
        for layer in range(model.cfg.n_layers):
            cases.append(Case(f"{name}, layer {layer}, strongly curved metric exp(4 u)",
                              (model, clean, corrupted, curved_metric(model, clean, corrupted, metric, layer),
                               layer, 4),
                              hint="the integration rule: ig_alphas(steps) gives the trapezoid's alphas and weights"))
    return tuple(cases)


def _per_case(fn: Callable) -> Callable:
    """``fn`` with its output kept per argument objects. The checker's cases are built once per session (the same
    model, token and metric objects every time), and ``run_cases`` runs the reference and the mistakes only on
    weights it has restored, so the reference's and each mistake's output for a case never change: compute them
    once. The arguments are kept alive with the output, so that an id is never reused for another object.
    run_cases clones what it gets, so the kept output is handed out as it is."""
    store: dict = {}

    @wraps(fn)  # keeps the signature: run_cases names the arguments after the reference's parameters
    def kept(*args):
        key = tuple(a if isinstance(a, int | float | str) or a is None else id(a) for a in args)
        if key not in store:
            out = fn(*args)
            store[key] = (args, out.detach() if isinstance(out, Tensor) else out)
        return store[key][1]

    return kept


def _lazy(thunk: Callable[[], Tensor]) -> Callable[[], Tensor]:
    """A costly alternative, computed on the first mismatch that needs it and then kept (with ``_per_case``)."""
    return cache(thunk)


def _kept_mistakes(mistakes: dict[str, Callable]) -> dict[str, Callable]:
    return {text: f if getattr(f, "negates_reference", False) else _per_case(f) for text, f in mistakes.items()}


def _compare(got, want) -> str:
    # tight enough that a gradient taken on the wrong run (a few % off on these models) fails
    return compare_tensors(got, want, atol=1e-6, rtol=2e-3, what="per-head estimate")


def path_attribution(model, tokens, z_from, z_to, metric: Metric, layer: int,
                     points: list[tuple[float, float]]) -> Tensor:
    """``(z_to - z_from) . sum_k w_k grad metric(z_from + a_k (z_to - z_from))`` per head, with layer ``layer``'s
    ``z`` set to the path point on the run of ``tokens``; summed over positions, mean over prompts: [head].

    An independent IG/AtP for any rule: ``points`` = [(alpha, weight), ...]. It builds the named mistakes."""
    name = hook_name("z", layer)
    batch = tokens.shape[0]
    alphas = torch.tensor([a for a, _ in points], device=z_from.device)
    weights = torch.tensor([w for _, w in points], device=z_from.device)
    diff = (z_to - z_from).float()
    with torch.enable_grad():
        path = (z_from.float()[None] + alphas[:, None, None, None, None] * diff[None]).flatten(0, 1)
        path = path.detach().requires_grad_(True)
        logits = model.run_with_hooks(tokens.repeat(len(points), 1),
                                      fwd_hooks=[(name, lambda z, hook: path.to(z.dtype))])
        values = torch.cat([metric(part) for part in logits.split(batch)])
        (grad,) = torch.autograd.grad(values.sum(), path)
    avg = torch.einsum("s,sb...->b...", weights, grad.view(len(points), batch, *grad.shape[1:]))
    return (diff * avg).sum(-1).sum(1).mean(0).detach()


def reference_atp_heads(model, clean, corrupted, metric, layer: int, direction: str) -> torch.Tensor:
    """mechlab's AtP on ``z`` at ``layer``, summed over positions: shape [head]."""

    res = attribution_patching(model, clean, corrupted, metric, kinds=["z"], direction=direction, layers=[layer])
    return res["z"].values.sum(-1)


def reference_ig_heads(model, clean, corrupted, metric, layer: int, steps: int) -> torch.Tensor:
    """mechlab's layer-wise IG on ``z`` at ``layer`` (noising), summed over positions: shape [head]."""

    res = integrated_gradients(model, clean, corrupted, metric, kind="z", steps=steps, layers=[layer],
                               progress=False)
    return res.values.sum(-1)


def _other(direction: str) -> str:
    return "denoising" if direction == "noising" else "noising"


def _atp_on_target(model, clean, corrupted, metric, layer, direction):
    base, target = (clean, corrupted) if direction == "noising" else (corrupted, clean)
    z_base, z_target = _z_of(model, base, layer), _z_of(model, target, layer)
    return path_attribution(model, target, z_base, z_target, metric, layer, [(1.0, 1.0)])


ATP_MISTAKES = {
    "the sign is flipped (target minus baseline, times the gradient: noising effects of important heads come out "
    "negative)": negated(reference_atp_heads),
    "noising and denoising are swapped: you computed the other direction (noising patches corrupted into the clean "
    "run, gradient on the clean run; denoising the reverse)":
        lambda m, c, r, f, layer, d: reference_atp_heads(m, c, r, f, layer, _other(d)),
    "the gradient was taken on the target run instead of the baseline run (the run being patched)": _atp_on_target,
}


def _ig_rule(points_of: Callable[[int], list[tuple[float, float]]]) -> Callable:
    def ig(model, clean, corrupted, metric, layer, steps):
        z_clean, z_corr = _z_of(model, clean, layer), _z_of(model, corrupted, layer)
        return path_attribution(model, clean, z_clean, z_corr, metric, layer, points_of(steps))

    return ig


def _zeros(model, clean, corrupted, metric, layer, steps):
    return torch.zeros(model.cfg.n_heads)


IG_MISTAKES = {
    # integrating the same straight path backwards (from the corrupted z to the clean z) gives exactly this too
    "the sign is flipped (or the path runs from the corrupted z to the clean z, which is the same)":
        negated(reference_ig_heads),
    "noising and denoising are swapped: the path runs on the corrupted run (denoising); this exercise is noising, "
    "the path on the clean run":
        lambda m, c, r, f, layer, steps: integrated_gradients(m, c, r, f, kind="z", steps=steps, layers=[layer],
                                                              direction="denoising", progress=False).values.sum(-1),
    "uniform weights 1/steps on the trapezoid's alphas: the trapezoidal rule gives the two end points half weight":
        _ig_rule(lambda n: [(a, 1.0 / n) for a, _ in ig_alphas(n)]),
    "the midpoint rule (alphas (k + 0.5) / steps): use the trapezoid's alphas k / (steps - 1), ig_alphas(steps)":
        _ig_rule(lambda n: [((k + 0.5) / n, 1.0 / n) for k in range(n)]),
    "steps + 1 points: ig_alphas(steps) already includes both end points":
        _ig_rule(lambda n: ig_alphas(n + 1)),
    "a left Riemann sum (alphas k / steps for k < steps): alpha = 1 is never reached":
        _ig_rule(lambda n: [(k / n, 1.0 / n) for k in range(n)]),
    "a right Riemann sum (alphas k / steps for k = 1..steps): alpha = 0 is skipped":
        _ig_rule(lambda n: [(k / n, 1.0 / n) for k in range(1, n + 1)]),
    "plain AtP: only the gradient at alpha = 0, no integration": _ig_rule(lambda n: [(0.0, 1.0)]),
    "all zeros: the interpolated z never reaches the model (a hook must *return* the new activation)": _zeros,
}


_ATP_KEPT, _ATP_MISTAKES_KEPT = _per_case(reference_atp_heads), _kept_mistakes(ATP_MISTAKES)
_IG_KEPT, _IG_MISTAKES_KEPT = _per_case(reference_ig_heads), _kept_mistakes(IG_MISTAKES)


@_on_one_thread
def check_atp_heads(fn: Callable) -> None:
    """``fn(model, clean, corrupted, metric, layer, direction) -> [head]`` against mechlab's AtP."""
    run_cases(fn, _ATP_KEPT, _cases(with_direction=True), name="atp_heads", compare=_compare,
              mistakes=_ATP_MISTAKES_KEPT, grad=True)


@_on_one_thread
def check_ig_heads(fn: Callable) -> None:
    """``fn(model, clean, corrupted, metric, layer, steps) -> [head]`` against mechlab's IG (noising, steps=4), on
    the logit difference and on a strongly curved metric that separates the integration rules."""
    run_cases(fn, _IG_KEPT, _cases(with_direction=False) + _curved_cases(), name="ig_heads",
              compare=_compare, mistakes=_IG_MISTAKES_KEPT, grad=True)


__all__ = ["ATP_MISTAKES", "IG_MISTAKES", "check_atp_heads", "check_ig_heads", "curved_metric", "path_attribution",
           "reference_atp_heads", "reference_ig_heads"]


# ---------------------------------------------------------------------------------------------------------
# exact activation patching by hand (the section before AtP)
#
# The learner writes, with results in the metric's unit (mean over prompts of metric(patched) - metric(baseline)):
#
#     patching_hook(source, pos=None, head=None) -> hook        writes source's (pos, head) slice into the run
#     resid_pre_patching(model, clean, corrupted, metric, direction)          -> [layer, pos]
#     head_patching(model, clean, corrupted, metric, kind, direction)         -> [layer, head]  (kind z/q/k/v)
#     head_position_patching(model, clean, corrupted, metric, direction)      -> [layer, head, pos]  (z)
#     pattern_patching(model, clean, corrupted, metric, direction)            -> [layer, head]  (hook_pattern)
#     calibrated_metric(logits, answer, wrong, clean_value, corrupted_value)  -> [batch]  (0 corrupted, 1 clean)
#
# Each check compares with mechlab's reference and, on a mismatch, tries the likely mistakes one by one and names
# the first that reproduces the learner's numbers: a sign flip, noising and denoising swapped, an off-by-one
# position, a hook that returns nothing, an in-place edit of a cached tensor, the first position read instead of
# the last, and a few more.


_PATCH_TOL = {"atol": 1e-5, "rtol": 1e-3}


def _same(got, want) -> bool:
    return isinstance(got, torch.Tensor) and got.shape == want.shape and compare_tensors(got, want, **_PATCH_TOL) == ""


def _name_the_mistake(got, want: dict, what: str) -> str:
    """"" when ``got`` matches ``want["value"]``; else the first of ``want["mistakes"]`` (message -> tensor) that
    reproduces ``got``, or the plain mismatch followed by the usual suspects."""
    problem = compare_tensors(got, want["value"], **_PATCH_TOL, what=what)
    if not problem:
        return ""
    if not isinstance(got, torch.Tensor) or got.shape != want["value"].shape:
        return problem
    for message, value in want["mistakes"].items():
        value = value() if callable(value) else value  # costly alternatives are computed only on a mismatch
        if value is not None and _same(got, value):
            return f"{problem}. Your numbers match {message}"
    partial = want.get("partial", {})
    for message, (index, value) in partial.items():
        if _same(got[index], value) and not _same(got, want["value"]):
            return f"{problem}. Your numbers match {message}"
    return problem + ". Check the sign, the direction (which run is patched into which), the positions and heads"


def _runs(model, clean, corrupted, direction):
    """(baseline tokens, source tokens) of a direction."""
    if direction not in ("noising", "denoising"):
        raise ValueError(f"direction={direction!r}; expected 'noising' or 'denoising'.")
    return (clean, corrupted) if direction == "noising" else (corrupted, clean)


def _other(direction: str) -> str:
    return "denoising" if direction == "noising" else "noising"


def _shifted(want: torch.Tensor, dim: int) -> dict:
    """Off-by-one views: the learner's entries [.., 1:] equal the reference's [.., :-1] (or the reverse)."""
    n = want.shape[dim]
    late, early = [slice(None)] * want.ndim, [slice(None)] * want.ndim
    late[dim], early[dim] = slice(1, n), slice(0, n - 1)
    return {
        "the reference shifted by one position (an off-by-one: the patch went to position p - 1, or the result "
        "to p + 1; `range(1, n_pos + 1)`, `pos - 1` or `tokens[:, 1:]`?)": (tuple(late), want[tuple(early)]),
        "the reference shifted by one position the other way (an off-by-one: the patch went to position p + 1)":
            (tuple(early), want[tuple(late)]),
    }


def _mean_metric(model, tokens, metric, hooks=()) -> torch.Tensor:
    with torch.no_grad():
        return metric(model.run_with_hooks(tokens, fwd_hooks=list(hooks))).float().mean()


# --- the patching hook


def reference_patching_hook(source: torch.Tensor, pos: int | None = None, head: int | None = None):
    """A hook that returns a copy of the activation with ``source``'s ``[:, pos]`` (and ``head``) slice written in."""

    def hook(act, hook):
        out = act.clone()
        p = slice(None) if pos is None else pos
        if head is None:
            out[:, p] = source[:, p].to(out.dtype)
        else:
            out[:, p, head] = source[:, p, head].to(out.dtype)
        return out

    return hook


@lru_cache(maxsize=1)
def _hook_cases() -> tuple[Case, ...]:
    cases = []
    for name, seed in (("tiny-gpt2", 0), ("tiny-gemma", 1)):
        model = _model(name)
        clean, corrupted, _ = _prompts(model, seed)
        for kind, layer, pos, head in (("resid_pre", 1, 3, None), ("z", 0, 1, 2), ("q", 1, 3, 1), ("z", 1, None, 0)):
            src_name = hook_name(kind, layer)
            _, cache = model.run_with_cache(corrupted, names_filter=lambda n, s=src_name: n == s)
            label = f"{name}, {kind} layer {layer}, pos {pos}, head {head}"
            cases.append(Case(label, (model, clean, src_name, cache[src_name].detach(), pos, head)))
    return tuple(cases)


def _logits_with(model, tokens, name, hook) -> torch.Tensor:
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=[(name, hook)]).detach()


@_per_case
def _hook_reference(model, tokens, name, source, pos, head) -> dict:
    want = _logits_with(model, tokens, name, reference_patching_hook(source, pos, head))
    n_pos, mistakes = tokens.shape[1], {}
    with torch.no_grad():
        mistakes["the unpatched run: the patch never reached the model. Does your hook `return` the new activation? "
                 "Rebinding the argument (`act = source`) and returning nothing is a silent no-op"] = model(tokens)
    if pos is not None:
        for p, side in ((pos - 1, "p - 1"), (pos + 1, "p + 1")):
            if 0 <= p < n_pos:
                mistakes[f"a patch at position {side} (an off-by-one position)"] = _lazy(lambda p=p: _logits_with(
                    model, tokens, name, reference_patching_hook(source, p, head)))
        mistakes["a patch at every position: index the position axis (act[:, pos]) as well"] = _lazy(
            lambda: _logits_with(model, tokens, name, reference_patching_hook(source, None, head)))
    if head is not None:
        mistakes["a patch of every head at that position: index the head axis too (act[:, pos, head])"] = \
            _lazy(lambda: _logits_with(model, tokens, name, reference_patching_hook(source, pos, None)))
    return {"value": want, "mistakes": mistakes}


@_on_one_thread
def check_patching_hook(fn: Callable) -> None:
    """``fn(source, pos=None, head=None) -> hook``: the hook writes ``source``'s slice into the run it is on."""

    def run(model, tokens, name, source, pos, head):
        before = source.clone()
        hook = fn(source, pos, head)
        if not callable(hook):
            raise TypeError(f"patching_hook returned {type(hook).__name__}; it should return the hook function "
                            "itself, `hook(act, hook) -> act`")
        logits = _logits_with(model, tokens, name, hook)
        if not torch.equal(before, source):
            return "edited"
        return logits

    def compare(got, want):
        if isinstance(got, str) and got == "edited":
            return ("your hook changed the cached source tensor (an in-place edit of a cached tensor): every later "
                    "patch would read the edited values. Write into a copy of the run's activation (act.clone()) "
                    "and never assign into the cache")
        return _name_the_mistake(got, want, "logits of the patched run")

    run_cases(run, _hook_reference, _hook_cases(), name="patching_hook", compare=compare)


# --- resid_pre per layer x position


def reference_resid_pre_patching(model, clean, corrupted, metric, direction: str = "noising") -> torch.Tensor:
    """Exact patching of ``resid_pre`` per (layer, position): [layer, pos], mean metric(patched) - mean metric(base)."""
    return activation_patching(model, clean, corrupted, metric, kind="resid_pre", direction=direction, effect=True,
                               progress=False).values


def _cumulative_resid_pre(model, clean, corrupted, metric, direction) -> torch.Tensor:
    """The in-place bug: the patched tensor is the cache itself, so patches accumulate over positions."""
    base, src = _runs(model, clean, corrupted, direction)
    names = [hook_name("resid_pre", layer) for layer in range(model.cfg.n_layers)]
    _, base_cache = model.run_with_cache(base, names_filter=lambda n: n in names)
    _, src_cache = model.run_with_cache(src, names_filter=lambda n: n in names)
    m_base = _mean_metric(model, base, metric)
    out = torch.zeros(model.cfg.n_layers, base.shape[1])
    for layer, name in enumerate(names):
        edited = base_cache[name].clone()
        for pos in range(base.shape[1]):
            edited[:, pos] = src_cache[name][:, pos]
            snapshot = edited.clone()
            out[layer, pos] = _mean_metric(model, base, metric, [(name, lambda a, hook, e=snapshot: e)]) - m_base
    return out


@lru_cache(maxsize=1)
def _direction_cases() -> tuple[Case, ...]:
    cases = []  # one direction per model: a swap is caught on either, and the checks stay fast
    for name, seed, direction in (("tiny-gpt2", 0, "noising"), ("tiny-gemma", 1, "denoising")):
        model = _model(name)
        clean, corrupted, metric = _prompts(model, seed)
        cases.append(Case(f"{name}, {direction}", (model, clean, corrupted, metric, direction)))
    return tuple(cases)


def _common_mistakes(want, other, baseline_mean) -> dict:
    """``other`` is a thunk: the other direction's reference, computed only when the first guess fails."""
    return {
        "the reference with its sign flipped (a sign flip: baseline - patched instead of patched - baseline)": -want,
        "the other direction (noising and denoising swapped: noising runs the clean prompts with the corrupted "
        "run's activation written in; denoising the reverse)": other,
        "zero everywhere: no patch reached the model. Does your hook `return` the patched activation?":
            torch.zeros_like(want),
        "the patched metric itself, not its change: subtract the baseline run's mean metric": want + baseline_mean,
    }


@_per_case
def _resid_reference(model, clean, corrupted, metric, direction) -> dict:
    want = reference_resid_pre_patching(model, clean, corrupted, metric, direction)
    other = _lazy(lambda: reference_resid_pre_patching(model, clean, corrupted, metric, _other(direction)))
    base, _ = _runs(model, clean, corrupted, direction)
    mistakes = _common_mistakes(want, other, _mean_metric(model, base, metric))
    mistakes["patches that accumulate over positions (an in-place edit of a cached tensor: the activation your "
             "hook writes into is the cache itself, so each patch keeps the earlier ones; clone it first)"] = \
        _lazy(lambda: _cumulative_resid_pre(model, clean, corrupted, metric, direction))
    return {"value": want, "mistakes": mistakes, "partial": _shifted(want, 1)}


@_on_one_thread
def check_resid_pre_patching(fn: Callable) -> None:
    """``fn(model, clean, corrupted, metric, direction) -> [layer, pos]`` against mechlab's exact patching."""
    run_cases(fn, _resid_reference, _direction_cases(), name="resid_pre_patching",
              compare=lambda got, want: _name_the_mistake(got, want, "layer x position effect"))


# --- each head over all positions (z, q, k, v)


def reference_head_patching(model, clean, corrupted, metric, kind: str = "z", direction: str = "noising"):
    """Exact patching of each head's ``kind`` at every position at once: [layer, head] (K/V heads for k, v)."""
    res = activation_patching(model, clean, corrupted, metric, kind=kind, direction=direction, per_position=False,
                              effect=True, progress=False)
    return res.values.view(model.cfg.n_layers, n_heads_for(model, kind))


@lru_cache(maxsize=1)
def _head_cases() -> tuple[Case, ...]:
    cases = []
    for name, seed in (("tiny-gpt2", 0), ("tiny-gemma", 1)):
        model = _model(name)
        clean, corrupted, metric = _prompts(model, seed)
        combos = ((("z", "noising"), ("k", "denoising")) if name == "tiny-gpt2"
                  else (("q", "denoising"), ("v", "noising")))
        for kind, direction in combos:
            cases.append(Case(f"{name}, {kind}, {direction}", (model, clean, corrupted, metric, kind, direction)))
    return tuple(cases)


def _whole_layer(model, clean, corrupted, metric, kind, direction) -> torch.Tensor:
    base, src = _runs(model, clean, corrupted, direction)
    n = n_heads_for(model, kind)
    out = torch.zeros(model.cfg.n_layers, n)
    m_base = _mean_metric(model, base, metric)
    for layer in range(model.cfg.n_layers):
        name = hook_name(kind, layer)
        _, cache = model.run_with_cache(src, names_filter=lambda x, s=name: x == s)
        out[layer] = _mean_metric(model, base, metric, [(name, lambda a, hook, c=cache[name]: c)]) - m_base
    return out


@_per_case
def _head_reference(model, clean, corrupted, metric, kind, direction) -> dict:
    want = reference_head_patching(model, clean, corrupted, metric, kind, direction)
    other = _lazy(lambda: reference_head_patching(model, clean, corrupted, metric, kind, _other(direction)))
    base, _ = _runs(model, clean, corrupted, direction)
    mistakes = _common_mistakes(want, other, _mean_metric(model, base, metric))
    mistakes["the whole layer patched for every head (index the head axis: act[:, :, head], the axes of "
             f"hook_{kind} are [batch, pos, head, d_head])"] = _lazy(
        lambda: _whole_layer(model, clean, corrupted, metric, kind, direction))
    partial = {"the reference shifted by one head (an off-by-one on the head index)":
               ((slice(None), slice(1, None)), want[:, :-1])} if want.shape[1] > 1 else {}
    return {"value": want, "mistakes": mistakes, "partial": partial}


@_on_one_thread
def check_head_patching(fn: Callable) -> None:
    """``fn(model, clean, corrupted, metric, kind, direction) -> [layer, head]`` for kind in z, q, k, v."""
    run_cases(fn, _head_reference, _head_cases(), name="head_patching",
              compare=lambda got, want: _name_the_mistake(got, want, "per-head effect"))


# --- each head per position (z)


def reference_head_position_patching(model, clean, corrupted, metric, direction: str = "noising") -> torch.Tensor:
    """Exact patching of each head's ``z`` at one position at a time: [layer, head, pos]."""
    res = activation_patching(model, clean, corrupted, metric, kind="z", direction=direction, effect=True,
                              progress=False)
    return res.values.view(model.cfg.n_layers, model.cfg.n_heads, clean.shape[1])


@_per_case
def _head_position_reference(model, clean, corrupted, metric, direction) -> dict:
    want = reference_head_position_patching(model, clean, corrupted, metric, direction)
    other = _lazy(lambda: reference_head_position_patching(model, clean, corrupted, metric, _other(direction)))
    base, _ = _runs(model, clean, corrupted, direction)
    return {"value": want, "mistakes": _common_mistakes(want, other, _mean_metric(model, base, metric)),
            "partial": _shifted(want, 2)}


@_on_one_thread
def check_head_position_patching(fn: Callable) -> None:
    """``fn(model, clean, corrupted, metric, direction) -> [layer, head, pos]`` (each head's z, one position)."""
    run_cases(fn, _head_position_reference, _direction_cases(), name="head_position_patching",
              compare=lambda got, want: _name_the_mistake(got, want, "layer x head x position effect"))


# --- the attention pattern per head


def _pattern_loop(model, clean, corrupted, metric, direction, axis: int = 1) -> torch.Tensor:
    """Patch each head's pattern [batch, head, q, k] by hand; ``axis=2`` is the wrong-axis mistake (a query row)."""
    base, src = _runs(model, clean, corrupted, direction)
    names = [hook_name("pattern", layer) for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(src, names_filter=lambda n: n in names)
    m_base = _mean_metric(model, base, metric)
    n_pos = base.shape[1]
    out = torch.full((model.cfg.n_layers, model.cfg.n_heads), float("nan"))
    for layer, name in enumerate(names):
        for head in range(model.cfg.n_heads):
            if axis == 2 and head >= n_pos:
                continue

            def hook(pattern, hook, src=cache[name], h=head):
                out_p = pattern.clone()
                if axis == 1:
                    out_p[:, h] = src[:, h]
                else:
                    out_p[:, :, h] = src[:, :, h]
                return out_p

            out[layer, head] = _mean_metric(model, base, metric, [(name, hook)]) - m_base
    return out


def reference_pattern_patching(model, clean, corrupted, metric, direction: str = "noising") -> torch.Tensor:
    """Exact patching of each head's attention pattern (every query position): [layer, head]."""
    return _pattern_loop(model, clean, corrupted, metric, direction)


@_per_case
def _pattern_reference(model, clean, corrupted, metric, direction) -> dict:
    want = reference_pattern_patching(model, clean, corrupted, metric, direction)
    other = _lazy(lambda: reference_pattern_patching(model, clean, corrupted, metric, _other(direction)))
    base, _ = _runs(model, clean, corrupted, direction)
    mistakes = _common_mistakes(want, other, _mean_metric(model, base, metric))
    mistakes["a patch of query row `head` across all heads (the wrong axis: hook_pattern is [batch, head, "
             "query_pos, key_pos], so a head is pattern[:, head], not pattern[:, :, head])"] = _lazy(
        lambda: _pattern_loop(model, clean, corrupted, metric, direction, axis=2))
    return {"value": want, "mistakes": mistakes}


@_on_one_thread
def check_pattern_patching(fn: Callable) -> None:
    """``fn(model, clean, corrupted, metric, direction) -> [layer, head]`` patching each head's attention pattern."""
    run_cases(fn, _pattern_reference, _direction_cases(), name="pattern_patching",
              compare=lambda got, want: _name_the_mistake(got, want, "per-head pattern effect"))


# --- a metric calibrated to 0 = corrupted, 1 = clean


def reference_calibrated_metric(logits, answer, wrong, clean_value: float, corrupted_value: float) -> torch.Tensor:
    """(logit diff at the last position - corrupted_value) / (clean_value - corrupted_value), one per prompt."""
    return (logit_diff(logits[:, -1].float(), answer, wrong) - corrupted_value) / (clean_value - corrupted_value)


@lru_cache(maxsize=1)
def _metric_cases() -> tuple[Case, ...]:
    g = torch.Generator().manual_seed(5)
    cases = []
    for batch, n_pos, vocab in ((3, 5, 11), (4, 7, 20)):
        logits = torch.randn(batch, n_pos, vocab, generator=g) * 3
        answer, wrong = torch.randint(vocab, (batch,), generator=g), torch.randint(vocab, (batch,), generator=g)
        clean_value, corrupted_value = 2.5 + batch, -1.0 + 0.5 * batch
        cases.append(Case(f"batch {batch}, {n_pos} positions", (logits, answer, wrong, clean_value, corrupted_value)))
    return tuple(cases)


@_per_case
def _metric_reference(logits, answer, wrong, clean_value, corrupted_value) -> dict:
    want = reference_calibrated_metric(logits, answer, wrong, clean_value, corrupted_value)
    gap = clean_value - corrupted_value

    def at(pos):
        return logit_diff(logits[:, pos].float(), answer, wrong)

    return {"value": want, "mistakes": {
        "the logit difference at the first position (logits[:, 0]): the answer is predicted at the last, "
        "logits[:, -1]": (at(0) - corrupted_value) / gap,
        "the logit difference at the second-to-last position (an off-by-one position: logits[:, -2])":
            (at(-2) - corrupted_value) / gap,
        "the calibration reversed (1 = corrupted, 0 = clean): subtract the corrupted value and divide by "
        "clean - corrupted": (at(-1) - clean_value) / (corrupted_value - clean_value),
        "the logit difference with its sign flipped (wrong - answer)": (-at(-1) - corrupted_value) / gap,
        "an uncalibrated logit difference: subtract corrupted_value, then divide by clean_value - corrupted_value":
            at(-1),
        "a difference not divided by the gap (clean_value - corrupted_value)": at(-1) - corrupted_value,
    }}


@_on_one_thread
def check_calibrated_metric(fn: Callable) -> None:
    """``fn(logits, answer, wrong, clean_value, corrupted_value) -> [batch]``: 0 on corrupted, 1 on clean."""
    run_cases(fn, _metric_reference, _metric_cases(), name="calibrated_metric",
              compare=lambda got, want: _name_the_mistake(got, want, "calibrated metric"))


__all__ += ["check_calibrated_metric", "check_head_patching", "check_head_position_patching", "check_patching_hook",
            "check_pattern_patching", "check_resid_pre_patching", "reference_calibrated_metric",
            "reference_head_patching", "reference_head_position_patching", "reference_patching_hook",
            "reference_pattern_patching", "reference_resid_pre_patching"]
