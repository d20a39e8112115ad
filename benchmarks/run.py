"""mechlab's methods side by side with the seed notebooks' own algorithms (``benchmarks.seeds``), in one process, on
the same random-init model and the same tokens, CPU by default and CUDA when present.

    generation    greedy decoding after a long prompt: seed = a full forward pass per new token; mechlab =
                  ``mechlab.methods.generate`` (KV cache). Check: the same token ids.
    AtP           resid_pre + mlp_out + z: seed = every hook cached forward and backward, caches moved to the CPU;
                  mechlab = ``attribution_patching`` (only the kinds asked, on the device). Also reported:
                  AtP / (one forward + one forward-backward), the least any AtP can cost.
    patching      every head's z at all positions, noising: seed = one full forward per head; mechlab =
                  ``activation_patching`` (each pass resumes at the patched layer). Check: the same numbers.
    IG            IG on z, every layer x ``steps`` alphas: seed = one forward-backward per (layer, alpha);
                  mechlab = ``integrated_gradients`` (a layer's alphas batched, resumed at that layer).
    self-repair   resample-ablate every head, every head's direct effect: seed = per head one forward with a full
                  cache + ``stack_head_results``; mechlab = ``self_repair_sweep`` (resumed at the ablated layer,
                  direct effects read along the readout direction only).

Each work is timed seed then mechlab, ``--repeats`` times interleaved (best of each), as wall time and as the
process's CPU time (``time.process_time``: what the work cost, less sensitive to other processes on a shared
machine). The two results are compared as they are timed: a disagreement raises, so a fast wrong answer cannot
pass. Sizes: ``tiny`` (``make bench`` and CI: tiny-gpt2 and tiny-gemma, seconds) and ``full`` (GPT-2 small shapes:
the sizes of the issue's acceptance table).

Usage::

    python -m benchmarks.run --size tiny                               # what `make bench` runs
    python -m benchmarks.run --size full                               # GPT-2-small shapes, CPU (~10 min)
    python -m benchmarks.run --size full --device cuda                 # the same on a GPU
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmarks import seeds

SIZES = {
    # models; generation prompt / new tokens; AtP, patching and IG batch x pos; IG steps; self-repair batch x pos
    "tiny": {"models": ("tiny-gpt2", "tiny-gemma"), "gen": (40, 8), "one": (1, 24), "steps": 5, "sweep": (2, 16)},
    "full": {"models": ("random-gpt2-small",), "gen": (400, 32), "one": (1, 100), "steps": 5, "sweep": (8, 100)},
}


@dataclass
class Comparison:
    """One work timed both ways (seconds) and how far apart the two results are."""

    model: str
    work: str
    seed_wall: float
    mech_wall: float
    seed_cpu: float
    mech_cpu: float
    max_diff: float  # largest |seed - mechlab| (for generation: the number of differing tokens)
    scale: float  # largest |seed| (what max_diff is small against)

    @property
    def ratio_wall(self) -> float:
        return self.seed_wall / self.mech_wall

    @property
    def ratio_cpu(self) -> float:
        return self.seed_cpu / self.mech_cpu


@dataclass
class Report:
    model: str
    device: str
    rows: list[Comparison]
    fwd_s: float
    fwd_bwd_s: float
    atp_s: float

    @property
    def atp_ratio(self) -> float:
        """mechlab's AtP over one forward plus one forward-backward (wall)."""
        return self.atp_s / (self.fwd_s + self.fwd_bwd_s)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable, device: str):
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _compare(model_name: str, work: str, seed_fn: Callable, mech_fn: Callable, check: Callable, device: str,
             repeats: int, tol: float) -> Comparison:
    """Seed and mechlab interleaved ``repeats`` times (best wall and best CPU time of each); ``check(seed, mech)``
    gives (max_diff, scale) and a disagreement above ``tol * scale`` raises."""
    best = {"seed": [float("inf")] * 2, "mech": [float("inf")] * 2}
    results = {}
    for _ in range(repeats):
        for key, fn in (("seed", seed_fn), ("mech", mech_fn)):
            wall, cpu, results[key] = _timed(fn, device)
            best[key] = [min(best[key][0], wall), min(best[key][1], cpu)]
    diff, scale = check(results["seed"], results["mech"])
    if not diff <= tol * max(scale, 1e-6):
        raise RuntimeError(f"{model_name} {work}: the seed's algorithm and mechlab's disagree (max |diff| {diff:.3g}, "
                           f"scale {scale:.3g}); the timings would compare different computations.")
    return Comparison(model_name, work, best["seed"][0], best["mech"][0], best["seed"][1], best["mech"][1], diff,
                      scale)


