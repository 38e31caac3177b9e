"""A training study's feature standardisation taken from an analysis study's pooled results (#19 item 5).

Each numeric EHR feature with pooled moments gets `reference = (mean - sd, mean + sd)`: the silos
map a value to (x - mid) / half-width (pipelines.normalise), which is then (x - pooled mean) / pooled
sd, the same at every silo, instead of each silo's own training statistics. The numbers are written
into the spec itself, so every site approves exactly the standardisation it will apply (the spec's
hash binds it), and `description` names the analysis study they came from.
"""

from __future__ import annotations

from typing import Any

from coordinator.api.protocol import StudyKind
from coordinator.api.study import StudySpec


class StandardisationError(ValueError):
    """The analysis study's results cannot standardise this training spec; the message says why."""


def standardised_from(spec: StudySpec, analysis_summary: dict[str, Any]) -> StudySpec:
    """`spec` with each numeric feature's reference set from the pooled mean and sd of `analysis_summary`
    (summary.json of a finished analysis study). Features without pooled moments keep their own."""
    pooled = analysis_summary.get("analysis")
    if analysis_summary.get("kind") != StudyKind.ANALYSIS.value or pooled is None:
        raise StandardisationError(f"study {analysis_summary.get('study')} is no finished analysis study "
                                   f"(kind {analysis_summary.get('kind')!r}, state {analysis_summary.get('state')!r}); "
                                   "name one whose `fedcare study status` says done")
    moments = {c["name"]: (c["mean"], c["sd"]) for c in pooled["columns"] if c["mean"] is not None and c["sd"]}
    features, used = [], []
    for f in spec.cohort.features:
        if not f.categories and f.name in moments:
            mean, sd = moments[f.name]
            f = f.model_copy(update={"reference": (mean - sd, mean + sd)})
            used.append(f.name)
        features.append(f)
    if not used:
        raise StandardisationError(f"analysis study {analysis_summary.get('study')} pooled no mean and sd for any numeric "
                                   "feature of this spec; check that both studies name the same features")
    note = f"Standardisation from analysis study {analysis_summary.get('study')} ({', '.join(used)})."
    cohort = spec.cohort.model_copy(update={"features": tuple(features)})
    return StudySpec.model_validate({**spec.model_dump(mode="json"), "cohort": cohort.model_dump(mode="json"),
                                     "description": f"{spec.description} {note}".strip()})
