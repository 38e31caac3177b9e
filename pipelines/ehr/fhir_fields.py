"""FHIR R4 validation of the fields ingestion reads, and nothing else ("used-fields", the default).

`fhir.resources` validates every element of a resource against FHIR R4 (about 1,800 records/s
per core, most of it in elements no study reads: narrative, extensions, names, addresses).
Here each resource type ingestion reads is a small pydantic model holding only the elements
`pipelines.ehr.observations`, `pipelines.ehr.fhir` (Patient) and
`pipelines.wearables.sampled` use, typed with fhir.resources' own FHIR primitives
(`fhir.resources.R4B.fhirtypes`: the FHIR R4 §2.24 regexes for date, dateTime, instant, decimal, code, id,
uri), under the same attribute names as the fhir.resources models, so the same fact rules run
on either. Cardinalities (1..1) and choice elements (`value[x]`: at most one; `medication[x]`:
exactly one) of the elements read are checked as FHIR R4 states them. A resource invalid in an
element read is refused with the element's path, as on the full path; elements not read
(unknown ones included) are neither validated nor kept.

`FhirValidation.FULL` keeps fhir.resources' full validation, for a hospital that wants every
record checked against the whole R4 specification (at its speed).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, ClassVar

from fhir.resources.R4B.fhirtypes import (
    CodeType,
    DateTimeType,
    DateType,
    DecimalType,
    IdType,
    InstantType,
    PositiveIntType,
    StringType,
    UriType,
)
from pydantic import BaseModel, ConfigDict, Field, model_validator


class FhirValidation(str, Enum):
    """How much of each FHIR resource is validated (`[data] fhir_validation` of the node config)."""

    USED_FIELDS = "used-fields"  # the elements ingestion reads (this module)
    FULL = "full"  # every element, with fhir.resources


class _Element(BaseModel):
    """Unknown and unread elements are ignored, not validated (fhir.resources forbids unknown ones)."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class _Choices(BaseModel):
    """An element with choice elements: `CHOICES` maps a prefix to whether one is required (1..1); at most one
    may be given. (A mixin, so that elements without choices pay nothing for the check.)"""

    CHOICES: ClassVar[dict[str, bool]] = {}

    @model_validator(mode="before")
    @classmethod
    def _one_of_each_choice(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for prefix, required in cls.CHOICES.items():
                given = [k for k in data if k.startswith(prefix) and k[len(prefix):len(prefix) + 1].isupper()]
                if len(given) > 1:
                    raise ValueError(f"{prefix}[x] is given as {', '.join(sorted(given))}; FHIR R4 allows one of them")
                if required and not given:
                    raise ValueError(f"{prefix}[x] is missing; FHIR R4 requires one {prefix}[x] element")
        return data


class Coding(_Element):
    system: UriType | None = None
    code: CodeType | None = None
    display: StringType | None = None


class CodeableConcept(_Element):
    coding: list[Coding] | None = None
    text: StringType | None = None


class Quantity(_Element):
    value: DecimalType | None = None
    unit: StringType | None = None
    system: UriType | None = None
    code: CodeType | None = None


class Period(_Element):
    start: DateTimeType | None = None


class Reference(_Element):
    reference: StringType | None = None


class Identifier(_Element):
    system: UriType | None = None
    value: StringType | None = None
    type: CodeableConcept | None = None


class SampledData(_Element):
    """FHIR R4 SampledData (§2.24.0.10): origin, period and dimensions are 1..1."""

    origin: Quantity
    period: DecimalType
    factor: DecimalType | None = None
    lowerLimit: DecimalType | None = None
    upperLimit: DecimalType | None = None
    dimensions: PositiveIntType
    data: StringType | None = None


class _Resource(_Element):
    id: IdType | None = None


class Patient(_Resource):
    identifier: list[Identifier] | None = None
    birthDate: DateType | None = None
    gender: CodeType | None = None


class ObservationComponent(_Choices, _Element):
    CHOICES = {"value": False}
    code: CodeableConcept
    valueQuantity: Quantity | None = None
    valueSampledData: SampledData | None = None
    dataAbsentReason: CodeableConcept | None = None


class Observation(_Choices, _Resource):
    CHOICES = {"value": False, "effective": False}
    status: CodeType
    code: CodeableConcept
    subject: Reference | None = None
    effectiveDateTime: DateTimeType | None = None
    effectiveInstant: InstantType | None = None
    effectivePeriod: Period | None = None
    issued: InstantType | None = None
    valueQuantity: Quantity | None = None
    valueCodeableConcept: CodeableConcept | None = None
    valueSampledData: SampledData | None = None
    dataAbsentReason: CodeableConcept | None = None
    component: list[ObservationComponent] | None = None


class Condition(_Choices, _Resource):
    CHOICES = {"onset": False}
    subject: Reference
    code: CodeableConcept | None = None
    verificationStatus: CodeableConcept | None = None
    onsetDateTime: DateTimeType | None = None
    onsetPeriod: Period | None = None
    recordedDate: DateTimeType | None = None


class MedicationRequest(_Choices, _Resource):
    CHOICES = {"medication": True}
    status: CodeType
    subject: Reference
    medicationCodeableConcept: CodeableConcept | None = None
    authoredOn: DateTimeType | None = None


class MedicationStatement(_Choices, _Resource):
    CHOICES = {"medication": True, "effective": False}
    status: CodeType
    subject: Reference
    medicationCodeableConcept: CodeableConcept | None = None
    effectiveDateTime: DateTimeType | None = None
    effectivePeriod: Period | None = None
    dateAsserted: DateTimeType | None = None


class Encounter(_Resource):
    status: CodeType
    class_fhir: Coding = Field(alias="class")
    subject: Reference | None = None
    type: list[CodeableConcept] | None = None
    period: Period | None = None


class ImagingStudy(_Resource):
    status: CodeType
    subject: Reference
    identifier: list[Identifier] | None = None
    started: DateTimeType | None = None
    modality: list[Coding] | None = None


#: resourceType -> the model of the elements read; the resource types ingestion parses
USED_FIELDS: dict[str, type[_Resource]] = {m.__name__: m for m in (
    Patient, Observation, Condition, MedicationRequest, MedicationStatement, ImagingStudy, Encounter)}
