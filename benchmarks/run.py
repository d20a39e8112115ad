"""Speed and memory of attribution patching, batched exact patching and batched IG, on random-init models.

One command measures, in one run and per model, the ratios the course's acceptance criteria name:

    AtP / (fwd + fwd-bwd)   AtP on all kinds (resid_pre, attn_out, mlp_out, z, q, k, v) over the time of one
                            forward plus one forward-backward: AtP needs exactly those two passes plus bookkeeping
    patch loop / batched    exact patching of every head's z (noising, all positions): one forward per head vs
                            the heads stacked along the batch (``max_batch`` sequences per pass)
    IG loop / batched       IG on z with ``steps`` alphas: one forward-backward per (layer, alpha) vs
                            :func:`mechlab.methods.attribution.integrated_gradients` batched over (layer, alpha)
    peak memory             CUDA: peak allocated during each measurement; CPU: the process's peak RSS so far

The batched and looped results are compared as they are timed (a mismatch raises), so a fast wrong answer cannot
pass. Sizes: ``tiny`` (CI smoke run: tiny-gpt2, tiny-gemma) and ``full`` (GPT-2 small and Gemma-2b shapes).

Usage::

    python -m benchmarks.run --size tiny          # what `make bench` runs
    python -m benchmarks.run --size full --models random-gpt2-small --device cuda
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

SIZES = {  # size -> (models, batch, pos, IG steps, max_batch)
    "tiny": (("tiny-gpt2", "tiny-gemma"), 2, 12, 4, 64),
    "full": (("random-gpt2-small", "random-gemma-2b"), 1, 64, 16, 32),
}


@dataclass
class Row:
    """One model's measurements (seconds, bytes) and the ratios derived from them."""

    model: str
    fwd_s: float
    fwd_bwd_s: float
    atp_s: float
    patch_loop_s: float
    patch_batched_s: float
    ig_loop_s: float
    ig_batched_s: float
    peak_mem_mb: float
    patch_max_diff: float
    ig_max_diff: float

    @property
    def atp_ratio(self) -> float:
        return self.atp_s / (self.fwd_s + self.fwd_bwd_s)

    @property
    def patch_speedup(self) -> float:
        return self.patch_loop_s / self.patch_batched_s

    @property
    def ig_speedup(self) -> float:
        return self.ig_loop_s / self.ig_batched_s


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable, device: str, repeats: int = 1):
    """Best-of-``repeats`` wall time of ``fn()`` (after one warm-up call) and its last result."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def _peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _patch_heads_loop(model, clean, corr_z, metric) -> torch.Tensor:
    """Exact noising patch of each head's z at all positions, one forward pass per head."""
    from mechlab.core.activations import hook_name

    out = []
    with torch.no_grad():
        for layer in range(model.cfg.n_layers):
            for h in range(model.cfg.n_heads):
                def hook(act, hook, layer=layer, h=h):
                    act = act.clone()
                    act[:, :, h] = corr_z[layer][:, :, h]
                    return act
                out.append(metric(model.run_with_hooks(clean, fwd_hooks=[(hook_name("z", layer), hook)])).mean())
    return torch.stack(out)


def _patch_heads_batched(model, clean, corrupted, metric, max_batch: int) -> torch.Tensor:
    """The same patches through :func:`mechlab.methods.patching.activation_patching` (what the course uses): the
    heads are
    stacked along the batch, ``max_batch`` sequences per pass."""
    from mechlab.methods.patching import activation_patching

    result = activation_patching(model, clean, corrupted, metric, kind="z", direction="noising", per_position=False,
                                 max_batch=max_batch, progress=False)
    return result.values.to(clean.device)


def _ig_loop(model, clean, corrupted, metric, steps: int) -> torch.Tensor:
    """IG on z with one forward-backward per (layer, alpha): the unbatched reference."""
    from mechlab.core.activations import hook_name
    from mechlab.methods.attribution import ig_alphas

    rows = []
    for layer in range(model.cfg.n_layers):
        name = hook_name("z", layer)
        cache = {}
        for key, toks in (("base", clean), ("target", corrupted)):
            with torch.no_grad():
                def keep(act, hook, key=key, c=cache):
                    c[key] = act
                model.run_with_hooks(toks, fwd_hooks=[(name, keep)])
        base, target = cache["base"], cache["target"]
        grad_sum = torch.zeros_like(base, dtype=torch.float32)
        for alpha, weight in ig_alphas(steps):
            point = (base + alpha * (target - base)).requires_grad_(True)
            with torch.enable_grad():
                logits = model.run_with_hooks(clean, fwd_hooks=[(name, lambda act, hook, p=point: act * 0 + p)])
                (grad,) = torch.autograd.grad(metric(logits).sum(), [point])
            grad_sum += weight * grad.float()
        rows.append(((target - base).float() * grad_sum).sum(-1).mean(0).transpose(0, 1))  # [head, pos]
    return torch.cat(rows)


