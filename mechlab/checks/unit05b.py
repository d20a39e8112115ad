"""Checkers for unit 05b (path patching and the IOI circuit), each naming the mistake a learner most likely made.

The learner writes:

    logit_diff_at(logits, correct, incorrect, end)              -> Float[Tensor, "batch"]
        ``logits[b, end[b], correct[b]] - logits[b, end[b], incorrect[b]]`` for right-padded prompts.
    freeze_hook(clean_z, corrupted_z, heads)                    -> hook(act, hook) -> Tensor
        A hook that sets ``z`` to its clean value everywhere, except ``heads``, which take the corrupted value.
    path_patch_to_logits(model, clean, corrupted, metric, sender)           -> Float[Tensor, "batch"]
        Sender head (``(layer, head)``) -> logits, every other head and every MLP frozen at clean; returns the
        per-prompt change of the metric, patched minus clean.
    path_patch_to_queries(model, clean, corrupted, metric, sender, receivers) -> Float[Tensor, "batch"]
        Sender -> the queries of ``receivers`` (a list of ``(layer, head)``), every other head and every MLP frozen
        while the receivers' queries are recorded; then a clean run with only those queries patched. Patched minus
        clean, per prompt.

When a result is wrong, the checker compares it with the results of the usual mistakes (a sign flip, noising and
denoising swapped, an off-by-one position, the first position instead of the last, a hook that returns nothing,
an in-place edit of a cached tensor, MLPs left to recompute, nothing frozen) and names the one that matches.

Example::

    from mechlab.checks import unit05b
    unit05b.check_logit_diff_at(logit_diff_at)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import torch
from torch import Tensor

from mechlab.checks.core import Case, CheckFailed, compare_tensors
from mechlab.core.activations import hook_name
from mechlab.core.loading import load_model
from mechlab.core.runs import Patch, cache_acts, logit_diff_metric, run_patches
from mechlab.data.ioi import corrupt, ioi_batch, make_ioi
from mechlab.methods.path_patching import path_patching

SIGN = "the sign is flipped: return patched - clean (and correct - incorrect), not the other way round"
SWAPPED = ("noising and denoising are swapped: run the *clean* prompts and patch the sender's *corrupted* z in "
           "(not clean values into the corrupted run)")
NO_RETURN = ("the result is what the unpatched run gives: a hook that assigns to its argument and returns nothing "
             "(None) leaves the activation unchanged, so return the new tensor")
IN_PLACE = ("an input tensor was edited in place (a cached activation changed after your call): clone before "
            "writing, or later patches read corrupted 'clean' values")
OFF_BY_ONE = "off by one position: read the logits at end[b] itself, the position of the final ' to'"
FIRST_POS = "the first position was read instead of each prompt's last (end[b]); logits[:, 0] predicts token 1"
LAST_COLUMN = ("the last column was read for every prompt, but prompts are right-padded: read logits[b, end[b]] "
               "(each prompt's own last position)")
MLPS_RECOMPUTED = "the MLPs were recomputed: freeze every MLP's output (hook_mlp_out) at its clean value too"
NOT_FROZEN = ("nothing was frozen: this is activation patching of the sender (its total effect); freeze every other "
              "head's z at its clean value")
ALL_HEADS = "the queries of every head in the receivers' layer were patched, not only the receivers'"
NO_BASELINE = ("the clean run's metric was not subtracted: return metric(patched) - metric(clean), the change, not "
               "the patched metric itself")
NO_STEP_2 = ("step 2 is missing: this is the metric of the freezing run (the sender's direct path to the logits); "
             "record the receivers' queries there, then run the clean prompts again with only those queries patched")


@lru_cache(maxsize=3)
def _model(name: str):
    return load_model(name, seed=3, verbose=False)


def _named(got, want: Tensor, variants: dict[str, Tensor], what: str, atol: float) -> str:
    problem = compare_tensors(got, want, atol=atol, rtol=1e-4, what=what)
    if not problem:
        return ""
    for message, value in variants.items():
        if isinstance(got, Tensor) and got.shape == value.shape and not compare_tensors(got, value, atol=atol,
                                                                                         rtol=1e-4):
            return f"{problem}; it matches the likely mistake: {message}"
    return problem


def _run(fn: Callable, name: str, cases: Sequence[tuple[Case, Tensor, dict[str, Tensor], list[Tensor]]],
         what: str, atol: float, call=None) -> None:
    for case, want, variants, watched in cases:
        before = [t.clone() for t in watched]
        try:
            got = fn(*case.args, **case.kwargs) if call is None else call(fn, *case.args)
        except NotImplementedError:
            raise CheckFailed(f"{name}: not implemented yet (the function still raises NotImplementedError).") from None
        except Exception as err:
            raise CheckFailed(f"{name}: case {case.name!r} raised {type(err).__name__}: {err}") from err
        finally:
            edited = [not torch.equal(a, b) for a, b in zip(before, watched, strict=True)]
            for was, tensor, bad in zip(before, watched, edited, strict=True):
                if bad:  # undo the edit: the cases are built once and shared by every later check
                    tensor.copy_(was)
        if any(edited):
            raise CheckFailed(f"{name}: case {case.name!r}: {IN_PLACE}.")
        problem = _named(got, want, variants, what, atol)
        if problem:
            raise CheckFailed(f"{name}: case {case.name!r} failed: {problem}.")
    print(f"{name}: passed {len(cases)} cases.")


# ---------------------------------------------------------------------------------------------------------
# logit_diff_at


def reference_logit_diff_at(logits: Tensor, correct: Tensor, incorrect: Tensor, end: Tensor) -> Tensor:
    rows = torch.arange(logits.shape[0])
    return logits[rows, end, correct] - logits[rows, end, incorrect]


def _logit_cases():
    out = []
    for seed, (batch, n_pos) in enumerate([(3, 6), (4, 9), (2, 5)]):
        g = torch.Generator().manual_seed(seed)
        logits = torch.randn(batch, n_pos, 11, generator=g)
        correct, incorrect = torch.randint(0, 11, (batch,), generator=g), torch.randint(0, 11, (batch,), generator=g)
        end = torch.randint(1, n_pos - 1, (batch,), generator=g)
        end[0] = n_pos - 1  # one unpadded row, the others padded
        want = reference_logit_diff_at(logits, correct, incorrect, end)
        variants = {SIGN: -want, FIRST_POS: reference_logit_diff_at(logits, correct, incorrect, end * 0),
                    LAST_COLUMN: reference_logit_diff_at(logits, correct, incorrect, end * 0 + n_pos - 1),
                    OFF_BY_ONE: reference_logit_diff_at(logits, correct, incorrect, end - 1)}
        args = (logits, correct, incorrect, end)
        out.append((Case(f"{batch} prompts of {n_pos} positions, right-padded", args), want, variants, list(args)))
    return out


def check_logit_diff_at(fn: Callable) -> None:
    """``fn(logits, correct, incorrect, end) -> [batch]``: the logit difference at each prompt's end."""
    _run(fn, "logit_diff_at", _logit_cases(), "logit difference", 1e-5)


