"""Everything about DICOM bytes and the upper layer: PDUs, DIMSE, associations, files, identification, status codes, UID names."""
