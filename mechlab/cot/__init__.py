"""The unit 07 study: chain-of-thought on PrOntoQA.

- :mod:`mechlab.cot.runner`: generate and grade, into a resumable results table; summaries by hops
- :mod:`mechlab.cot.pairs`: clean/corrupted pairs for the subtasks S1-S4 (skips counted, with reasons)
- :mod:`mechlab.cot.analysis`: DLA and AtP / IG aggregates over problems
"""
