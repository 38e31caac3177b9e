"""The live parser validates the FHIR Observation elements it reads (typed fast path), refusing a bad one by name."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from compliance.audit import AuditLog
from pipelines.ehr.fhir_fields import FhirValidation
from pipelines.errors import SignalError
from silo_node.streams.messages import parse_message

from .test_streams import START, _intake_app, heart_rate_observation

LIMITS = {"max_bytes": 1 << 20, "max_samples": 10_000}
BOTH = [FhirValidation.USED_FIELDS, FhirValidation.FULL]


def _obs(**changes: object) -> bytes:
    doc = json.loads(heart_rate_observation(START, [70.0, 71.5, 73.0], period_ms=500))
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = doc
        for p in parents:
            node = node[p]
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize("validation", BOTH)
def test_both_paths_read_the_same_samples(validation: FhirValidation):
    ((channel, t, v),) = parse_message(_obs(), validation=validation, **LIMITS)
    assert channel == "heart_rate" and v.tolist() == [70.0, 71.5, 73.0]
    np.testing.assert_allclose(t - START.timestamp(), [0.0, 0.5, 1.0])


@pytest.mark.parametrize("validation", BOTH)
@pytest.mark.parametrize("changes, element", [
    ({"valueSampledData__period": "fast"}, r"valueSampledData\.period"),
    ({"valueSampledData__dimensions": 0}, r"valueSampledData\.dimensions"),
    ({"status": None}, "status"),
    ({"effectiveDateTime": "01/03/2024 08:00"}, "effectiveDateTime"),
    ({"valueQuantity": {"value": 70}}, r"value\[x\]|valueSampledData"),  # two value[x] choices
    ({"code__coding": [{"system": "http://loinc.org", "code": "8867-4  x"}]}, r"code\.coding\.0\.code"),
])
def test_a_bad_element_that_is_read_is_quarantined_naming_it(validation: FhirValidation, changes: dict, element: str):
    with pytest.raises(SignalError) as refused:
        parse_message(_obs(**changes), validation=validation, **LIMITS)
    assert refused.value.reason == "invalid_fhir"
    assert re.search(element, str(refused.value)) and "\n" not in str(refused.value)


def test_elements_not_read_are_validated_only_with_full():
    odd = _obs(meta={"lastUpdated": "yesterday"})
    assert parse_message(odd, validation=FhirValidation.USED_FIELDS, **LIMITS)
    with pytest.raises(SignalError, match="meta.lastUpdated"):
        parse_message(odd, validation=FhirValidation.FULL, **LIMITS)


def test_the_receiver_answers_a_bad_element_with_its_path(tmp_path: Path, node_audit: AuditLog):
    service, client = _intake_app(tmp_path, node_audit)
    r = client.post("/streams/w/MRN-1", content=_obs(valueSampledData__period="fast"))
    assert r.status_code == 422 and r.json()["reason"] == "invalid_fhir"
    assert service.store.counts()["quarantined"] == {"invalid_fhir": 1}
    service.stop()
