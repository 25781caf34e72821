"""DICOMweb (PS3.18) under ``/dicomweb``: one module per service, as the standard names it."""
