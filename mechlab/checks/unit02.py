"""Checkers for unit 02 (attention patterns and head types): previous-token, duplicate-token and induction
scores on a repeated random sequence, and the repeated sequence itself.

The learner's score functions take one layer's patterns on ``[BOS, r_1..r_n, r_1..r_n]`` and ``n``; the
references are ``mechlab.methods.heads``' token-defined scores, which agree on such sequences::

    from mechlab.checks import unit02
    unit02.check_previous_token_scores(my_prev)         # fn(pattern [batch, head, q, k]) -> [head]
    unit02.check_duplicate_token_scores(my_dup)         # fn(pattern, seq_len) -> [head]
    unit02.check_induction_scores(my_induction)         # fn(pattern, seq_len) -> [head]
    unit02.check_repeated_tokens(my_generator, model)   # fn(model, seq_len, batch, seed) -> [batch, 1 + 2 seq_len]
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechlab.checks.core import Case, CheckFailed, compare_tensors, run_cases
from mechlab.core.activations import head_labels, hook_name
from mechlab.core.loading import load_model
from mechlab.core.tokens import token_log_probs
from mechlab.methods import dla, heads
from mechlab.methods.ablation import ablation_hooks


def _repeated(batch: int, seq_len: int, seed: int) -> Int[Tensor, "batch pos"]:
    gen = torch.Generator().manual_seed(seed)
    half = torch.stack([torch.randperm(100, generator=gen)[:seq_len] + 1 for _ in range(batch)])
    return torch.cat([torch.zeros(batch, 1, dtype=torch.long), half, half], dim=1)


def _pattern(batch: int, n_heads: int, n_pos: int, seed: int) -> Float[Tensor, "batch head query_pos key_pos"]:
    gen = torch.Generator().manual_seed(seed)
    scores = 2 * torch.randn(batch, n_heads, n_pos, n_pos, generator=gen)
    future = torch.ones(n_pos, n_pos, dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1)


def _cases() -> list[Case]:
    out = []
    for i, (batch, n_heads, seq_len) in enumerate([(1, 3, 4), (2, 4, 7), (3, 2, 10)]):
        out.append(Case(f"batch {batch}, {n_heads} heads, seq_len {seq_len}",
                        (_pattern(batch, n_heads, 1 + 2 * seq_len, seed=i), seq_len)))
    return out


def _check_scores(fn: Callable, reference: Callable, name: str, *, takes_seq_len: bool = True) -> None:
    def ref(pattern, seq_len):
        return reference(pattern, _repeated(pattern.shape[0], seq_len, seed=0))

    learner = fn if takes_seq_len else (lambda pattern, seq_len: fn(pattern))
    run_cases(learner, ref, _cases(), name=name)


def check_previous_token_scores(fn: Callable) -> None:
    """``fn(pattern)`` with pattern ``[batch, head, query_pos, key_pos]`` must return ``[head]``: the mean over
    batch and query positions ``q >= 1`` of the attention from ``q`` to ``q - 1``."""
    _check_scores(fn, lambda pattern, tokens: heads.previous_token_score(pattern), "check_previous_token_scores",
                  takes_seq_len=False)


def check_duplicate_token_scores(fn: Callable) -> None:
    """``fn(pattern, seq_len)`` on ``[BOS, r_1..r_n, r_1..r_n]`` (``n = seq_len``) must return ``[head]``: the
    mean over batch and second-half queries ``q`` of the attention from ``q`` to ``q - seq_len``."""
    _check_scores(fn, heads.duplicate_token_score, "check_duplicate_token_scores")


def check_induction_scores(fn: Callable) -> None:
    """``fn(pattern, seq_len)`` on ``[BOS, r_1..r_n, r_1..r_n]`` must return ``[head]``: the mean over batch
    and second-half queries ``q`` of the attention from ``q`` to ``q - seq_len + 1``, the token that came
    after the query's token last time."""
    _check_scores(fn, heads.induction_score, "check_induction_scores")


