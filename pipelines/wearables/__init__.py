"""Wearable ingestion: device CSV exports, WFDB records and FHIR valueSampledData, each cut to one
normalised window per patient (the latest before the index date)."""
