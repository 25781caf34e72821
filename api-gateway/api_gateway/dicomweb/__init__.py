"""DICOMweb (PS3.18) under /dicomweb: one module per service, named as the standard names it."""
