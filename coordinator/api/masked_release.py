"""An analysis study's release summed under pairwise masks (`analysis.secure_sum = "masking"`).

The silo turns its `CohortRelease` (after its own disclosure control) into one integer vector over
cells the study fixes (`release_cells`), masks it (privacy.secure_sum, Bonawitz et al. 2017) and
sends a `MaskedRelease`; the coordinator adds the vectors of all the round's participants and
learns the totals only. Moments travel as sums (Σx and Σx², fixed point) with the count they are
over, so the pooled mean and variance follow from the totals (Chan, Golub & LeVeque 1979).

What stays in the clear, per silo: which cells it held back (`held_back`, so a pooled figure names
the silos that withheld theirs and stays a lower bound) and its disclosure claim (threshold, DP
mechanism and ε, the list of what it suppressed).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from pydantic import Field

from coordinator.api.protocol import (
    CohortRelease,
    DisclosureClaim,
    ProtocolError,
    _Wire,
)

if TYPE_CHECKING:
    from coordinator.api.study import StudySpec

class SecureSum(StrEnum):
    """`analysis.secure_sum`: how silos' releases reach the coordinator. NONE: each release in the
    clear (per-silo columns where a silo allows them); MASKING: pairwise-masked vectors, totals only."""

    NONE = "none"
    MASKING = "masking"


#: The `encoding` header of a masked release (a `MaskedRelease` as JSON, in a BLOB_UPDATE).
MASKED_ANALYSIS_ENCODING = "cohort-statistics-masked+json"
MAX_CELLS = 200_000


@dataclass(frozen=True)
class Cell:
    """One summed figure: a count, or a real (fixed point) such as a column's Σx."""

    name: str
    real: bool = False


def release_cells(spec: "StudySpec") -> list[Cell]:
    """The cells of a study's masked release, in order: the same at every silo and at the coordinator."""
    cells = [Cell("patients"), Cell("label_positive"), Cell("label_negative")]
    cells += [Cell(f"modality:{m}") for m in spec.modalities]
    for c in spec.analysis_columns:
        cells += [Cell(f"{c}:present"), Cell(f"{c}:missing"), Cell(f"{c}:moment_n"), Cell(f"{c}:sum", real=True),
                  Cell(f"{c}:sum_squares", real=True)]
        edges = spec.analysis.bins.get(c)
        if edges is not None:
            cells += [Cell(f"{c}:histogram:{i}") for i in range(len(edges) + 1)]
    return cells


def release_values(spec: "StudySpec", release: CohortRelease) -> dict[str, int | float | None]:
    """The release's figure in each cell (None: held back). Moments become n, Σx = n·mean and
    Σx² = M2 + n·mean² over the patients they describe."""
    values: dict[str, int | float | None] = {"patients": release.patients, "label_positive": release.label_positive,
                                             "label_negative": release.label_negative}
    values |= {f"modality:{m}": release.modalities.get(m) for m in spec.modalities}
    for col in release.columns:
        moments = col.mean is not None and col.m2 is not None and bool(col.present)
        n = col.present if moments else None
        values |= {f"{col.name}:present": col.present, f"{col.name}:missing": col.missing, f"{col.name}:moment_n": n,
                   f"{col.name}:sum": n * col.mean if moments else None,
                   f"{col.name}:sum_squares": col.m2 + n * col.mean ** 2 if moments else None}
        for i, cell in enumerate(col.histogram or ()):
            values[f"{col.name}:histogram:{i}"] = cell
    return values


class MaskedRelease(_Wire):
    """A silo's release as a masked vector (the BLOB_UPDATE body under `secure_sum = "masking"`)."""

    masked: list[str] = Field(max_length=MAX_CELLS)  # one ring element per cell, hexadecimal
    held_back: list[int] = Field(default_factory=list, max_length=MAX_CELLS)  # indices of cells it withheld (0 inside)
    partners: list[str] = Field(min_length=2, max_length=10_000)  # the participants the masks were agreed with
    disclosure: DisclosureClaim

    @classmethod
    def from_json(cls, text: str | bytes) -> "MaskedRelease":
        return cls.parse(text, what="masked cohort statistics", limit=64 * MAX_CELLS)

    def check_against(self, spec: "StudySpec") -> "MaskedRelease":
        """The vector has the study's cells; each element is a ring element; held-back indices name cells."""
        n = len(release_cells(spec))
        if len(self.masked) != n:
            raise ProtocolError(f"masked cohort statistics: {len(self.masked)} cells; the study's release has {n}")
        bad = next((i for i in self.held_back if not 0 <= i < n), None)
        if bad is not None:
            raise ProtocolError(f"masked cohort statistics: held_back names cell {bad}; the release has cells 0-{n - 1}")
        try:
            if any(not 0 <= int(v, 16) < 1 << 128 for v in self.masked):
                raise ValueError
        except ValueError:
            raise ProtocolError("masked cohort statistics: every cell must be a hexadecimal integer below 2**128") from None
        return self

    def elements(self) -> list[int]:
        return [int(v, 16) for v in self.masked]
