"""Imaging ingestion: DICOM instances from files or a DICOMweb PACS (PS3.10, PS3.18), grouped into series,
the latest series per patient chosen and decoded to a 2D slice or a 3D volume."""
