"""Adaptive silo selection: score order, fairness (nobody starves), the store-backed statistics."""

from __future__ import annotations

import json

from coordinator.selection import SiloSelector, SiloStats, choose_participants
from coordinator.store import EnrollmentRow, RoundRow, Store, UpdateRow, open_engine


def _stats(name, norm=1.0, unselected=0, link=1e6, samples=100):
    return SiloStats(name, norm, unselected, link, samples)


def test_higher_norm_faster_link_and_more_data_win() -> None:
    sel = SiloSelector(max_rounds_unselected=3)
    cands = [_stats("a", norm=0.1), _stats("b", norm=1.0), _stats("c", norm=0.5, link=1e3), _stats("d", norm=0.5)]
    assert sel.choose(cands, 2) == ["b", "d"]
    assert sel.choose(cands, 10) == ["a", "b", "c", "d"]


def test_a_silo_left_out_too_long_is_forced_in() -> None:
    sel = SiloSelector(max_rounds_unselected=3)
    cands = [_stats("a", norm=0.01, unselected=3, samples=1), _stats("b"), _stats("c")]
    assert "a" in sel.choose(cands, 2)


def test_no_silo_starves_over_many_rounds(tmp_path) -> None:
    """Simulated rounds through the store: every silo is picked at least every K+1 rounds."""
    store = Store(open_engine(tmp_path / "c.sqlite"))
    silos = [f"s{i}" for i in range(6)]
    store.add(*[EnrollmentRow(study_id="x", silo=s, accepted=True, train_samples=100 * (i + 1)) for i, s in enumerate(silos)])
    picked: dict[str, list[int]] = {s: [] for s in silos}
    for r in range(1, 13):
        chosen = choose_participants(store, "x", r, silos, silos_per_round=2, min_silos=2, max_rounds_unselected=3)
        assert len(chosen) == 2
        store.add(RoundRow(study_id="x", number=r, state="closed", nonce="n", seed=r, participants_json=json.dumps(chosen),
                           opened_at=0.0, deadline=0.0))
        for s in chosen:
            picked[s].append(r)
            store.add(UpdateRow(study_id="x", round=r, silo=s, blob_sha="0" * 64, size=1, weight=1.0, encoding="tensors",
                                metadata_json=json.dumps({"update_norm": 1.0 + int(s[1:]), "link_bytes_per_s": 1e6}),
                                received_at=0.0))
    for s, rounds in picked.items():
        gaps = [b - a for a, b in zip([0, *rounds], rounds)]
        assert rounds and max(gaps) <= 4, (s, rounds)
    assert choose_participants(store, "x", 13, silos, silos_per_round=None, min_silos=2, max_rounds_unselected=3) == silos
