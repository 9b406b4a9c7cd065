"""Seed spread of a comparison: mean, standard deviation and range of each variant's validation
perplexity over seeds, and which gaps to the best variant exceed the measured seed noise."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

NOISE_SIGMAS = 2.0
"""A gap between two means counts as beyond seed noise when it exceeds this many standard
errors of a difference of means (about a 95% two-sided test for normal noise)."""


@dataclass(frozen=True)
class SeedSummary:
    """One variant's validation perplexity over its seeds."""

    variant: str
    seeds: tuple[int, ...]
    ppls: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.ppls)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.ppls)

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (n - 1 in the denominator); 0 for one seed."""
        return statistics.stdev(self.ppls) if self.n > 1 else 0.0

    @property
    def low(self) -> float:
        return min(self.ppls)

    @property
    def high(self) -> float:
        return max(self.ppls)


@dataclass(frozen=True)
class NoiseVerdict:
    """The seed noise of a comparison and each variant's gap to the best mean."""

    pooled_std: float
    """Root mean of the variants' seed variances (each variant has the same seeds)."""
    threshold: float
    """Gap of two means that counts as beyond noise: NOISE_SIGMAS x pooled_std x sqrt(2/n)."""
    best: str
    gaps: Mapping[str, float]
    """Each variant's mean minus the best mean (0 for the best)."""

    def beyond_noise(self, variant: str) -> bool:
        return self.gaps[variant] > self.threshold


def summarize(per_seed: Mapping[str, Sequence[tuple[int, float]]]) -> list[SeedSummary]:
    """``{variant: [(seed, ppl), ...]}`` -> one summary per variant, in the mapping's order."""
    return [SeedSummary(v, tuple(s for s, _ in runs), tuple(p for _, p in runs))
            for v, runs in per_seed.items()]


def noise_verdict(summaries: Sequence[SeedSummary]) -> NoiseVerdict:
    """Pool the seed variances of ``summaries`` (all with the same number of seeds, at least 2)
    and compare each variant's gap to the best mean with the noise of a difference of means."""
    counts = {s.n for s in summaries}
    if len(counts) != 1 or min(counts) < 2:
        raise ValueError(f"every variant needs the same number (>= 2) of seeds, got {counts}")
    n = counts.pop()
    pooled = math.sqrt(statistics.fmean(s.std ** 2 for s in summaries))
    best = min(summaries, key=lambda s: s.mean)
    return NoiseVerdict(
        pooled_std=pooled, threshold=NOISE_SIGMAS * pooled * math.sqrt(2.0 / n), best=best.variant,
        gaps={s.variant: s.mean - best.mean for s in summaries},
    )


def noise_footnote(summaries: Sequence[SeedSummary], verdict: NoiseVerdict) -> str:
    """One paragraph saying which differences are and are not beyond the measured seed noise."""
    n = summaries[0].n
    others = [s for s in summaries if s.variant != verdict.best]
    beyond = [s for s in others if verdict.beyond_noise(s.variant)]
    within = [s for s in others if not verdict.beyond_noise(s.variant)]

    def listed(items: Sequence[SeedSummary]) -> str:
        return ", ".join(f"{s.variant} (+{verdict.gaps[s.variant]:.3f})" for s in items)

    text = (
        f"Spread: ± is the sample standard deviation over {n} seeds, min–max the range. "
        f"Pooled seed std {verdict.pooled_std:.3f} ppl, so a gap between two means of {n} seeds "
        f"is beyond seed noise when larger than {NOISE_SIGMAS:g}·σ·√(2/{n}) = "
        f"{verdict.threshold:.3f} ppl. Best mean: {verdict.best}."
    )
    if beyond:
        text += f" Beyond seed noise behind it: {listed(beyond)}."
    if within:
        text += f" Within seed noise of it: {listed(within)}."
    return text
