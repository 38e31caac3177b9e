"""EHR ingestion: FHIR R4 (bundles, Bulk Data NDJSON), tabular extracts (CSV/Parquet, generic or OMOP CDM),
the on-disk fact store they fill, unit conversion (UCUM), and the per-patient features and label."""
