"""DICOM and FHIR in and out. Knows nothing of the model: arrays and plain records only."""
