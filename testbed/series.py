"""Synthetic CT instances and series (nothing real in them), as Part 10 files."""

from __future__ import annotations

from pathlib import Path


def ct_slice(
    index: int = 0,
    rows: int = 512,
    columns: int = 512,
    study_uid: str | None = None,
    series_uid: str | None = None,
    seed: int = 0,
    patient_name: str = "Synthetic^Patient",
    patient_id: str = "SYN-0001",
) -> bytes:
    """A valid CT Image Storage instance, 16-bit signed, as Part 10 bytes (nothing real in it)."""
    import io

    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "CT", patient_name, patient_id
    ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "20260101", 1, index + 1
    ds.ImagePositionPatient = [0, 0, float(index)]
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.WindowCenter, ds.WindowWidth = 40, 400
    rng = np.random.default_rng(seed * 100_003 + index)
    y, x = np.mgrid[0:rows, 0:columns]
    body = ((x - columns / 2) ** 2 + (y - rows / 2) ** 2) < (min(rows, columns) * 0.4) ** 2
    pixels = np.where(body, 1064, 24) + rng.integers(-20, 20, (rows, columns))
    ds.PixelData = pixels.astype("<i2").tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def write_ct_series(folder: Path, count: int, seed: int = 0, **kw: object) -> list[Path]:
    """``count`` slices of one synthetic series written to folder, one file each."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    paths = []
    for i in range(count):
        path = folder / f"ct_{seed}_{i:04d}.dcm"
        path.write_bytes(ct_slice(i, study_uid=study, series_uid=series, seed=seed, **kw))  # type: ignore[arg-type]
        paths.append(path)
    return paths
