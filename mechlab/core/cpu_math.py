"""One call that makes torch's elementwise math on the CPU give the same numbers on every run.

torch's CPU build hands contiguous float ``sqrt``, ``exp``, ``log``, ``tanh``, ``erf``, ``sin``, ... to Intel MKL's
vector-math library (VML), each intra-op thread calling it on its own chunk. MKL chooses the kernel behind each
VML function lazily, on the first call. When two threads make that first call at the same moment, one of them can
run a low-accuracy kernel for its whole chunk of that one call: about 3e-4 relative error where the requested
accuracy is 1 ulp. Every later call is right. This is pytorch/pytorch#188792 (oneMKL 2024.2, the version bundled in
the torch 2.x wheels, ours included).

What it did to this course: the first forward pass of a notebook computes every LayerNorm scale with ``sqrt`` (and
GELU with ``tanh``). When that pass covers enough positions to be split across threads, the first thread's half of
the batch could come out with scales 3e-4 off, and logits off by up to 1e-2, in that pass only. Unit 06 compares
its first pass (the self-repair sweep) with a later one at 1e-3: under nbval on a 2-core machine it failed 1 run of
8 before this warm-up and 0 of 35 after. In ``tests/test_cpu_math.py``'s scenario (one small matmul, then a
LayerNorm scale over 5,000 rows) the first and second ``sqrt`` differed in 21 of 60 fresh processes without the
warm-up and in 0 of 60 with it.

:func:`warm_up_vector_math` makes the first call of each of those functions on one thread (a one-element tensor
never leaves the calling thread), so that the choice is made before any concurrent use. It costs microseconds, is
idempotent, and is harmless where torch has no MKL (macOS, ARM). ``load_model`` calls it before it builds a model.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

# The unary functions ATen routes to MKL VML (aten/src/ATen/cpu/vml.h), in both precisions VML has.
VML_FUNCTIONS = ("abs", "acos", "asin", "atan", "cos", "erf", "erfc", "exp", "expm1", "log", "log10", "log1p",
                 "log2", "sin", "sqrt", "tan", "tanh", "trunc")
VML_DTYPES = (torch.float32, torch.float64)


@functools.cache
def warm_up_vector_math() -> tuple[str, ...]:
    """Call every function of :data:`VML_FUNCTIONS` once per dtype of :data:`VML_DTYPES` on a one-element CPU
    tensor (on the calling thread only). Runs once per process; returns the names it called."""
    with torch.no_grad():
        for dtype in VML_DTYPES:
            one = torch.full((1,), 0.5, dtype=dtype)
            for name in VML_FUNCTIONS:
                getattr(torch, name)(one)
    return VML_FUNCTIONS


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one CPU thread inside the block, restoring the previous thread count after (also on an error).

    For work on tiny matrices (unit 03's toy, the unit 05 checkers' 2-layer models), where extra threads only add
    synchronisation: on a busy 2-core machine they made the toy's training 20x slower and the checkers 4-10x slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


__all__ = ["VML_DTYPES", "VML_FUNCTIONS", "one_thread", "warm_up_vector_math"]
