"""De-identification at ingestion, keyed by the silo's secret (HMAC-SHA256, RFC 2104).

DICOM follows the PS3.15 Annex E Basic Application Level Confidentiality Profile with the
Retain Longitudinal Temporal Information with Modified Dates option (codes 113100, 113107):
private tags, overlays and curves are removed; person names are emptied; the identifying
attributes of Table E.1-1 listed in `REMOVED` are removed; every instance UID is replaced by
`2.25.<HMAC>` (the same UID always maps to the same new UID, so series and studies still
group); every date is shifted by a per-patient offset (1..365 days back, derived from the
key and the MRN, so all of one patient's dates move together); PatientID and PatientName
become the keyed pseudonym. FHIR Patient resources lose names, addresses, telecom, photos,
contacts and identifiers; the pseudonym is their only identifier.

The same MRN gives the same pseudonym in FHIR, DICOM, wearables and tabular extracts, so the
modalities of one patient still join. Nobody without the key can link a pseudonym back.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import date, datetime, timedelta
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

#: PS3.15 Table E.1-1 attributes with action X/Z/D that are not caught by their VR below.
REMOVED = frozenset({
    "AccessionNumber", "AdditionalPatientHistory", "AdmissionID", "AdmittingDiagnosesDescription", "Allergies",
    "BranchOfService", "CountryOfResidence", "CurrentPatientLocation", "DerivationDescription", "DeviceSerialNumber",
    "EthnicGroup", "FillerOrderNumberImagingServiceRequest", "ImageComments", "InstitutionAddress", "InstitutionName",
    "InstitutionalDepartmentName", "IssuerOfPatientID", "MedicalRecordLocator", "MilitaryRank", "Occupation",
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientAddress", "PatientBirthName",
    "PatientBirthTime", "PatientComments", "PatientInsurancePlanCodeSequence", "PatientMotherBirthName",
    "PatientReligiousPreference", "PatientSize", "PatientTelephoneNumbers", "PatientWeight",
    "PerformedProcedureStepDescription", "PerformedProcedureStepID", "PlacerOrderNumberImagingServiceRequest",
    "ProtocolName", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "RegionOfResidence",
    "RequestAttributesSequence", "RequestedProcedureDescription", "RequestedProcedureID", "RequestingService",
    "ScheduledProcedureStepDescription", "ScheduledProcedureStepID", "SeriesDescription", "StationName",
    "StudyDescription", "StudyID", "TextComments", "PatientState", "ResponsiblePerson", "ResponsibleOrganization",
    "PatientBirthDate", "ContentCreatorName", "PersonName", "VerifyingObserverName", "VerifyingOrganization",
})
#: UIDs that name a class or a coding scheme, not an instance: kept (PS3.15 E.3.9).
KEPT_UIDS = frozenset({"SOPClassUID", "ReferencedSOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID",
                       "ImplementationClassUID", "CodingSchemeUID", "ContextUID", "RelatedGeneralSOPClassUID",
                       "OriginalSpecializedSOPClassUID", "SOPClassesInStudy", "RetrieveAETitle"})
BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
MODIFIED_DATES = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
MAX_AGE = 90.0  # ages above 89 are reported as 90 (HIPAA Safe Harbor)


class Deidentifier:
    """Keyed, deterministic replacements: the same input always gives the same output at this silo."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self.fingerprint = self._mac("fingerprint")[:16]  # names the key in cache keys; reveals nothing

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def pseudonym(self, mrn: str) -> str:
        """HMAC-SHA256(key, MRN) in hex; the patient's only identifier after ingestion."""
        return hmac.new(self._key, mrn.encode("utf-8"), hashlib.sha256).hexdigest()

    def reference(self, ref: str) -> str:
        """A FHIR reference (`Patient/123`, `urn:uuid:...`) as an opaque keyed token."""
        return self._mac(f"ref:{ref}")[:32]

    def uid(self, uid: str) -> str:
        """A DICOM instance UID -> `2.25.<128-bit HMAC>` (PS3.5 B.2), consistent across files."""
        return "2.25." + str(int(self._mac(f"uid:{uid}")[:32], 16))

    def date_shift(self, mrn: str) -> timedelta:
        return -timedelta(days=1 + int(self._mac(f"shift:{mrn}")[:8], 16) % 365)

    # -- DICOM -------------------------------------------------------------------------
    def dicom(self, ds: Dataset, mrn: str) -> Dataset:
        """Apply the Basic Profile in place (pixel data untouched) and return `ds`."""
        shift = self.date_shift(mrn)
        ds.remove_private_tags()
        self._dicom_level(ds, shift)
        pid = self.pseudonym(mrn)
        ds.PatientID, ds.PatientName = pid, pid[:16]
        ds.PatientIdentityRemoved = "YES"
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
        ds.DeidentificationMethod = "PS3.15 Basic Profile; Modified Dates; keyed UIDs"
        codes = []
        for value, meaning in (BASIC_PROFILE, MODIFIED_DATES):
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = DicomSequence(codes)
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = self.uid(str(meta.MediaStorageSOPInstanceUID))
        return ds

    def _dicom_level(self, ds: Dataset, shift: timedelta) -> None:
        for elem in list(ds):
            group = elem.tag.group
            if elem.keyword in REMOVED or group & 0xFF00 in (0x5000, 0x6000):  # curves, overlays
                del ds[elem.tag]
            elif elem.VR == "SQ":
                for item in elem.value:
                    self._dicom_level(item, shift)
            elif elem.VR == "PN":
                elem.value = ""
            elif elem.VR == "UI" and elem.keyword not in KEPT_UIDS and elem.value:
                elem.value = ([self.uid(str(v)) for v in elem.value] if elem.VM > 1 else self.uid(str(elem.value)))
            elif elem.VR in ("DA", "DT") and elem.value:
                elem.value = _shift_dicom_date(str(elem.value), shift, elem.VR)

    # -- FHIR --------------------------------------------------------------------------
    def fhir_patient(self, resource: dict[str, Any], mrn: str) -> dict[str, Any]:
        """A de-identified copy of a FHIR Patient (dict): only pseudonym, gender, shifted birth year."""
        out: dict[str, Any] = {"resourceType": "Patient", "id": self.pseudonym(mrn)[:32],
                               "identifier": [{"system": "urn:fedcare:pseudonym", "value": self.pseudonym(mrn)}]}
        if resource.get("gender"):
            out["gender"] = resource["gender"]
        birth = resource.get("birthDate")
        if birth:
            out["birthDate"] = str(birth)[:4]  # year only
        return out


def _shift_dicom_date(value: str, shift: timedelta, vr: str) -> str:
    try:
        day = datetime.strptime(value[:8], "%Y%m%d").date()
    except ValueError:
        return ""  # unparseable dates are emptied, never kept
    shifted = (day + shift).strftime("%Y%m%d")
    return shifted + (value[8:] if vr == "DT" else "")


def age_years(birth: date | None, index: date) -> float | None:
    """Age at the index date in years, capped at `MAX_AGE`; None if unknown."""
    if birth is None:
        return None
    return min((index - birth).days / 365.25, MAX_AGE)
