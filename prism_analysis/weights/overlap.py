"""Overlap of two updates, tensor by tensor: the statistics behind PRISM Eq. 2 and F26.

For d1 = b1 - a1 and d2 = b2 - a2 of one shape: <d1, d2>, ||d1||^2, ||d2||^2 in float64, the changed
masks M1, M2 at tau (the rule of :mod:`prism_analysis.metrics`), |M1|, |M2|, |M1 & M2|, and the
overlap expected by chance for independent masks of those densities (tensor by tensor, summed).
:class:`OverlapStats` follows update / compute / merge like
:class:`~prism_analysis.weights.update.UpdateStats`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..accumulator import Accumulator, state
from ..metrics import DEFAULT_THRESHOLD, bits_equal, changed_mask
from .update import CHUNK, ordered_dot, promote, use_fused


@dataclass
class OverlapStats(Accumulator):
    """Streaming statistics of two updates d1 = b1 - a1 and d2 = b2 - a2 over tensor pairs.

    Changed masks M1, M2 follow :mod:`prism_analysis.metrics` (the rule UpdateStats uses); the sums
    leave out elements where d1 or d2 is not finite.
    """

    tau: float = DEFAULT_THRESHOLD
    numel: int = state(0)
    dot: float = state(0.0)  # <d1, d2>
    sq1: float = state(0.0)  # ||d1||^2
    sq2: float = state(0.0)  # ||d2||^2
    n1: int = state(0)  # |M1|
    n2: int = state(0)  # |M2|
    n12: int = state(0)  # |M1 & M2|
    expected_n12: float = state(0.0)  # sum over tensors of n_t p1_t p2_t

    def update(self, a1, b1, a2, b2) -> OverlapStats:
        """Add one tensor of each update (all four of one shape; a pair of different dtypes is
        compared in the wider one, as UpdateStats does)."""
        a1, b1 = promote(a1.reshape(-1), b1.reshape(-1))
        a2, b2 = promote(a2.reshape(-1), b2.reshape(-1))
        n = a1.numel()
        if use_fused(a1, b1, a2, b2):
            from . import fused

            acc, cnt = fused.overlap_stats(a1, b1, a2, b2, self.tau)
        else:
            acc, cnt = _torch_overlap(a1, b1, a2, b2, self.tau)
        return self.add(
            {
                "numel": n,
                "dot": acc[0],
                "sq1": acc[1],
                "sq2": acc[2],
                "n1": cnt[0],
                "n2": cnt[1],
                "n12": cnt[2],
                "expected_n12": cnt[0] * cnt[1] / n if n else 0.0,
            }
        )

    def compute(self) -> dict:
        union = self.n1 + self.n2 - self.n12
        exp_union = self.n1 + self.n2 - self.expected_n12
        jac = self.n12 / union if union else math.nan
        chance = self.expected_n12 / exp_union if exp_union else math.nan
        return {
            "cosine": self.dot / math.sqrt(self.sq1 * self.sq2) if self.sq1 > 0 and self.sq2 > 0 else math.nan,
            "jaccard": jac,
            "jaccard_chance": chance,
            "jaccard_over_chance": jac / chance if chance and not math.isnan(chance) else math.nan,
            "overlap_1_in_2": self.n12 / self.n2 if self.n2 else math.nan,  # share of M2 also in M1
            "overlap_2_in_1": self.n12 / self.n1 if self.n1 else math.nan,  # share of M1 also in M2
        }


def _torch_overlap(a1, b1, a2, b2, tau: float) -> tuple[list[float], list[int]]:
    """Torch path (GPU, other dtypes, small tensors): the results of ``fused.overlap_stats``."""
    acc = torch.zeros(3, dtype=torch.float64, device=a1.device)
    cnt = torch.zeros(3, dtype=torch.int64, device=a1.device)
    for s in range(0, a1.numel(), CHUNK):
        x1, y1, x2, y2 = (t[s : s + CHUNK] for t in (a1, b1, a2, b2))
        m1 = changed_mask(x1.double(), y1.double(), tau, bits_equal(x1, y1))
        m2 = changed_mask(x2.double(), y2.double(), tau, bits_equal(x2, y2))
        d1, d2 = y1.double() - x1.double(), y2.double() - x2.double()
        ok = torch.isfinite(d1) & torch.isfinite(d2)
        d1, d2 = torch.where(ok, d1, 0), torch.where(ok, d2, 0)
        acc[0] += ordered_dot(d1, d2)
        acc[1] += ordered_dot(d1, d1)
        acc[2] += ordered_dot(d2, d2)
        cnt[0] += m1.sum()
        cnt[1] += m2.sum()
        cnt[2] += (m1 & m2).sum()
    return acc.tolist(), cnt.tolist()