def _diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    if a.shape != b.shape:
        raise RuntimeError(f"shapes differ: seed {tuple(a.shape)} vs mechlab {tuple(b.shape)}")
    return float((a - b).abs().max()), float(a.abs().max())


def _prompt(model, n_tokens: int) -> str:
    """A filler-text prompt of about ``n_tokens`` tokens in this model's tokenizer."""
    from mechlab.data.filler import make_filler

    words = " ".join(make_filler(max(8, n_tokens // 4), seed=0)).split(" ")
    lo, hi = 1, len(words)
    while lo < hi:  # the longest prefix of words within n_tokens tokens
        mid = (lo + hi + 1) // 2
        if model.to_tokens(" ".join(words[:mid])).shape[1] <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def bench_model(name: str, size: str, *, device: str | None = None, repeats: int = 1) -> Report:
    """Every comparison of the module docstring on one model."""
    from mechlab.core.loading import load_model
    from mechlab.core.runs import logit_diff_metric
    from mechlab.methods.attribution import attribution_patching, integrated_gradients
    from mechlab.methods.generate import generate
    from mechlab.methods.patching import activation_patching
    from mechlab.methods.self_repair import self_repair_sweep

    spec = SIZES[size]
    model = load_model(name, device=device, verbose=False)
    dev = str(next(model.parameters()).device)
    vocab = min(model.cfg.d_vocab, 250)
    g = torch.Generator().manual_seed(0)

    def pair(batch, pos):
        clean = torch.randint(5, vocab, (batch, pos), generator=g)
        corrupted = clean.clone()
        corrupted[:, pos // 2] = torch.randint(5, vocab, (batch,), generator=g)
        return clean.to(dev), corrupted.to(dev)

    rows = []
    n_prompt, n_new = spec["gen"]
    prompt = _prompt(model, n_prompt)
    rows.append(_compare(
        name, f"generate {n_new} tokens after {model.to_tokens(prompt).shape[1]}",
        lambda: seeds.generate_until_stop(model, prompt, [], n_new),
        lambda: generate(model, [prompt], max_new_tokens=n_new, stop_at_eos=False, progress=False).tokens[0],
        lambda a, b: (float((a != b.to(a.device)).sum()) if a.shape == b.shape else float(len(a)), 1.0),
        dev, repeats, tol=0.0))

    batch, pos = spec["one"]
    clean, corrupted = pair(batch, pos)
    metric = logit_diff_metric(torch.randint(5, vocab, (batch,), generator=g),
                               torch.randint(5, vocab, (batch,), generator=g))
    kinds = ("resid_pre", "mlp_out", "z")

    def atp_check(seed, mech):
        worst = (0.0, 0.0)
        for kind in kinds:
            s = seed[kind]
            if s.ndim == 3:  # [layer, pos, head] -> [layer * head, pos] like mechlab's rows
                s = s.permute(0, 2, 1).flatten(0, 1)
            d, sc = _diff(s, mech[kind].values)
            worst = (max(worst[0], d), max(worst[1], sc))
        return worst

    rows.append(_compare(name, f"AtP resid_pre+mlp_out+z {batch}x{pos}",
                         lambda: seeds.atp_all_to_cpu(model, clean, corrupted, metric, kinds),
                         lambda: attribution_patching(model, clean, corrupted, metric, kinds=kinds),
                         atp_check, dev, repeats, tol=1e-3))
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    rows.append(_compare(name, f"exact patching, {n_heads} heads' z {batch}x{pos}",
                         lambda: seeds.patch_heads_loop(model, clean, corrupted, metric),
                         lambda: activation_patching(model, clean, corrupted, metric, kind="z", per_position=False,
                                                     progress=False).values,
                         _diff, dev, repeats, tol=1e-4))
    steps = spec["steps"]
    rows.append(_compare(name, f"IG on z, {model.cfg.n_layers} layers x {steps} alphas {batch}x{pos}",
                         lambda: seeds.ig_loop(model, clean, corrupted, metric, steps),
                         lambda: integrated_gradients(model, clean, corrupted, metric, kind="z", steps=steps,
                                                      progress=False).values,
                         _diff, dev, repeats, tol=1e-3))

    sb, sp = spec["sweep"]
    s_clean, s_corr = pair(sb, sp)

    def sweep_check(seed, mech):
        d1 = _diff(seed["delta_logit"], mech.delta_logit.values)
        d2 = _diff(seed["heads_change"], mech.direct.values + mech.heads.values)
        return max(d1[0], d2[0]), max(d1[1], d2[1])

    rows.append(_compare(name, f"self-repair, resample-ablate {n_heads} heads {sb}x{sp}",
                         lambda: seeds.backup_sweep(model, s_clean, s_corr),
                         lambda: self_repair_sweep(model, s_clean, s_corr, progress=False),
                         sweep_check, dev, repeats, tol=1e-3))

    # AtP against the least it can cost: one forward (the target run) + one forward-backward (the baseline run)
    with torch.no_grad():
        fwd = min(_timed(lambda: model(clean), dev)[0] for _ in range(max(2, repeats)))

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        metric(model(clean)).sum().backward()

    fwd_bwd_s = min(_timed(fwd_bwd, dev)[0] for _ in range(max(2, repeats)))
    model.zero_grad(set_to_none=True)
    atp_s = min(_timed(lambda: attribution_patching(model, clean, corrupted, metric, kinds=kinds), dev)[0]
                for _ in range(max(2, repeats)))
    return Report(name, dev, rows, fwd, fwd_bwd_s, atp_s)


def format_table(reports: list[Report]) -> str:
    """A markdown table of every comparison, then AtP's overhead line per model."""
    lines = ["| model | work | seed s | mechlab s | seed / mechlab | seed CPU s | mechlab CPU s | CPU ratio | "
             "max diff |", "|---|---|---|---|---|---|---|---|---|"]
    for rep in reports:
        for r in rep.rows:
            lines.append(f"| {r.model} | {r.work} | {r.seed_wall:.2f} | {r.mech_wall:.2f} | {r.ratio_wall:.1f}x | "
                         f"{r.seed_cpu:.2f} | {r.mech_cpu:.2f} | {r.ratio_cpu:.1f}x | {r.max_diff:.1g} |")
    for rep in reports:
        lines.append(f"{rep.model} on {rep.device}: forward {rep.fwd_s:.3f} s, forward-backward {rep.fwd_bwd_s:.3f} s, "
                     f"AtP {rep.atp_s:.3f} s = {rep.atp_ratio:.2f} x (forward + forward-backward)")
    return "\n".join(lines)


def run(size: str = "tiny", *, models: list[str] | None = None, device: str | None = None,
        repeats: int = 1) -> list[Report]:
    """Benchmark every model of ``size`` (or ``models``), print the table, return the reports."""
    if size not in SIZES:
        raise ValueError(f"size={size!r}; expected one of {sorted(SIZES)}.")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"benchmarks.run --size {size}: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {load:.1f} on {os.cpu_count()} cores at the start", flush=True)
    reports = []
    for name in models or SIZES[size]["models"]:
        print(f"benchmarking {name} ...", flush=True)
        reports.append(bench_model(name, size, device=device, repeats=repeats))
    print(format_table(reports))
    if hasattr(os, "getloadavg"):
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--models", nargs="*", default=None, help="override the size's model list")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats (best of each is kept)")
    args = parser.parse_args(argv)
    run(args.size, models=args.models, device=args.device, repeats=args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
