"""Labelled results: values whose first axis carries names, so nobody has to guess what row 7 was.

Example::

    import torch
    from mechlab.core.results import Labelled
    r = Labelled(torch.tensor([0.1, -2.0, 0.7]), ["embed", "L0H0", "L0 mlp"], unit="logit diff")
    r.top(2)          # [('L0H0', -2.0), ('L0 mlp', 0.7)]   (by absolute value)
    r["L0 mlp"]       # tensor(0.7000)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Labelled:
    """A tensor whose first axis is named by ``labels``; the remaining axes are named by ``axes``.

    ``axes`` lists the names of all axes (the first is usually ``component``, ``layer`` or ``head``);
    ``unit`` says what the numbers measure (e.g. "logit diff", "fraction of clean-corrupted gap").
    """

    values: Tensor
    labels: list[str]
    unit: str = ""
    axes: tuple[str, ...] = ("component",)
    meta: dict = field(default_factory=dict)  # free-form notes: method, direction, normalisation...

    def __post_init__(self) -> None:
        self.labels = list(self.labels)
        if self.values.ndim == 0 or self.values.shape[0] != len(self.labels):
            raise ValueError(
                f"Labelled: values have shape {tuple(self.values.shape)} but {len(self.labels)} labels were given; "
                "the first axis must have one entry per label.")
        if len(set(self.labels)) != len(self.labels):
            dup = sorted({x for x in self.labels if self.labels.count(x) > 1})
            raise ValueError(f"Labelled: labels must be unique; these repeat: {dup}.")
        if len(self.axes) != self.values.ndim:
            raise ValueError(f"Labelled: axes={self.axes} names {len(self.axes)} axes but values have "
                             f"{self.values.ndim}.")

    def __len__(self) -> int:
        return len(self.labels)

    def index(self, label: str) -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            close = [x for x in self.labels if label.lower() in x.lower()][:5]
            raise ValueError(f"unknown label {label!r}; the labels are like {self.labels[:6]}"
                             + (f"; did you mean one of {close}?" if close else ".")) from None

    def __getitem__(self, label: str | Sequence[str]) -> Tensor:
        if isinstance(label, str):
            return self.values[self.index(label)]
        return self.values[[self.index(x) for x in label]]

    def top(self, k: int = 10, *, by_abs: bool = True, largest: bool = True) -> list[tuple[str, float]]:
        """The ``k`` labels with the largest (absolute, by default) value; other axes are summed first."""
        flat = self.values.detach().float()
        if flat.ndim > 1:
            flat = flat.reshape(flat.shape[0], -1).sum(-1)
        key = flat.abs() if by_abs else flat
        k = min(k, len(self.labels))
        idx = torch.topk(key, k, largest=largest).indices.tolist()
        return [(self.labels[i], float(flat[i])) for i in idx]

    def to_dict(self) -> dict[str, float]:
        """For 1-d results: ``{label: value}``."""
        if self.values.ndim != 1:
            raise ValueError(f"to_dict needs a 1-d result; this one has axes {self.axes}.")
        return {lab: float(v) for lab, v in zip(self.labels, self.values.tolist(), strict=True)}

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.values.shape)
        best = ", ".join(f"{lab}={v:+.3g}" for lab, v in self.top(3))
        return f"Labelled({shape} over {self.axes}, unit={self.unit!r}; top: {best})"
