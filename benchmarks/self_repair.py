"""Speed of unit 06's all-heads self-repair sweep: batched resample ablation vs one forward pass with a full cache
per head (the seed notebook's way), on random-init models so it runs offline.

``benchmarks.run`` can import :func:`measure`; on its own::

    python -m benchmarks.self_repair --size tiny                   # CI smoke run (tiny-gpt2, tiny-gemma)
    python -m benchmarks.self_repair --size full --device cuda     # GPT-2-small shapes, 50 x 100 tokens

The acceptance target at full size on a GPU is a speedup of at least 10x; the CPU target is the organism's
all-heads sweep (50 x 100 tokens) under 30 s.
"""

from __future__ import annotations

import argparse

SIZES = {  # size -> (models, prompts, positions, heads timed in the loop (scaled to all heads))
    "tiny": (("tiny-gpt2", "tiny-gemma"), 4, 20, None),
    "full": (("random-gpt2-small",), 50, 100, 24),
    "organism": (("offline",), 50, 100, None),
}


def measure(size: str = "tiny", *, device: str | None = None, models: tuple[str, ...] | None = None) -> list[dict]:
    """One row per model: ``batched_s``, ``loop_s`` (scaled to all heads), ``speedup``, ``heads``."""
    from mechlab.core.loading import load_model
    from mechlab.methods.self_repair import time_sweep

    if size not in SIZES:
        raise ValueError(f"size={size!r}; expected one of {sorted(SIZES)}.")
    names, n_prompts, n_pos, loop_heads = SIZES[size]
    rows = []
    for name in models or names:
        model = load_model(name, device=device, verbose=False)
        row = time_sweep(model, n_prompts, n_pos, loop_heads=loop_heads)
        rows.append({"model": model.mechlab_info.name, "tokens": f"{n_prompts}x{n_pos}", **row})
        del model
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
    parser.add_argument("--device", default=None)
    parser.add_argument("--models", nargs="*", default=None)
    args = parser.parse_args(argv)
    for row in measure(args.size, device=args.device, models=tuple(args.models) if args.models else None):
        print(f"{row['model']:>20} {row['tokens']:>7}  {row['heads']:>4} heads  batched {row['batched_s']:7.2f} s  "
              f"loop {row['loop_s']:7.2f} s  speedup {row['speedup']:5.1f}x")


if __name__ == "__main__":
    main()