# ---------------------------------------------------------------------------------------------------------
# freeze_hook


def reference_freeze_hook(clean_z: Tensor, corrupted_z: Tensor, heads: list[int]):
    def hook(act, hook=None):
        out = clean_z.clone()
        out[:, :, heads] = corrupted_z[:, :, heads]
        return out
    return hook


def _call_hook(fn, clean_z, corrupted_z, heads, act):
    return fn(clean_z, corrupted_z, heads)(act, None)


def _hook_cases():
    out = []
    for seed, heads in enumerate([[1], [0, 2], []]):
        g = torch.Generator().manual_seed(seed)
        clean_z, corrupted_z, act = (torch.randn(2, 5, 4, 3, generator=g) for _ in range(3))
        want = reference_freeze_hook(clean_z, corrupted_z, heads)(act)
        variants = {SWAPPED: reference_freeze_hook(corrupted_z, clean_z, heads)(act)}
        label = f"heads {heads}" + (" (none: every head frozen at clean)" if not heads else "")
        out.append((Case(label, (clean_z, corrupted_z, heads, act)), want, variants, [clean_z, corrupted_z]))
    return out


def check_freeze_hook(fn: Callable) -> None:
    """``fn(clean_z, corrupted_z, heads)`` returns a hook; the hook's return value is compared (and the caches)."""
    def compare_call(fn, clean_z, corrupted_z, heads, act):
        got = _call_hook(fn, clean_z, corrupted_z, heads, act)
        if got is None:
            raise CheckFailed(f"freeze_hook: the hook returned None: {NO_RETURN}.")
        return got
    _run(fn, "freeze_hook", _hook_cases(), "hook output", 1e-6, call=compare_call)


