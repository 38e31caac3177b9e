"""An analysis study on the synthetic federation, with real processes: every pooled figure checked
against the same statistics computed here on the silos' raw data pooled; a small cell suppressed
at its silo and absent from every total; DP noise charged to the silo's privacy ledger."""

import json
import math

import numpy as np
import pytest
import tomli_w

from compliance.ledger import PrivacyLedger
from coordinator.api.study import AnalysisSpec, StudySpec, TrainingSpec
from fedcare.analysis_report import write_analysis
from pipelines.ingest import ingest_silo
from privacy.secure_sum import FIXED_POINT_BITS

pytestmark = pytest.mark.slow

AGE_EDGES = tuple(float(a) for a in range(20, 100, 5))  # fine bins: some hold fewer than 10 patients
GLUCOSE_EDGES = (70.0, 100.0, 126.0, 200.0)


def _spec() -> StudySpec:
    return StudySpec(name="cohort overview", kind="analysis",
                     training=TrainingSpec(min_silos=2, expected_silos=3, round_timeout_s=300),
                     analysis=AnalysisSpec(bins={"age": AGE_EDGES, "glucose": GLUCOSE_EDGES, "image_series": (2.0,),
                                                 "wearable_hours": (0.04, 0.045, 1.0)}))


def _raw(hospital, spec: StudySpec) -> dict:
    """The silo's cohort as the silo reads it, with the statistics computed here by numpy; "ehr" holds a column per
    `spec.analysis_columns`: the EHR values, then the per-modality summaries (image series, wearable hours)."""
    result = ingest_silo(fhir=[hospital.fhir_dir], dicom=[hospital.dicom_dir], wearables=[hospital.wearables_dir],
                         cohort=spec.cohort, pseudonym_key=b"test-key-0123456789abcdef")
    ds = result.dataset
    summaries = [getattr(result.summaries, n) for n in spec.analysis_columns[len(spec.cohort.ehr_columns):]]
    return {"ehr": np.column_stack([ds.ehr_raw.numpy(), *summaries]), "mask": ds.mask.numpy(),
            "label": ds.label.numpy()}


def _cells(values: np.ndarray, edges) -> list[int]:
    v = values[~np.isnan(values)]
    bounds = [-np.inf, *edges, np.inf]
    return [int(((v >= lo) & (v < hi)).sum()) for lo, hi in zip(bounds, bounds[1:])]


def _check_pooled_against_raw(pooled: dict, raws: dict[str, dict], spec: StudySpec, *, exact_silos: list[str],
                              moments: bool = True) -> int:
    """Each pooled figure equals the raw figure summed over the silos that released it; returns how many
    cells some silo suppressed (each checked to be left out of the totals)."""
    def released_sum(count: dict, raw_of) -> int:
        return sum(raw_of(s) for s in exact_silos if s not in count["suppressed_at"])

    assert pooled["patients"]["value"] == released_sum(pooled["patients"], lambda s: len(raws[s]["label"]))
    assert pooled["label_positive"]["value"] == released_sum(pooled["label_positive"],
                                                             lambda s: int(raws[s]["label"].sum()))
    for k, m in enumerate(("ehr", "image", "signal")):
        assert pooled["modalities"][m]["value"] == released_sum(pooled["modalities"][m],
                                                                lambda s: int(raws[s]["mask"][:, k].sum()))
    hidden = 0
    for j, name in enumerate(spec.analysis_columns):
        col = pooled["columns"][j]
        assert col["name"] == name
        present = lambda s: int((~np.isnan(raws[s]["ehr"][:, j])).sum())  # noqa: E731
        assert col["present"]["value"] == released_sum(col["present"], present)
        # moments: pooled from per-silo (n, mean, M2), against numpy on the pooled raw values
        values = np.concatenate([raws[s]["ehr"][:, j] for s in col["moments_from"] if s in exact_silos] or [np.zeros(0)])
        values = values[~np.isnan(values)]
        if moments:
            assert col["n"] == values.size
        if moments and values.size > 1:
            assert math.isclose(col["mean"], values.mean(), rel_tol=1e-9, abs_tol=1e-9)
            assert math.isclose(col["sd"], values.std(ddof=1), rel_tol=1e-9, abs_tol=1e-9)
        if col["histogram"] is None:
            continue
        per_silo = {s: _cells(raws[s]["ehr"][:, j], col["edges"]) for s in exact_silos}
        for i, cell in enumerate(col["histogram"]):
            assert cell["value"] == sum(per_silo[s][i] for s in exact_silos if s not in cell["suppressed_at"])
            for s in cell["suppressed_at"]:
                if s in exact_silos:
                    hidden += 1
                    # the silo held this cell back, and its own column shows no value for it
                    own = pooled["per_silo"][s]["columns"][j]["histogram"]
                    assert own is None or own[i] is None
        for s in exact_silos:
            released = pooled["per_silo"][s]["columns"][j]["histogram"]
            if released is None:
                continue
            gone = [i for i, c in enumerate(released) if c is None]
            # complementary suppression: never exactly one hidden cell, so present minus the released
            # cells is a sum of at least two unknowns, not a patient count
            assert len(gone) != 1, (s, name, released)
            if gone:
                assert sum(per_silo[s][i] for i in gone) > 0
                assert any(0 < per_silo[s][i] < 10 for i in gone)  # a primary cell was among them
    return hidden