def bench_model(name: str, *, batch: int, pos: int, steps: int, max_batch: int, device: str | None,
                repeats: int = 1) -> Row:
    """Measure one model; see the module docstring for what each number is."""
    from mechlab.core.activations import hook_name
    from mechlab.core.loading import load_model
    from mechlab.core.runs import logit_diff_metric
    from mechlab.methods.attribution import attribution_patching, integrated_gradients

    model = load_model(name, device=device, verbose=False)
    dev = str(next(model.parameters()).device)
    g = torch.Generator().manual_seed(0)
    vocab = min(model.cfg.d_vocab, 250)
    clean = torch.randint(5, vocab, (batch, pos), generator=g).to(dev)
    corrupted = clean.clone()
    corrupted[:, pos // 2] = torch.randint(5, vocab, (batch,), generator=g).to(dev)
    metric = logit_diff_metric(torch.randint(5, vocab, (batch,), generator=g),
                               torch.randint(5, vocab, (batch,), generator=g))
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    with torch.no_grad():
        fwd_s, _ = _timed(lambda: model(clean), dev, repeats)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        metric(model(clean)).sum().backward()

    fwd_bwd_s, _ = _timed(fwd_bwd, dev, repeats)
    model.zero_grad(set_to_none=True)
    atp_s, _ = _timed(lambda: attribution_patching(model, clean, corrupted, metric), dev, repeats)

    corr_z = {}
    names = {hook_name("z", layer): layer for layer in range(model.cfg.n_layers)}
    with torch.no_grad():
        model.run_with_hooks(corrupted, fwd_hooks=[(n, lambda act, hook, n=n: corr_z.__setitem__(names[n], act))
                                                   for n in names])
    patch_loop_s, loop = _timed(lambda: _patch_heads_loop(model, clean, corr_z, metric), dev)
    patch_batched_s, batched = _timed(lambda: _patch_heads_batched(model, clean, corrupted, metric, max_batch), dev)
    patch_diff = float((loop - batched).abs().max())

    ig_loop_s, ig_ref = _timed(lambda: _ig_loop(model, clean, corrupted, metric, steps), dev)
    ig_batched_s, ig = _timed(lambda: integrated_gradients(model, clean, corrupted, metric, kind="z", steps=steps,
                                                          max_batch=max_batch, progress=False), dev)
    ig_diff = float((ig_ref.cpu() - ig.values).abs().max())
    scale = max(float(ig_ref.abs().max()), 1e-6)
    if patch_diff > 1e-4 or ig_diff > 1e-3 * scale + 1e-6:
        raise RuntimeError(f"{name}: batched and looped results disagree (patching {patch_diff:.3g}, IG "
                           f"{ig_diff:.3g}); the timings would compare different computations.")
    row = Row(name, fwd_s, fwd_bwd_s, atp_s, patch_loop_s, patch_batched_s, ig_loop_s, ig_batched_s, _peak_mb(dev),
              patch_diff, ig_diff)
    return row


def format_table(rows: list[Row], device: str) -> str:
    head = (f"{'model':<20} {'fwd s':>8} {'fwd+bwd s':>10} {'AtP s':>8} {'AtP/(f+fb)':>11} {'patch x':>8} "
            f"{'IG x':>7} {'peak MB':>9}")
    lines = [f"device: {device}", head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.model:<20} {r.fwd_s:>8.4f} {r.fwd_bwd_s:>10.4f} {r.atp_s:>8.4f} {r.atp_ratio:>11.2f} "
                     f"{r.patch_speedup:>8.1f} {r.ig_speedup:>7.1f} {r.peak_mem_mb:>9.0f}")
    lines.append("patch x: loop of one forward per head / heads batched; IG x: one fwd-bwd per (layer, alpha) / "
                 "batched over (layer, alpha). Peak MB: CUDA peak allocated, or the CPU process's peak RSS so far.")
    return "\n".join(lines)


def run(size: str = "tiny", *, models: list[str] | None = None, device: str | None = None,
        repeats: int = 1) -> list[Row]:
    """Benchmark every model of ``size`` (or ``models``) and return the rows (also printed as a table)."""
    if size not in SIZES:
        raise ValueError(f"size={size!r}; expected one of {sorted(SIZES)}.")
    default_models, batch, pos, steps, max_batch = SIZES[size]
    rows = []
    for name in models or default_models:
        print(f"benchmarking {name} (batch {batch}, pos {pos}, IG steps {steps}) ...", flush=True)
        rows.append(bench_model(name, batch=batch, pos=pos, steps=steps, max_batch=max_batch, device=device,
                                repeats=repeats))
    from mechlab.core.loading import default_device

    print(format_table(rows, device or default_device()))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--models", nargs="*", default=None, help="override the size's model list")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats of the short measurements")
    args = parser.parse_args(argv)
    run(args.size, models=args.models, device=args.device, repeats=args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