def _repeated_cases(model) -> list[Case]:
    """Two short cases and one long enough that drawing with replacement (``torch.randint``) or from the whole
    vocabulary (BOS included) shows up for certain: ``batch * seq_len`` far above the vocabulary size."""
    vocab = min(len(model.tokenizer), model.cfg.d_vocab)
    allowed = vocab - len({i for i in heads.special_token_ids(model) if i < vocab})
    long_len = max(2, min(allowed, (model.cfg.n_ctx - 1) // 2))
    long_batch = max(2, min(-(-12 * vocab // long_len), 4_000_000 // (1 + 2 * long_len)))
    return [Case("seq_len=5, batch=2, seed=0", (model, 5, 2, 0)),
            Case("seq_len=12, batch=3, seed=1", (model, 12, 3, 1)),
            Case(f"seq_len={long_len}, batch={long_batch}, seed=2 (long rows)", (model, long_len, long_batch, 2),
                 hint="tokens drawn with replacement (torch.randint) repeat inside a row, and a draw from the whole "
                      "vocabulary hits BOS; draw distinct non-special ids with torch.randperm")]


def _repeated_problems(got, want) -> str:
    seq_len, batch, vocab, bos, special = want
    toks, again = got
    if not isinstance(toks, Tensor):
        return f"returned a {type(toks).__name__}, expected a tensor of token ids"
    toks = toks.detach().cpu()
    if toks.shape != (batch, 1 + 2 * seq_len):
        return f"shape {tuple(toks.shape)}, expected {(batch, 1 + 2 * seq_len)} (BOS + 2 x seq_len)"
    if toks.dtype != torch.long:
        return f"dtype {toks.dtype}, expected torch.long (token ids are integers)"
    first, second = toks[:, 1:1 + seq_len], toks[:, 1 + seq_len:]
    problems = []
    if not bool((toks[:, 0] == bos).all()):
        problems.append(f"the first column is {toks[:5, 0].tolist()}..., expected the BOS id {bos} in every row")
    if not torch.equal(first, second):
        row, pos = (first != second).nonzero()[0].tolist()
        problems.append(f"the second half does not repeat the first half exactly (row {row} differs at offset "
                        f"{pos}: {int(first[row, pos])} then {int(second[row, pos])})")
    if bool((toks < 0).any()) or bool((toks >= vocab).any()):
        problems.append(f"ids outside the vocabulary 0..{vocab - 1} (got {int(toks.min())}..{int(toks.max())}); draw "
                        "from range(min(len(model.tokenizer), model.cfg.d_vocab))")
    inside = toks[:, 1:]
    n_bos = int((inside == bos).sum())
    if n_bos:
        problems.append(f"the random halves contain the BOS id {bos} {n_bos} times; BOS belongs in the first column "
                        "only, so leave it (and the other special tokens) out of the draw")
    other = sorted({int(t) for t in inside.unique().tolist() if int(t) in special and int(t) != bos})
    if other:
        problems.append(f"the random halves contain special token ids {other[:5]}; leave them out of the draw")
    repeats = [i for i, row in enumerate(first) if row.unique().numel() < seq_len]
    if repeats:
        problems.append(f"a token repeats within the random half in {len(repeats)} of {batch} rows (row "
                        f"{repeats[0]}); draw seq_len *distinct* ids per row with torch.randperm, not torch.randint, "
                        "which draws with replacement, so that the only repeats are the deliberate second half")
    if batch > 1 and torch.equal(toks[0], toks[1]):
        problems.append("every row is the same; draw each row separately")
    if not isinstance(again, Tensor) or not torch.equal(toks, again.detach().cpu()):
        problems.append("two calls with the same seed gave different tokens; use a seeded torch.Generator")
    return "; ".join(problems)


def check_repeated_tokens(fn: Callable, model) -> None:
    """``fn(model, seq_len, batch, seed)`` must return ``[batch, 1 + 2 * seq_len]`` token ids: BOS, then
    ``seq_len`` distinct random non-special tokens, then the same ``seq_len`` again; rows differ, the seed
    reproduces. One case is long enough that ``torch.randint`` over the vocabulary cannot pass by luck."""
    vocab = min(len(model.tokenizer), model.cfg.d_vocab)
    facts = (vocab, model.tokenizer.bos_token_id, heads.special_token_ids(model))

    def twice(model, seq_len, batch, seed):
        return fn(model, seq_len, batch, seed), fn(model, seq_len, batch, seed)

    def spec(model, seq_len, batch, seed):
        return (seq_len, batch, *facts)

    run_cases(twice, spec, _repeated_cases(model), name="check_repeated_tokens", compare=_repeated_problems)


__all__ = ["check_duplicate_token_scores", "check_induction_scores", "check_previous_token_scores",
           "check_repeated_tokens"]


# ---------------------------------------------------------------------------------------------------------
# hooks: record, ablate, score in one pass, test causally, attribute (the hooks section of unit 02)
#
# These checkers run the learner's function on tiny random-init models of both families (GPT-2-like:
# LayerNorm, learned positions; Gemma-like: RMSNorm, rotary, multi-query), built once, and compare it with a
# reference computed by mechlab's library. When the answer is wrong they try the mistakes learners really make
# (a hook that returns nothing, an in-place edit, an off-by-one position, a sign flip, a hook left attached)
# and name the one that reproduces the learner's numbers.


@functools.cache
def _tiny(family: str):
    return load_model("tiny-gpt2" if family == "gpt2" else "tiny-gemma", seed=1 if family == "gpt2" else 2,
                      verbose=False)


def _tiny_models() -> list:
    return [_tiny("gpt2"), _tiny("gemma")]


def _family(model) -> str:
    return "GPT-2-like" if model.cfg.normalization_type == "LN" else "Gemma-like"


def _attached_hooks(model) -> list[str]:
    return sorted({hp.name or n for n, hp in model.hook_dict.items() if hp._forward_hooks or hp._backward_hooks})


def _leak_message(model) -> str:
    leaked = _attached_hooks(model)
    if not leaked:
        return ""
    model.reset_hooks(including_permanent=True)
    return (f"a hook is still attached to {leaked[:3]} after your function returned (model.add_hook without "
            "removing it), so it would fire in every later run; add hooks only inside "
            "`with model.hooks(fwd_hooks=...)` or `model.run_with_hooks(...)`, which remove them on exit")


def _call(fn: Callable, name: str, where: str, *args):
    try:
        return fn(*args)
    except NotImplementedError:
        raise CheckFailed(f"{name}: not implemented yet (the function still raises NotImplementedError).") from None
    except CheckFailed:
        raise
    except Exception as err:  # the learner's bug: report it with the case that triggered it
        raise CheckFailed(f"{name}: case {where!r} raised {type(err).__name__}: {err}") from err


def _same(got, want, atol: float = 1e-4) -> bool:
    return (isinstance(got, Tensor) and isinstance(want, Tensor) and got.shape == want.shape
            and bool(torch.allclose(got.detach().float().cpu(), want.detach().float().cpu(), atol=atol, rtol=1e-4)))


def _as_scalar(value) -> Tensor | None:
    if isinstance(value, (int, float)):
        return torch.tensor(float(value))
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.detach().float().cpu().reshape(())
    return None


def _diagnose(name: str, where: str, got, want: Tensor, wrong: dict[str, Tensor], what: str) -> CheckFailed:
    """The failure for a wrong answer: the named mistake whose result it reproduces, else the first gap."""
    why = next((why for why, value in wrong.items() if _same(got, value)), "")
    return CheckFailed(f"{name}: case {where!r}: {why or compare_tensors(got, want, what=what)}.")


# ---- 1. recording ------------------------------------------------------------------------------------------


def _record_cases() -> list[tuple]:
    out = []
    for model in _tiny_models():
        toks = heads.repeated_random_tokens(model, 5, batch=3, seed=0)
        for kind, layer in (("resid_pre", 1), ("z", 0), ("pattern", 1)):
            out.append((model, toks, kind, layer))
    return out


def check_record_activation(fn: Callable) -> None:
    """``fn(model, tokens, name)`` must return ``(logits, activation)``: the logits of one run on ``tokens`` and
    the activation at hook ``name`` in that run, recorded by a forward hook that leaves the run unchanged."""
    name = "check_record_activation"
    cases = _record_cases()
    for model, toks, kind, layer in cases:
        hook = hook_name(kind, layer)
        where = f"{_family(model)}, {hook}"
        with torch.no_grad():
            want_logits, cache = model.run_with_cache(toks, names_filter=[hook])
        want = cache[hook]
        out = _call(fn, name, where, model, toks.clone(), hook)
        leak = _leak_message(model)
        if leak:
            raise CheckFailed(f"{name}: case {where!r}: {leak}.")
        if not isinstance(out, tuple) or len(out) != 2:
            raise CheckFailed(f"{name}: case {where!r}: returned {type(out).__name__}; expected a pair "
                              "(logits, activation).")
        logits, act = out
        if not _same(logits, want_logits):
            raise CheckFailed(f"{name}: case {where!r}: the logits differ from a run without hooks, so your recording "
                              "hook changed the activation: an in-place edit of the tensor the model is using "
                              "(`act[...] = ...`, `act -= ...`, `act.mul_(...)`) or a returned tensor that is not "
                              "`act` itself. A recording hook stores the value (a `.clone()` if you will edit the "
                              "copy) and returns nothing.")
        if act is None or (isinstance(act, (list, dict)) and not act):
            raise CheckFailed(f"{name}: case {where!r}: no activation came back. Did the hook only rebind a local "
                              "name (`stored = act` inside the hook is lost when it returns)? Put it into a dict or "
                              "list created outside the hook.")
        if isinstance(act, Tensor) and act.shape == want.shape[1:] and _same(act, want[0]):
            raise CheckFailed(f"{name}: case {where!r}: that is the first prompt's activation only; keep the batch "
                              f"axis (expected shape {tuple(want.shape)}).")
        if not _same(act, want):
            near = [other for other in (layer - 1, layer + 1) if 0 <= other < model.cfg.n_layers]
            with torch.no_grad():
                _, cache = model.run_with_cache(toks, names_filter=[hook_name(kind, other) for other in near])
            wrong = {f"that is layer {other}'s {kind}: off by one layer": cache[hook_name(kind, other)]
                     for other in near}
            if not any(_same(act, value) for value in wrong.values()) and isinstance(act, Tensor) \
                    and act.shape == want.shape:
                raise CheckFailed(f"{name}: case {where!r}: {compare_tensors(act, want, what='the activation')}; "
                                  "the shape is right, so was the stored tensor changed after the model produced "
                                  "it? An in-place edit (`act -= ...`, `act[...] = ...`) inside or after the hook "
                                  "changes what you recorded: record `act.clone()` and edit the copy.")
            raise _diagnose(name, where, act, want, wrong, "the activation")
    print(f"{name}: passed {len(cases)} cases.")


# ---- 2. ablating one head's z --------------------------------------------------------------------------------


def reference_head_ablation_hook(head: int, mean: Tensor | None = None) -> Callable:
    """Reference: a hook on ``hook_z`` that sets head ``head``'s z to 0, or to ``mean[:, head]`` (``mean`` is
    ``[pos, head, d_head]``, the z of a reference batch averaged over prompts), in every prompt."""
    def hook(z, hook):
        z = z.clone()
        z[:, :, head] = 0 if mean is None else mean[:, head].to(z.dtype)
        return z
    return hook


def _wrong_ablations(head: int, mean: Tensor | None) -> dict[str, Callable]:
    def set_to(select, value_fn):
        def hook(z, hook):
            z = z.clone()
            z[select(z)] = value_fn(z)
            return z
        return hook

    out = {f"it ablated position {head} (z[:, {head}]), not head {head}: z is [batch, pos, head, d_head], so a head is "
           "z[:, :, head]": set_to(lambda z: (slice(None), head), lambda z: 0.0 if mean is None else mean[head]),
           "it ablated every head of the layer, not one": set_to(lambda z: (slice(None),), lambda z: (
               0.0 if mean is None else mean.to(z.dtype)))}
    if mean is not None:
        out["it zero-ablated although a mean was given; write mean[:, head] into the head"] = \
            reference_head_ablation_hook(head, None)
        out["it averaged the mean over positions too; mean-ablation keeps one mean per position"] = set_to(
            lambda z: (slice(None), slice(None), head), lambda z: mean[:, head].mean(0).to(z.dtype))
    return out


def check_head_ablation_hook(fn: Callable) -> None:
    """``fn(head, mean=None)`` must return a forward hook for ``hook_z`` that ablates head ``head`` in every
    prompt and position: to 0, or to ``mean[:, head]`` when ``mean`` (``[pos, head, d_head]``) is given, leaving
    the other heads and ``mean`` itself unchanged."""
    name = "check_head_ablation_hook"
    n = 0
    for model in _tiny_models():
        toks = heads.repeated_random_tokens(model, 5, batch=3, seed=0)
        ref_toks = heads.repeated_random_tokens(model, 5, batch=4, seed=1)
        for layer, head, method in ((0, 1, "zero"), (1, 2, "mean"), (1, 0, "zero")):
            n += 1
            hook = hook_name("z", layer)
            where = f"{_family(model)}, L{layer}H{head}, {method} ablation"
            with torch.no_grad():
                _, cache = model.run_with_cache(ref_toks, names_filter=[hook])
                clean = model(toks)
            mean = cache[hook].mean(0) if method == "mean" else None
            kept = None if mean is None else mean.clone()
            with torch.no_grad(), model.hooks(fwd_hooks=[(hook, reference_head_ablation_hook(head, kept))]):
                want = model(toks)
            learner_hook = _call(fn, name, where, head, mean)
            if not callable(learner_hook):
                raise CheckFailed(f"{name}: case {where!r}: returned {type(learner_hook).__name__}; expected a hook "
                                  "function `hook(z, hook)` (define it inside your function and return it).")
            with torch.no_grad(), model.hooks(fwd_hooks=[(hook, learner_hook)]):
                got = _call(model, name, where, toks)
            if mean is not None and not torch.equal(mean, kept):
                raise CheckFailed(f"{name}: case {where!r}: the hook edited `mean` in place, the cached tensor it was "
                                  "given, so every later run ablates with corrupted values; write into a clone of z "
                                  "(`z = z.clone()`), never into a cached tensor.")
            if _same(got, want):
                continue
            if _same(got, clean, atol=1e-6):
                try:
                    returned = learner_hook(torch.randn(cache[hook].shape), None)
                except Exception:  # a hook that reads hook.name cannot be called bare; then only the run tells
                    returned = "unknown"
                why = ("the hook returns nothing and leaves its argument unchanged: `z = ...` inside a hook only "
                       "rebinds a local name, so TransformerLens keeps the original activation (a silent no-op, "
                       "the seed notebook's IG bug). Return the new tensor"
                       if returned is None else "the run did not change at all: the hook returns z as it was")
                raise CheckFailed(f"{name}: case {where!r}: {why}.")
            wrong = {}
            for why, bad in _wrong_ablations(head, mean).items():
                with torch.no_grad(), model.hooks(fwd_hooks=[(hook, bad)]):
                    wrong[why] = model(toks)
            raise _diagnose(name, where, got, want, wrong, "the ablated logits")
    print(f"{name}: passed {n} cases.")


# ---- 3. every head's induction score in one forward pass ------------------------------------------------


def reference_induction_grid(model, tokens: Int[Tensor, "batch pos"], seq_len: int) -> Float[Tensor, "layer head"]:
    """Reference: ``mechlab.methods.heads.induction_score`` of every head, on repeated tokens, as ``[layer, head]``."""
    return heads.induction_score(heads.attention_patterns(model, tokens), tokens).cpu()


def _offset_grid(pattern: Tensor, seq_len: int, offset: int, first_query: int) -> Tensor:
    n = pattern.shape[-1]
    q = torch.arange(max(first_query, offset), n)
    return pattern[..., q, q - offset].mean(dim=(0, -1)).cpu()


def _repeat_cases(sizes: tuple[tuple[int, int, int], ...]):
    """(model, seq_len, repeated tokens, case name) for each tiny model and each (seq_len, batch, seed)."""
    for model in _tiny_models():
        for seq_len, batch, seed in sizes:
            yield (model, seq_len, heads.repeated_random_tokens(model, seq_len, batch, seed=seed),
                   f"{_family(model)}, seq_len {seq_len}, batch {batch}")


def _count_pass(passes: list[int], act, hook) -> None:
    passes.append(1)


def check_induction_one_pass(fn: Callable) -> None:
    """``fn(model, tokens, seq_len)`` on ``[BOS, r_1..r_n, r_1..r_n]`` must return ``[layer, head]`` induction
    scores (the attention from second-half query ``q`` to ``q - seq_len + 1``, averaged over prompts and those
    queries) from **one** forward pass with a hook on every layer's ``hook_pattern``."""
    name = "check_induction_one_pass"
    n = 0
    for model, seq_len, toks, where in _repeat_cases(((4, 2, 0), (7, 3, 1))):
        n += 1
        want = reference_induction_grid(model, toks, seq_len)
        passes: list[int] = []
        with model.hooks(fwd_hooks=[("hook_embed", functools.partial(_count_pass, passes))]):
            got = _call(fn, name, where, model, toks.clone(), seq_len)
        leak = _leak_message(model)
        if leak:
            raise CheckFailed(f"{name}: case {where!r}: {leak}.")
        if len(passes) != 1:
            raise CheckFailed(f"{name}: case {where!r}: your function ran {len(passes)} forward passes; one is "
                              "enough: hook every layer's hook_pattern at once (a list of (name, hook) pairs, or a "
                              "filter function `lambda name: name.endswith('hook_pattern')` as the name).")
        if isinstance(got, Tensor) and _same(got, want):
            continue
        if isinstance(got, Tensor) and got.shape == want.shape[1:]:
            raise CheckFailed(f"{name}: case {where!r}: returned shape {tuple(got.shape)}, one layer's heads; "
                              f"expected every layer, {tuple(want.shape)} (did each hook overwrite one variable?).")
        pattern = heads.attention_patterns(model, toks)
        wrong = {
            "off by one: q - seq_len is the duplicate-token key (the earlier copy itself); the induction key is "
            "the token after it, q - seq_len + 1": _offset_grid(pattern, seq_len, seq_len, seq_len + 1),
            "off by one: q - seq_len + 2 is one past the induction key q - seq_len + 1":
                _offset_grid(pattern, seq_len, seq_len - 2, seq_len + 1),
            "it averaged over first-half queries too, where no earlier copy exists; use queries seq_len + 1 .. "
            "2 * seq_len": _offset_grid(pattern, seq_len, seq_len - 1, seq_len - 1),
            "the first second-half query (q = seq_len + 1) is missing: off by one in the query range":
                _offset_grid(pattern, seq_len, seq_len - 1, seq_len + 2),
            "a sign flip": -want,
        }
        raise _diagnose(name, where, got, want, wrong, "the scores")
    print(f"{name}: passed {n} cases.")


# ---- 4. the causal test: second-half loss with heads ablated ----------------------------------------------


def reference_second_half_loss(model, tokens: Int[Tensor, "batch pos"], seq_len: int,
                               ablate: list[str]) -> Tensor:
    """Reference: mean next-token loss (nats) on the tokens induction can predict, r_2..r_n of the second copy
    (logit positions ``seq_len + 1 .. 2 * seq_len - 1``), with the heads ``ablate`` zero-ablated together."""
    with torch.no_grad(), model.hooks(fwd_hooks=ablation_hooks(model, ablate, method="zero") if ablate else []):
        log_probs = token_log_probs(model(tokens), tokens)
    return -log_probs[:, seq_len + 1:].mean().cpu()


def check_second_half_loss(fn: Callable) -> None:
    """``fn(model, tokens, seq_len, ablate)`` must return the mean loss (nats, a positive number) on predicting
    r_2..r_n of the second copy of ``[BOS, r_1..r_n, r_1..r_n]`` (logit positions ``seq_len + 1`` to
    ``2 * seq_len - 1``), with every head in ``ablate`` (labels ``L{l}H{h}``) zero-ablated in the same run."""
    name = "check_second_half_loss"
    n = 0
    for model in _tiny_models():
        seq_len = 6
        toks = heads.repeated_random_tokens(model, seq_len, batch=3, seed=0)
        for ablate in ([], ["L1H2"], ["L0H0", "L1H3"]):
            n += 1
            where = f"{_family(model)}, seq_len {seq_len}, ablate {ablate}"
            want = reference_second_half_loss(model, toks, seq_len, ablate)
            got_raw = _call(fn, name, where, model, toks.clone(), seq_len, list(ablate))
            leak = _leak_message(model)
            if leak:
                raise CheckFailed(f"{name}: case {where!r}: {leak}.")
            got = _as_scalar(got_raw)
            if got is None:
                raise CheckFailed(f"{name}: case {where!r}: returned {type(got_raw).__name__} "
                                  f"{tuple(getattr(got_raw, 'shape', ()))}; expected one number (a float or a 0-d "
                                  "tensor), the mean over prompts and positions.")
            if _same(got, want):
                continue
            with torch.no_grad(), model.hooks(fwd_hooks=ablation_hooks(model, ablate, method="zero") if ablate else []):
                logits = model(toks)
            lp = token_log_probs(logits, toks)
            unshifted = logits.float().log_softmax(-1).gather(-1, toks[:, :, None])[..., 0]
            wrong = {
                "a sign flip: that is the mean log-probability; the loss is its negative": -want,
                "off by one: logit position seq_len predicts r_1 of the second copy, which followed BOS, not r_n, and "
                "no copying can predict it; start at seq_len + 1": -lp[:, seq_len:].mean().cpu(),
                "off by one: the first predictable token (r_2, at logit position seq_len + 1) is missing":
                    -lp[:, seq_len + 2:].mean().cpu(),
                "the logits are not shifted: position p predicts token p + 1 (use token_log_probs or "
                "logits[:, :-1] against tokens[:, 1:])": -unshifted[:, seq_len + 1:].mean().cpu(),
                "it averaged over the whole sequence; only the second copy is predictable": -lp.mean().cpu(),
            }
            if ablate:
                wrong["the heads were not ablated: the loss equals the unablated run's (a hook that returns nothing, "
                      "or hooks added outside the run)"] = reference_second_half_loss(model, toks, seq_len, [])
            raise _diagnose(name, where, got, want, wrong, "the loss")
    print(f"{name}: passed {n} cases.")


# ---- 5. which heads write the copied token: direct logit attribution ----------------------------------------


def reference_copying_dla(model, tokens: Int[Tensor, "batch pos"], seq_len: int) -> Float[Tensor, "layer head"]:
    """Reference: each head's direct effect on the logit of the next token (the one to copy), through the final
    norm with this run's scale frozen, averaged over prompts and logit positions ``seq_len + 1 .. 2 * seq_len - 1``
    (``mechlab.methods.dla.direct_effects``); ``[layer, head]``."""
    return _copying_dla(model, tokens, seq_len, 1, seq_len + 1)


def _copying_dla(model, tokens, seq_len: int, shift: int, first: int, sign: float = 1.0) -> Tensor:
    names = dla.cache_names(model)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    positions = slice(first, 2 * seq_len)
    targets = tokens[:, first + shift:2 * seq_len + shift]
    effects = dla.direct_effects(model, cache, dla.unembed_directions(model, targets), positions=positions)
    labels = head_labels(model.cfg.n_layers, model.cfg.n_heads)
    per_head = torch.stack([effects[label] for label in labels])  # [head, batch, pos]
    return sign * per_head.mean(dim=(1, 2)).reshape(model.cfg.n_layers, model.cfg.n_heads)


def check_copying_dla(fn: Callable) -> None:
    """``fn(model, tokens, seq_len)`` must return ``[layer, head]``: each head's direct effect (its output read
    through the final norm, the scale frozen at this run's, and ``W_U``) on the logit of the *next* token,
    averaged over prompts and logit positions ``seq_len + 1 .. 2 * seq_len - 1`` of ``[BOS, r_1..r_n, r_1..r_n]``."""
    name = "check_copying_dla"
    n = 0
    for model, seq_len, toks, where in _repeat_cases(((4, 2, 0), (6, 3, 1))):
        n += 1
        want = reference_copying_dla(model, toks, seq_len)
        got = _call(fn, name, where, model, toks.clone(), seq_len)
        leak = _leak_message(model)
        if leak:
            raise CheckFailed(f"{name}: case {where!r}: {leak}.")
        if isinstance(got, Tensor) and _same(got, want):
            continue
        wrong = {
            "a sign flip": -want,
            "off by one: that reads the unembedding of the current token; the token to copy is the next one, "
            "tokens[:, p + 1]": _copying_dla(model, toks, seq_len, 0, seq_len + 1),
            "off by one: logit position seq_len (predicting r_1, which nothing can copy) is included":
                _copying_dla(model, toks, seq_len, 1, seq_len),
            "it averaged over first-half positions too, where there is nothing to copy yet":
                _copying_dla(model, toks, seq_len, 1, 1),
        }
        raise _diagnose(name, where, got, want, wrong, "the DLA grid")
    print(f"{name}: passed {n} cases.")


__all__ += ["check_copying_dla", "check_head_ablation_hook", "check_induction_one_pass", "check_record_activation",
            "check_second_half_loss", "reference_copying_dla", "reference_head_ablation_hook",
            "reference_induction_grid", "reference_second_half_loss"]
