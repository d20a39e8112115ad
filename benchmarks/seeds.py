"""The seed notebooks' own algorithms, ported to TransformerLens 4's ``TransformerBridge``: the baselines that
``benchmarks.run`` times next to mechlab's methods, in the same process, on the same model and tokens.

Each port keeps the seed's *algorithm* (how many passes, what is cached, where it lives) and fixes only what would
make the comparison meaningless (the seed's no-op IG hook, its clean/corrupt swap, its broken ``apply_ln``), so the
numbers it returns are the same quantities mechlab computes and the two can be checked against each other.

    generate_until_stop   CoT seed: greedy decoding with a full forward pass over the whole sequence per new token
    atp_all_to_cpu        CoT seed: AtP with ``component='all'``: every hook cached forward (corrupted) and forward
                          plus backward (clean), all caches moved to the CPU, then (corrupted - clean) . grad
    patch_heads_loop      exact patching of each head's z at all positions, one full forward pass per head
    ig_loop               IG one forward-backward per (layer, alpha), the interpolated activation really patched in
    backup_sweep          backup-heads seed: per head, one forward with a full cache; ``stack_head_results``; every
                          head's direct effect (final norm scale frozen at the clean run) along ``W_U[:, next token]``
"""

from __future__ import annotations

import torch

from mechlab.core.activations import hook_name
from mechlab.methods.attribution import ig_alphas


@torch.no_grad()
def generate_until_stop(model, prompt: str, stop_tokens: list[int], max_tokens: int) -> torch.Tensor:
    """The generated ids: one full forward pass over prompt + generated tokens for every new token (no KV cache),
    stopping at a stop token or after ``max_tokens``."""
    tokens = model.to_tokens(prompt)
    new = []
    for _ in range(max_tokens):
        token = model(tokens).argmax(-1)[:, -1]
        tokens = torch.cat([tokens, token[None]], dim=-1)
        new.append(int(token))
        if new[-1] in stop_tokens:
            break
    return torch.tensor(new)


def atp_all_to_cpu(model, clean, corrupted, metric, kinds=("resid_pre", "mlp_out", "z")) -> dict[str, torch.Tensor]:
    """AtP as the seed ran it with ``component='all'``: every hook point's activation of the corrupted run, and
    every hook point's activation and gradient of the clean run, cached and moved to the CPU (fp32); then per kind
    ``sum_d (corrupted - clean) * grad``, mean over prompts: {kind: [layer, pos] or [layer, pos, head]}."""
    # the seed's filter was ``"_input" not in name``: everything ``run_with_cache`` records (TL4 refuses the
    # input hooks unless switched on), read off a one-token run
    with torch.no_grad():
        names = sorted(model.run_with_cache(clean[:1, :1])[1].keys())
    corr_cache: dict[str, torch.Tensor] = {}
    clean_cache: dict[str, torch.Tensor] = {}
    grad_cache: dict[str, torch.Tensor] = {}

    def keep(store, name):
        def hook(act, hook):
            if isinstance(act, torch.Tensor):
                store[name] = act.detach()
        return hook

    with torch.no_grad(), model.hooks(fwd_hooks=[(n, keep(corr_cache, n)) for n in names]):
        model(corrupted)
    with model.hooks(fwd_hooks=[(n, keep(clean_cache, n)) for n in names],
                     bwd_hooks=[(n, keep(grad_cache, n)) for n in names]):
        model.zero_grad(set_to_none=True)
        metric(model(clean)).sum().backward()
    model.zero_grad(set_to_none=True)
    corr_cache = {k: v.float().cpu() for k, v in corr_cache.items()}
    clean_cache = {k: v.float().cpu() for k, v in clean_cache.items()}
    grad_cache = {k: v.float().cpu() for k, v in grad_cache.items()}
    out = {}
    for kind in kinds:
        rows = []
        for layer in range(model.cfg.n_layers):
            name = hook_name(kind, layer)
            grad = grad_cache.get(name, torch.zeros_like(clean_cache[name]))
            rows.append(((corr_cache[name] - clean_cache[name]) * grad).sum(-1).mean(0))
        out[kind] = torch.stack(rows)
    return out