# ---------------------------------------------------------------------------------------------------------
# path patching by hand


@lru_cache(maxsize=2)
def _ioi(n: int = 4):
    model = _organism()
    samples = make_ioi(n, seed=5, templates=[0])
    clean_b, corr_b = ioi_batch(model, samples), ioi_batch(model, corrupt(samples, "abc", seed=6))
    return clean_b.tokens, corr_b.tokens, logit_diff_metric(clean_b.answer, clean_b.wrong)


@lru_cache(maxsize=1)
def _organism():
    return load_model("organism", verbose=False)


def _pp(model, clean, corrupted, metric, sender, **kw) -> Tensor:
    res = path_patching(model, clean, corrupted, metric, senders=[sender], effect=True, progress=False, **kw)
    return res.meta["per_prompt"][0]


def _swapped(model, clean, corrupted, metric, sender, **kw) -> list[Tensor]:
    per = path_patching(model, corrupted, clean, metric, senders=[sender], progress=False, **kw).meta["per_prompt"][0]
    m_corr, m_clean = (cache_acts(model, tokens, set(), metric)[1].cpu() for tokens in (corrupted, clean))
    return [per - m_corr, per - m_clean]  # against either baseline, per prompt


def _activation_patch(model, clean, corrupted, metric, sender) -> Tensor:
    name = hook_name("z", sender[0])
    cache, _ = cache_acts(model, corrupted, {name})
    _, m_clean = cache_acts(model, clean, set(), metric)
    return run_patches(model, clean, [Patch(name, sender[1])], cache, metric, progress=False)[0] - m_clean


@lru_cache(maxsize=2)
def _pp_cases(to_queries: bool) -> tuple:
    """Built once per session (a dozen path-patching runs); ``_run`` restores any input a learner edits."""
    out = []
    problems = [("organism", _ioi())]
    if not to_queries:
        g = torch.Generator().manual_seed(0)
        clean = torch.randint(5, 250, (2, 6), generator=g)
        corrupted = clean.clone()
        corrupted[:, 2] = torch.randint(5, 250, (2,), generator=g)
        problems.append(("tiny-gpt2", (clean, corrupted, logit_diff_metric(torch.tensor([7, 8]),
                                                                            torch.tensor([9, 10])))))
    for name, (clean, corrupted, metric) in problems:
        model = _organism() if name == "organism" else _model(name)
        # to the logits: a sender in layer 0 (MLPs and a later layer's heads to freeze) and one in the last layer
        senders = [(1, 0), (0, 3)] if to_queries else [(0, 1), (model.cfg.n_layers - 1, 0)]
        for sender in senders:
            kw = {"receivers": [(2, 0), (2, 1), (2, 3)], "receiver_input": "q"} if to_queries else {}
            with torch.no_grad():
                want = _pp(model, clean, corrupted, metric, sender, **kw)
                _, m_clean = cache_acts(model, clean, set(), metric)
                variants = {SIGN: -want, NO_RETURN: torch.zeros_like(want), NO_BASELINE: want + m_clean.cpu(),
                            MLPS_RECOMPUTED: _pp(model, clean, corrupted, metric, sender, freeze_mlps=False, **kw)}
                swapped = _swapped(model, clean, corrupted, metric, sender, **kw)
                variants[SWAPPED] = swapped[0]
                variants[SWAPPED + " (and measured against the clean run)"] = swapped[1]
                if to_queries:
                    kw_all = dict(kw, receivers=[(2, h) for h in range(model.cfg.n_heads)])
                    variants[ALL_HEADS] = _pp(model, clean, corrupted, metric, sender, **kw_all)
                    variants[NO_STEP_2] = _pp(model, clean, corrupted, metric, sender)
                else:
                    variants[NOT_FROZEN] = _activation_patch(model, clean, corrupted, metric, sender)
            args = (model, clean, corrupted, metric, sender) + ((kw["receivers"],) if to_queries else ())
            label = f"{name}, sender L{sender[0]}H{sender[1]}"
            out.append((Case(label, args), want, variants, [clean, corrupted]))
    return tuple(out)


def check_path_patch_to_logits(fn: Callable) -> None:
    """``fn(model, clean, corrupted, metric, sender) -> [batch]`` against ``mechlab.methods.path_patching``."""
    _run(fn, "path_patch_to_logits", _pp_cases(False), "per-prompt effect", 2e-4)


