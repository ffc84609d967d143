"""Helpers for the tests: real servers on loopback (Orthanc, the node, a FHIR server), DICOM fixtures, validators."""
