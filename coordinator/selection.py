"""Adaptive silo selection: which silos train in a round when the study asks for fewer than all.

Score of silo s for round r (each term scaled to [0, 1] over the candidates):

    score = 0.40 · norm + 0.30 · staleness + 0.15 · link + 0.15 · data

- norm: L2 norm of s's last update (metadata `update_norm`) over the largest; silos whose
  updates moved the model most carry most of the remaining progress (Chen et al. 2020,
  "Optimal Client Sampling for Federated Learning"). Unknown (never sent) counts as 1.
- staleness: rounds since s was last selected, over `max_rounds_unselected` (capped at 1).
- link: s's last measured upload speed (metadata `link_bytes_per_s`, measured by the silo)
  over the fastest; unknown counts as 1 (Oort, Lai et al. 2021, weighs system speed too).
- data: s's training samples (from enrollment) over the largest.

Fairness: a silo not selected for `max_rounds_unselected` rounds is forced in before anyone is
ranked, so no silo starves. Ties break by name, so a round's choice is reproducible.

Weight correction: the round's aggregate is FedAvg normalised over the participants,
Σ_{i∈S} nᵢΔᵢ / Σ_{i∈S} nᵢ (the coordinator's rules divide by the participants' total weight,
and under CKKS the silos divide by the summed weight). This self-normalised estimator has the
right scale whatever the subset; because selection is score-based rather than random, it
is not an unbiased estimate of the all-silo average in a single round. Forced rotation
bounds how long any silo's data can be missing from the average.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from coordinator.api.protocol import UpdateMetadata
from coordinator.store import EnrollmentRow, RoundRow, Store, UpdateRow

WEIGHTS = {"norm": 0.40, "staleness": 0.30, "link": 0.15, "data": 0.15}


@dataclass(frozen=True)
class SiloStats:
    name: str
    update_norm: float | None  # of its last update, None if it never sent one
    rounds_unselected: int  # rounds since it was last selected (all rounds so far if never)
    link_bytes_per_s: float | None
    train_samples: int


class SiloSelector:
    """`choose(candidates, k)` -> the k silo names of the round (all of them if k >= len)."""

    def __init__(self, *, max_rounds_unselected: int) -> None:
        self.max_rounds_unselected = max_rounds_unselected

    def scores(self, candidates: list[SiloStats]) -> dict[str, float]:
        def share(value: float | None, largest: float) -> float:
            return 1.0 if value is None or largest <= 0 else min(1.0, value / largest)

        top_norm = max((c.update_norm or 0.0 for c in candidates), default=0.0)
        top_link = max((c.link_bytes_per_s or 0.0 for c in candidates), default=0.0)
        top_data = max((c.train_samples for c in candidates), default=0)
        return {c.name: WEIGHTS["norm"] * share(c.update_norm, top_norm)
                + WEIGHTS["staleness"] * min(1.0, c.rounds_unselected / self.max_rounds_unselected)
                + WEIGHTS["link"] * share(c.link_bytes_per_s, top_link)
                + WEIGHTS["data"] * share(float(c.train_samples), float(top_data))
                for c in candidates}

    def choose(self, candidates: list[SiloStats], k: int) -> list[str]:
        if k >= len(candidates):
            return sorted(c.name for c in candidates)
        forced = sorted((c for c in candidates if c.rounds_unselected >= self.max_rounds_unselected),
                        key=lambda c: (-c.rounds_unselected, c.name))
        chosen = [c.name for c in forced[:k]]
        scores = self.scores(candidates)
        rest = sorted((c.name for c in candidates if c.name not in chosen), key=lambda n: (-scores[n], n))
        return sorted(chosen + rest[: k - len(chosen)])


def silo_stats(store: Store, study_id: str, number: int, silos: list[str]) -> list[SiloStats]:
    """What the store knows of each silo before round `number` of a study."""
    last_selected = {s: 0 for s in silos}
    for rnd in store.all(RoundRow, study_id=study_id):
        if 1 <= rnd.number < number:
            for s in json.loads(rnd.participants_json):
                if s in last_selected:
                    last_selected[s] = max(last_selected[s], rnd.number)
    last_meta: dict[str, tuple[int, UpdateMetadata]] = {}
    for u in store.all(UpdateRow, study_id=study_id):
        if u.silo in last_selected and u.round < number and u.round >= last_meta.get(u.silo, (-1, None))[0]:
            last_meta[u.silo] = (u.round, UpdateMetadata.stored(u.metadata_json))
    samples = {e.silo: e.train_samples for e in store.all(EnrollmentRow, study_id=study_id)}
    out = []
    for s in silos:
        meta = last_meta.get(s, (0, UpdateMetadata()))[1]
        out.append(SiloStats(name=s, update_norm=meta.update_norm, rounds_unselected=number - 1 - last_selected[s],
                             link_bytes_per_s=meta.link_bytes_per_s,
                             train_samples=int(samples.get(s, 0))))
    return out


def choose_participants(store: Store, study_id: str, number: int, accepted: list[str], *, silos_per_round: int | None,
                        min_silos: int, max_rounds_unselected: int) -> list[str]:
    """The participants of training round `number`: every accepted silo, or the selector's pick."""
    if silos_per_round is None or silos_per_round >= len(accepted):
        return accepted
    k = max(silos_per_round, min_silos)
    return SiloSelector(max_rounds_unselected=max_rounds_unselected).choose(silo_stats(store, study_id, number, accepted), k)
