"""Errors for DICOM input we refuse.

Each message is one line, safe to show to a user and to log: it never contains
patient names, IDs or birth dates.
"""


class DicomInputError(ValueError):
    """A DICOM object that cannot be used as a prior image."""


class NotDicomError(DicomInputError):
    """Not a DICOM file, or a truncated one."""


class NoPixelDataError(DicomInputError):
    """The object carries no pixel data."""


class UnsupportedImageError(DicomInputError):
    """Multi-frame, colour, or a modality other than CR, DX or grayscale SC."""


class ImageTooLargeError(DicomInputError):
    """The image exceeds the configured size limit."""


class PixelDataError(DicomInputError):
    """The header is usable but the pixel data cannot be decoded: corrupt, truncated, or an unsupported encoding."""


class PatientRecordError(DicomInputError):
    """A patient or study attribute that every output copies from the prior is missing or malformed."""
