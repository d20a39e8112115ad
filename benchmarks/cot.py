"""Speed and memory of unit 07 at Gemma-2b shapes (random init, so it runs without the gated weights).

Two measurements, the acceptance criteria of issue 7:

    S4 generate + DLA   26 seed-style 7-shot prompts: greedy generation up to "Answer:" (batched, KV cache,
                        ``mechlab.methods.generate``) then DLA of " True" - " False" at the last position of every
                        problem
                        (``mechlab.methods.dla``, batched). The seed notebook took 8 min 43 s (523 s) for this loop on
                        Gemma-2b; the goal is >= 10x faster (<= 52 s).
    AtP peak memory     attribution patching on resid_pre, mlp_out, z, q, k, v of one 1100-token pair in bfloat16;
                        the goal is < 15 GiB (CUDA peak allocated; on the CPU the process's peak RSS is reported).

A random-init model never writes "Answer:", so every row runs to ``max_new_tokens``: an upper bound on the time
a trained model takes. ``--size tiny`` runs the same code on ``tiny-gemma`` for CI::

    python -m benchmarks.cot --size tiny
    python -m benchmarks.cot --size full --device cuda
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

SEED_S4_SECONDS = 8 * 60 + 43  # the seed notebook's S4 loop over 26 problems on Gemma-2b
SIZES = {  # size -> (model, shots, problems, max_new_tokens, AtP tokens, DLA batch)
    "tiny": ("tiny-gemma", 1, 4, 8, 200, 4),
    "full": ("random-gemma-2b", 7, 26, 64, 1100, 4),
}
GIB = 2**30


def _sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _peak_reset(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> tuple[float, str]:
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / GIB, "CUDA peak allocated"
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / GIB, "process peak RSS (CPU)"


def time_s4(model, n_shots: int, n_problems: int, max_new_tokens: int, batch: int) -> dict:
    """Generate until "Answer:" then DLA " True" - " False" at each problem's last token; seconds and sizes."""
    import torch

    from mechlab.cot.runner import make_items
    from mechlab.data.prontoqa import make_problems
    from mechlab.methods.dla import logit_diff_dla
    from mechlab.methods.generate import generate

    device = str(next(model.parameters()).device)
    pool = make_problems(max(2 * n_shots, 4), seed=101, style="seed")
    items = make_items(make_problems(n_problems, seed=7, style="seed"), pool, n_shots=n_shots, style="seed")
    _sync(device)
    start = time.perf_counter()
    out = generate(model, [x.prompt for x in items], max_new_tokens=max_new_tokens, stop=["Answer:"],
                   batch_size=batch * 2, progress=False)
    _sync(device)
    gen_s = time.perf_counter() - start
    texts = out.full_texts
    toks = [model.to_tokens(t, truncate=False)[0] for t in texts]
    width = max(len(t) for t in toks)
    padded = torch.stack([torch.cat([t, t[-1:].expand(width - len(t))]) for t in toks])
    pos = torch.tensor([len(t) - 1 for t in toks])
    true_id = model.to_tokens(" True", prepend_bos=False)[0, :1]
    false_id = model.to_tokens(" False", prepend_bos=False)[0, :1]
    values = []
    for s in range(0, len(padded), batch):
        sl = slice(s, s + batch)
        n = len(padded[sl])
        res = logit_diff_dla(model, padded[sl].to(device), true_id.expand(n), false_id.expand(n), pos=pos[sl],
                             per_prompt=True)
        values.append(res.values)
    _sync(device)
    total = time.perf_counter() - start
    assert torch.cat(values, 1).shape[1] == n_problems
    return {"s4_generate_s": gen_s, "s4_total_s": total, "s4_prompt_tokens": max(len(t) for t in toks),
            "s4_speedup_vs_seed": SEED_S4_SECONDS / total}


def atp_memory(model, n_tokens: int) -> dict:
    """Peak memory and time of AtP on all of unit 07's kinds for one ``n_tokens`` pair."""
    import torch

    from mechlab.core.runs import logit_diff_metric
    from mechlab.cot.analysis import ATP_KINDS
    from mechlab.methods.attribution import attribution_patching

    device = str(next(model.parameters()).device)
    g = torch.Generator().manual_seed(0)
    vocab = min(model.cfg.d_vocab, 700)
    clean = torch.randint(5, vocab, (1, n_tokens), generator=g)
    corrupted = clean.clone()
    corrupted[0, n_tokens // 3] = (clean[0, n_tokens // 3] + 1) % vocab
    metric = logit_diff_metric(torch.tensor([7]), torch.tensor([8]))
    _sync(device)
    _peak_reset(device)
    start = time.perf_counter()
    res = attribution_patching(model, clean.to(device), corrupted.to(device), metric, kinds=list(ATP_KINDS))
    _sync(device)
    seconds = time.perf_counter() - start
    peak, how = _peak_gib(device)
    assert all(torch.isfinite(r.values).all() for r in res.values())
    return {"atp_s": seconds, "atp_peak_gib": peak, "atp_memory": how, "atp_tokens": n_tokens}


def measure(size: str = "tiny", *, device: str | None = None) -> dict:
    """Both measurements at ``size``: S4 in float32 (as the seed ran), AtP in bfloat16."""
    import torch

    from mechlab.core.loading import load_model

    if size not in SIZES:
        raise ValueError(f"size={size!r}; expected one of {sorted(SIZES)}.")
    name, shots, problems, new_tokens, atp_tokens, batch = SIZES[size]
    row = {"model": name, "size": size}
    model = load_model(name, device=device, dtype="float32", verbose=False)
    row["device"] = str(next(model.parameters()).device)
    row.update(time_s4(model, shots, problems, new_tokens, batch))
    del model
    if row["device"].startswith("cuda"):
        torch.cuda.empty_cache()
    model = load_model(name, device=device, dtype="bfloat16", verbose=False)
    row.update(atp_memory(model, atp_tokens))
    del model
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    r = measure(args.size, device=args.device)
    print(f"{r['model']} on {r['device']}")
    print(f"  S4 generate-until-'Answer:' + DLA, {SIZES[args.size][2]} problems ({r['s4_prompt_tokens']} tokens max): "
          f"{r['s4_total_s']:.2f} s (generation {r['s4_generate_s']:.2f} s); seed {SEED_S4_SECONDS} s -> "
          f"{r['s4_speedup_vs_seed']:.1f}x (goal >= 10x at full size on a GPU)")
    print(f"  AtP on resid/mlp/z/q/k/v, {r['atp_tokens']} tokens, bfloat16: {r['atp_s']:.2f} s, "
          f"{r['atp_peak_gib']:.2f} GiB ({r['atp_memory']}; goal < 15 GiB at full size)")


if __name__ == "__main__":
    main()
