"""dimse-service: the DICOM listener; C-ECHO, C-STORE and C-FIND feed the pipeline."""