@torch.no_grad()
def patch_heads_loop(model, clean, corrupted, metric) -> torch.Tensor:
    """Exact noising patch of each head's z at all positions: one full forward per head, mean metric [heads]."""
    corr_z = {}
    names = [hook_name("z", layer) for layer in range(model.cfg.n_layers)]
    model.run_with_hooks(corrupted, fwd_hooks=[(n, lambda act, hook, n=n: corr_z.__setitem__(n, act)) for n in names])
    out = []
    for name in names:
        for h in range(model.cfg.n_heads):
            def patch(act, hook, name=name, h=h):
                act = act.clone()
                act[:, :, h] = corr_z[name][:, :, h]
                return act
            out.append(metric(model.run_with_hooks(clean, fwd_hooks=[(name, patch)])).mean())
    return torch.stack(out)


def ig_loop(model, clean, corrupted, metric, steps: int) -> torch.Tensor:
    """IG on z, one forward-backward per (layer, alpha), the interpolated z patched in (the seed's hook returned
    nothing, so its "IG" was the plain gradient; this port does what it meant): [layer * head, pos]."""
    rows = []
    for layer in range(model.cfg.n_layers):
        name = hook_name("z", layer)
        acts = {}
        with torch.no_grad():
            for key, toks in (("clean", clean), ("corrupted", corrupted)):
                def keep(act, hook, key=key, acts=acts):
                    acts[key] = act
                model.run_with_hooks(toks, fwd_hooks=[(name, keep)])
        base, target = acts["clean"], acts["corrupted"]
        grad_sum = torch.zeros_like(base, dtype=torch.float32)
        for alpha, weight in ig_alphas(steps):
            point = (base + alpha * (target - base)).requires_grad_(True)
            with torch.enable_grad():
                logits = model.run_with_hooks(clean, fwd_hooks=[(name, lambda act, hook, p=point: p)])
                (grad,) = torch.autograd.grad(metric(logits).sum(), [point])
            grad_sum += weight * grad.float()
        rows.append(((target - base).float() * grad_sum).sum(-1).mean(0).transpose(0, 1))
    return torch.cat(rows)


@torch.no_grad()
def backup_sweep(model, clean, corrupted) -> dict[str, torch.Tensor]:
    """The backup-heads seed's sweep: per head, resample-ablate its z with a full cache of the ablated run, stack
    every head's result, and read each one's direct effect on the next token through the final norm (weight,
    centring and the **clean** run's scale, the choice ``apply_ln`` left open).

    Returns ``delta_logit`` [head, batch, pos - 1] (next-token logit, ablated - clean) and ``heads_change``
    [head, batch, pos - 1] (change of the sum of every head's direct effect, the ablated head's own included)."""
    _, corr = model.run_with_cache(corrupted)
    logits_c, cache_c = model.run_with_cache(clean)
    targets = clean[:, 1:]
    readout = model.W_U.detach().float()[:, targets].permute(1, 2, 0)  # [batch, pos - 1, d_model]
    norm = model.original_model.transformer.ln_f if hasattr(model.original_model, "transformer") \
        else model.original_model.model.norm
    rms = not hasattr(norm, "bias")
    weight = norm.weight.detach().float() + (1.0 if rms else 0.0)
    scale = cache_c["ln_final.hook_scale"][:, :-1].float()

    def head_effects(cache) -> torch.Tensor:  # [head, batch, pos - 1]
        stack = cache.stack_head_results(layer=-1)[:, :, :-1].float()  # [head, batch, pos - 1, d_model]
        if not rms:
            stack = stack - stack.mean(-1, keepdim=True)
        return (stack * weight / scale * readout).sum(-1)

    def next_logit(logits) -> torch.Tensor:
        return logits[:, :-1].float().gather(-1, targets[..., None])[..., 0]

    clean_heads, clean_logit = head_effects(cache_c), next_logit(logits_c)
    delta, change = [], []
    for layer in range(model.cfg.n_layers):
        name = hook_name("z", layer)
        for h in range(model.cfg.n_heads):
            def ablate(z, hook, name=name, h=h):
                z = z.clone()
                z[:, :, h] = corr[name][:, :, h]
                return z
            with model.hooks(fwd_hooks=[(name, ablate)]):
                logits_a, cache_a = model.run_with_cache(clean)
            delta.append(next_logit(logits_a) - clean_logit)
            change.append((head_effects(cache_a) - clean_heads).sum(0))
            del cache_a
    return {"delta_logit": torch.stack(delta), "heads_change": torch.stack(change)}