def test_analysis_pools_exactly_suppresses_small_cells_and_charges_dp(cluster, tmp_path) -> None:
    client = cluster.start_coordinator()
    spec = _spec()
    names = [h.name for h in cluster.hospitals]
    configs = {h.name: cluster.start_silo(h) for h in cluster.hospitals}
    raws = {h.name: _raw(h, spec) for h in cluster.hospitals}

    study = client.submit(spec)
    summary = cluster.wait_for(client, study, lambda st, s: st.state == "done", timeout=600)
    pooled = summary["analysis"]
    assert summary["kind"] == "analysis" and pooled["silos"] == sorted(names)
    hidden = _check_pooled_against_raw(pooled, raws, spec, exact_silos=names)
    assert hidden > 0, "the fine age bins should hold a cell below 10 somewhere"
    # figures no silo suppressed are the pooled raw figures themselves
    assert pooled["patients"]["value"] == sum(len(r["label"]) for r in raws.values())
    # what each silo held back is said, not hidden
    assert any(pooled["suppressed"][s] for s in names)

    # The researcher's files: JSON, CSV and the HTML report with its plots.
    paths = write_analysis(summary, tmp_path / "results")
    assert json.loads(paths["json"].read_text())["patients"]["value"] == pooled["patients"]["value"]
    assert "age" in paths["csv"].read_text() and "<img" in paths["html"].read_text()
    assert paths["pdf"].read_bytes().startswith(b"%PDF")

    # The same analysis summed under pairwise masks: the coordinator opens the same totals and shows no silo's own.
    masked_spec = _spec().model_copy(update={"analysis": _spec().analysis.model_copy(update={"secure_sum": "masking"})})
    masked = cluster.wait_for(client, client.submit(StudySpec.model_validate(masked_spec.model_dump())),
                              lambda st, s: st.state == "done", timeout=600)["analysis"]
    assert masked["secure_sum"] == "masking" and masked["unopened"] is None and masked["per_silo"] == {}
    for key in ("patients", "label_positive", "label_negative", "modalities", "suppressed"):
        assert masked[key] == pooled[key], key
    for got, want in zip(masked["columns"], pooled["columns"]):
        assert (got["present"], got["histogram"], got["n"]) == (want["present"], want["histogram"], want["n"])
        if want["sd"] is not None:
            # M2 = Σx² - (Σx)²/n from fixed-point sums: exact to about n·2^-FIXED_POINT_BITS, which matters only where the
            # spread is tiny against the values (the synthetic wearable hours: every recording lasts about 159 s)
            fixed_point = got["n"] * 2.0 ** -(FIXED_POINT_BITS - 1)
            assert math.isclose(got["mean"], want["mean"], rel_tol=1e-9)
            assert math.isclose(got["m2"], want["m2"], rel_tol=2e-7, abs_tol=fixed_point), got["name"]

    # The last hospital turns on DP noise for released statistics; the next analysis charges its ledger.
    noisy = names[-1]
    cluster.kill(noisy)
    cfg = configs[noisy]
    text = cfg.read_text() + tomli_w.dumps({"disclosure": {"dp": "gaussian", "epsilon": 1.0, "delta": 1e-6}})
    cfg.write_text(text)
    cluster.start_silo(next(h for h in cluster.hospitals if h.name == noisy))
    study2 = client.submit(_spec())
    summary2 = cluster.wait_for(client, study2, lambda st, s: st.state == "done", timeout=600)
    pooled2 = summary2["analysis"]
    assert list(pooled2["dp"]) == [noisy]
    claim = pooled2["dp"][noisy]
    assert claim["mechanism"] == "gaussian" and 0 < claim["epsilon"] <= 1.0 + 1e-6
    ledger = PrivacyLedger(cfg.parent / "state" / "privacy-ledger.sqlite")
    rows = ledger.rows(study2, silo=noisy)
    assert len(rows) == 1 and rows[0].epsilon == pytest.approx(claim["epsilon"]) and rows[0].steps == claim["queries"]
    assert ledger.rows(study) == []  # no noise, no charge
    # the other silos' figures are still exact; the pooled totals include the noisy silo's released counts
    exact = names[:-1]
    _check_pooled_against_raw({**pooled2, **_without(pooled2, noisy)}, raws, spec, exact_silos=exact, moments=False)


def _without(pooled: dict, silo: str) -> dict:
    """The pooled figures less one silo's released values (taken from its own column)."""
    own = pooled["per_silo"][silo]

    def less(count: dict, value) -> dict:
        return {"value": count["value"] - (value or 0), "suppressed_at": count["suppressed_at"]}

    cols = []
    for j, col in enumerate(pooled["columns"]):
        mine = own["columns"][j]
        hist = None if col["histogram"] is None else [
            less(c, (mine["histogram"] or [None] * len(col["histogram"]))[i]) for i, c in enumerate(col["histogram"])]
        cols.append({**col, "present": less(col["present"], mine["present"]), "histogram": hist,
                     "moments_from": [s for s in col["moments_from"] if s != silo],
                     "n": col["n"] - (mine["present"] if silo in col["moments_from"] else 0)})
    return {"patients": less(pooled["patients"], own["patients"]),
            "label_positive": less(pooled["label_positive"], own["label_positive"]),
            "modalities": {m: less(c, own["modalities"].get(m)) for m, c in pooled["modalities"].items()},
            "columns": cols}