def check_path_patch_to_queries(fn: Callable) -> None:
    """``fn(model, clean, corrupted, metric, sender, receivers) -> [batch]`` against the library (receivers' q)."""
    _run(fn, "path_patch_to_queries", _pp_cases(True), "per-prompt effect", 2e-4)


# ---------------------------------------------------------------------------------------------------------
# denoising path patching: how much of the behaviour one sender's direct path restores

NOISED = ("this is the noising path patch (the sender corrupted in the clean run) divided by the gap: for denoising "
          "run the *corrupted* prompts, write the sender's *clean* z in and freeze everything else at corrupted")
NO_GAP = "not divided by the gap: return (patched - corrupted) / (clean - corrupted), a fraction"
MEAN_GAP = ("divided by the mean gap over prompts: divide each prompt by its own clean - corrupted gap (the metric "
            "is per prompt)")
AGAINST_CLEAN = "measured from the clean run: subtract the corrupted run's metric (the baseline of denoising)"
MLPS_RECOMPUTED_DENOISE = ("the MLPs were recomputed: freeze every MLP's output (hook_mlp_out) at its corrupted "
                           "value too")
NOT_FROZEN_DENOISE = ("nothing was frozen: this is denoising activation patching of the sender (its total effect); "
                      "freeze every other head's z and every MLP at its corrupted value")


def reference_denoising_path_to_logits(model, clean: Tensor, corrupted: Tensor, metric, sender) -> Tensor:
    """Fraction of each prompt's clean - corrupted gap restored by the sender's clean z on the corrupted run, every
    other head and every MLP frozen at corrupted: (patched - corrupted) / (clean - corrupted), shape [batch]."""
    with torch.no_grad():
        per = path_patching(model, corrupted, clean, metric, senders=[sender], progress=False).meta["per_prompt"][0]
        m_clean, m_corr = (cache_acts(model, tokens, set(), metric)[1].cpu() for tokens in (clean, corrupted))
    return (per - m_corr) / (m_clean - m_corr)


@lru_cache(maxsize=1)
def _denoise_cases() -> tuple:
    """Built once per session on the organism's IOI prompts (a random-init model's gap is too small to divide by)."""
    model = _organism()
    clean, corrupted, metric = _ioi()
    out = []
    for sender in [(1, 0), (2, 0), (2, 1)]:  # layer 1 first: there MLPs recomputed and nothing frozen differ
        with torch.no_grad():
            want = reference_denoising_path_to_logits(model, clean, corrupted, metric, sender)
            m_clean, m_corr = (cache_acts(model, tokens, set(), metric)[1].cpu() for tokens in (clean, corrupted))
            gap = m_clean - m_corr
            per = want * gap + m_corr
            name = hook_name("z", sender[0])
            clean_cache, _ = cache_acts(model, clean, {name})
            total = run_patches(model, corrupted, [Patch(name, sender[1])], clean_cache, metric, progress=False)[0]
            unfrozen = path_patching(model, corrupted, clean, metric, senders=[sender], freeze_mlps=False,
                                     progress=False).meta["per_prompt"][0]
            variants = {SIGN: -want, NO_RETURN: torch.zeros_like(want), NO_GAP: per - m_corr,
                        MEAN_GAP: (per - m_corr) / gap.mean(), AGAINST_CLEAN: (per - m_clean) / gap,
                        NOISED: _pp(model, clean, corrupted, metric, sender) / gap,
                        MLPS_RECOMPUTED_DENOISE: (unfrozen - m_corr) / gap,
                        NOT_FROZEN_DENOISE: (total.cpu() - m_corr) / gap}
        out.append((Case(f"organism IOI, sender L{sender[0]}H{sender[1]}", (model, clean, corrupted, metric, sender)),
                    want, variants, [clean, corrupted]))
    return tuple(out)


def check_denoising_path_to_logits(fn: Callable) -> None:
    """``fn(model, clean, corrupted, metric, sender) -> [batch]``: the fraction of the gap the sender's direct
    path restores (denoising), against ``mechlab.methods.path_patching`` with the runs swapped."""
    _run(fn, "denoising_path_to_logits", _denoise_cases(), "fraction restored", 1e-3)


__all__ = ["check_denoising_path_to_logits", "check_freeze_hook", "check_logit_diff_at", "check_path_patch_to_logits",
           "check_path_patch_to_queries", "reference_denoising_path_to_logits", "reference_freeze_hook",
           "reference_logit_diff_at"]
