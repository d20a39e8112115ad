"""Seeded prompt generators, one module per task. Every sample carries its metadata (answers, positions,
template) so methods never have to re-derive what a prompt means.

Modules: ``skip_trigram`` (unit 03), ``ioi``, ``induction``, ``prontoqa``, ``filler`` (the organism's
corpus and the lessons' prompts).
"""
