"""Version 0 is built in a child process once per distinct model, then recalled from the cache."""

from __future__ import annotations

import pytest

from coordinator import model_layout
from coordinator.api.study import ModelSpec, StudySpec, TrainingSpec
from coordinator.api.tensors import decode_tensors
from coordinator.errors import InvalidInput


@pytest.fixture
def builds(monkeypatch, tmp_path) -> list[str]:
    """Counts child-process builds; an empty memory cache and a fresh disk cache folder."""
    calls: list[str] = []
    real = model_layout._build

    def counting(spec: StudySpec) -> bytes:
        calls.append(spec.name)
        return real(spec)

    monkeypatch.setattr(model_layout, "_build", counting)
    monkeypatch.setattr(model_layout, "_memory", type(model_layout._memory)())
    monkeypatch.setenv(model_layout.CACHE_ENV, str(tmp_path / "cache"))
    return calls


def test_the_same_model_is_built_once_and_a_different_seed_again(builds) -> None:
    first = model_layout.build_initial_model(StudySpec(name="a"))
    assert model_layout.build_initial_model(StudySpec(name="b")) == first  # the name does not shape the model
    reseeded = model_layout.build_initial_model(StudySpec(name="c", training=TrainingSpec(seed=1)))
    assert builds == ["a", "c"]
    assert reseeded != first
    assert [n for n in decode_tensors(reseeded)[0]] == [n for n in decode_tensors(first)[0]]


def test_a_fresh_process_reads_the_disk_cache_and_a_damaged_entry_is_rebuilt(builds, monkeypatch) -> None:
    blob = model_layout.build_initial_model(StudySpec(name="a"))
    monkeypatch.setattr(model_layout, "_memory", type(model_layout._memory)())  # as if restarted
    assert model_layout.build_initial_model(StudySpec(name="b")) == blob
    assert builds == ["a"]
    [entry] = (model_layout._disk_folder() or pytest.fail("no cache folder")).glob("*.fct")
    entry.write_bytes(blob[: len(blob) // 2])
    monkeypatch.setattr(model_layout, "_memory", type(model_layout._memory)())
    assert model_layout.build_initial_model(StudySpec(name="c")) == blob
    assert builds == ["a", "c"]
    assert entry.read_bytes() == blob


def test_a_refused_model_is_not_cached(builds) -> None:
    tiny = StudySpec(name="tiny", model=ModelSpec(max_parameters=10))
    for _ in range(2):
        with pytest.raises(InvalidInput, match="max_parameters"):
            model_layout.build_initial_model(tiny)
    assert builds == ["tiny", "tiny"]
