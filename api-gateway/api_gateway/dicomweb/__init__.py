"""DICOMweb (PS3.18) served by the gateway under ``/dicomweb``."""
