"""Exercise checkers, one module per unit (``mechlab.checks.unit03`` ...), built on :mod:`mechlab.checks.core`.

A checker runs the learner's function and a reference implementation on small random cases and says
which case failed and by how much::

    from mechlab.checks import unit03
    unit03.check_causal_mask(my_causal_mask)   # prints "passed 4 cases" or raises CheckFailed
"""

from mechlab.checks.core import Case, CheckFailed, compare_tensors, run_cases

__all__ = ["Case", "CheckFailed", "compare_tensors", "run_cases"]
