"""Validator service: decides whether each uploaded file is acceptable DICOM."""
