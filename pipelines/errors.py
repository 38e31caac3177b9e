"""The one exception hierarchy of `pipelines`.

Messages follow pydicom's style: what was found, what was expected, what to do, and they
name the file, record or field. Each error carries a short `reason` code, declared with its
class (`class FhirError(InputError, reason="invalid_fhir")`); ingestion turns input errors into
quarantine entries counted by that code.
"""

from __future__ import annotations

from pathlib import Path


class PipelineError(Exception):
    """Base class of every error raised by `pipelines`."""

    reason: str = "error"

    def __init_subclass__(cls, *, reason: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if reason is not None:
            cls.reason = reason

    def __init__(self, message: str, *, reason: str | None = None, source: str | Path | None = None) -> None:
        self.reason = reason or type(self).reason
        self.source = str(source) if source is not None else None
        super().__init__(f"{self.source}: {message}" if self.source else message)


class ConfigurationError(PipelineError, reason="configuration"):
    """Arguments that cannot work (a too-short pseudonym key, an impossible cohort)."""


class InputError(PipelineError, reason="invalid_input"):
    """One input file or record that cannot be used; it is quarantined, the run goes on."""


class FhirError(InputError, reason="invalid_fhir"):
    """A FHIR resource or bundle that cannot be used (malformed, or invalid in an element ingestion reads)."""


class DicomError(InputError, reason="invalid_dicom"):
    """A DICOM file, series or PACS answer that cannot be used."""


class SignalError(InputError, reason="invalid_signal"):
    """A wearable signal (CSV, WFDB, FHIR sampledData, a stream message) that cannot be used."""


class TabularError(InputError, reason="bad_row"):
    """A row, column or file of a tabular EHR extract (CSV, Parquet, OMOP table) that cannot be used."""


class UnitError(InputError, reason="unknown_unit"):
    """A quantity whose unit cannot be converted to the unit the cohort asks for."""


class DatasetError(PipelineError, reason="invalid_dataset"):
    """Tensors that do not form a valid `MultimodalDataset` (shape, dtype, NaN/Inf)."""


#: What one hostile file can raise besides our own errors; caught per file, never aborting the run.
EXHAUSTION = (MemoryError, RecursionError)


def refusal(error: InputError | MemoryError | RecursionError, source: str | Path) -> InputError:
    """The quarantine entry for a file refused with `error`: an `InputError` as it is, exhaustion explained."""
    return error if isinstance(error, InputError) else exhausted(error, source)


def exhausted(error: MemoryError | RecursionError, source: str | Path) -> InputError:
    """The quarantine entry for an input that exhausted memory or the interpreter's stack while being read."""
    if isinstance(error, RecursionError):
        return InputError("nests deeper than the reader can follow (RecursionError); expected a FHIR/JSON document of "
                          "ordinary depth. The file is quarantined; re-export it from the source system",
                          reason="too_deep", source=source)
    return InputError("needs more memory than this machine has (MemoryError); the file is quarantined. Check it is what it "
                      "claims to be, or lower its size at the source", reason="too_large", source=source)
