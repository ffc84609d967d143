"""The ProgEmu model: image array + hypothesis in, image array + interpretation out. Knows nothing of DICOM."""
