"""The real servers the target tests run against, each started as a process on free ports.

moto in server mode (S3), Azurite (Azure Blob), gcp-storage-emulator (GCS) and Orthanc with
its DICOMweb plugin. Each is a context manager that yields where the server is and stops it
after; a server that is not installed raises ``Unavailable``, which fixtures turn into a skip
naming the install command (CI installs them all: see .ci/run).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from testbed.processes import free_port

ROOT = Path(__file__).resolve().parent.parent


class Unavailable(Exception):
    """The server is not installed here; the message says how to install it."""


def _answers(url: str, auth: tuple[str, str] | None = None) -> Callable[[], bool]:
    def check() -> bool:
        request = urllib.request.Request(url)
        if auth:
            import base64

            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # an HTTP answer of any kind: the server is up
        except OSError:
            return False

    return check


@contextlib.contextmanager
def _process(
    command: list[str], folder: Path, ready: Callable[[], bool], what: str, seconds: float = 30
) -> Iterator[Path]:
    """Run command in folder, logging to folder/<what>.log, until ready() or a clear error."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{what}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=folder, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + seconds
        while not ready():
            if proc.poll() is not None:
                tail = log.read_text()[-2000:]
                raise RuntimeError(f"{what} exited with {proc.returncode}: {tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not answer within {seconds}s")
            time.sleep(0.1)
        yield log
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass(frozen=True)
class S3Server:
    url: str

    def env(self, bucket: str) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "S3_BUCKET": bucket,
        }


@contextlib.contextmanager
def moto_s3(folder: Path, port: int | None = None) -> Iterator[S3Server]:
    """moto in server mode: a real HTTP S3 endpoint (on ``port``, else a free one)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with _process(command, folder, _answers(url), "moto"):
        yield S3Server(url)


AZURITE_ACCOUNT = "devstoreaccount1"  # Azurite's well-known development account and key
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@dataclass(frozen=True)
class AzureServer:
    port: int

    @property
    def account_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    def connection_string(self, key: str = AZURITE_KEY) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};"
            f"BlobEndpoint={self.account_url};"
        )

    def env(self, container: str) -> dict[str, str]:
        return {
            "AZURE_STORAGE_CONNECTION_STRING": self.connection_string(),
            "AZURE_CONTAINER": container,
        }


def azurite_binary() -> str | None:
    """AZURITE_BLOB if set, else the repo's own .cache/node install, else azurite-blob on PATH."""
    if found := os.environ.get("AZURITE_BLOB"):
        return found
    local = ROOT / ".cache" / "node" / "node_modules" / ".bin" / "azurite-blob"
    return str(local) if local.is_file() else shutil.which("azurite-blob")


@contextlib.contextmanager
def azurite(folder: Path) -> Iterator[AzureServer]:
    """Azurite's blob service, in memory."""
    binary = azurite_binary()
    if binary is None:
        raise Unavailable(
            "Azurite is not installed: npm install --prefix .cache/node azurite@3.35.0 "
            "(or set AZURITE_BLOB to an azurite-blob executable)"
        )
    port = free_port()
    command = [
        *(binary, "--blobHost", "127.0.0.1", "--blobPort", str(port)),
        *("--inMemoryPersistence", "--skipApiVersionCheck", "--disableTelemetry", "--silent"),
    ]
    with _process(command, folder, _answers(f"http://127.0.0.1:{port}/"), "azurite"):
        yield AzureServer(port)


@dataclass(frozen=True)
class GcsServer:
    url: str
    log: Path

    def env(self, bucket: str) -> dict[str, str]:
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "GOOGLE_CLOUD_PROJECT": "test",
            "GCS_BUCKET": bucket,
        }

    def requests_for(self, bucket: str) -> list[str]:
        """The logged object requests (method and path) that went to one bucket."""
        return [line for line in self.log.read_text().splitlines() if f"/b/{bucket}/o" in line]


@contextlib.contextmanager
def gcs_emulator(folder: Path) -> Iterator[GcsServer]:
    """gcp-storage-emulator, in memory, logging its requests."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    binary = Path(sys.executable).parent / "gcp-storage-emulator"
    command = [str(binary), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"]
    ready = _answers(f"{url}/storage/v1/b?project=test")
    with _process(command, folder, ready, "gcs-emulator") as log:
        yield GcsServer(url, log)


ORTHANC = Path("/usr/sbin/Orthanc")
ORTHANC_DICOMWEB = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_USER, ORTHANC_PASSWORD = "dicomflow", "secret"


ORTHANC_AET = "ORTHANC"  # Orthanc's default AE title, set explicitly so tests can name it


@dataclass(frozen=True)
class Modality:
    """A DICOM peer declared to Orthanc (its ``DicomModalities`` entry): Orthanc calls it with
    ``local_aet`` (its own AE title when None)."""

    aet: str
    port: int
    host: str = "127.0.0.1"
    local_aet: str | None = None

    def config(self) -> dict[str, object]:
        entry: dict[str, object] = {"AET": self.aet, "Host": self.host, "Port": self.port}
        if self.local_aet:
            entry["LocalAet"] = self.local_aet
        return entry


@dataclass(frozen=True)
class OrthancServer:
    root: str  # http://127.0.0.1:{port}
    dicom_port: int = 0  # its DICOM (DIMSE) listener
    aet: str = ORTHANC_AET
    auth: tuple[str, str] = (ORTHANC_USER, ORTHANC_PASSWORD)  # its REST API's basic auth

    @property
    def dicomweb(self) -> str:
        return f"{self.root}/dicom-web"

    def env(self) -> dict[str, str]:
        return {
            "DICOMWEB_URL": self.dicomweb,
            "DICOMWEB_USERNAME": ORTHANC_USER,
            "DICOMWEB_PASSWORD": ORTHANC_PASSWORD,
        }


@contextlib.contextmanager
def orthanc(
    folder: Path, modalities: Mapping[str, Modality] | None = None
) -> Iterator[OrthancServer]:
    """Orthanc on free ports, local clients only, basic auth, DICOMweb at /dicom-web; each of
    ``modalities`` declared by its name (``/modalities/{name}/store`` sends to it). Every
    other setting is Orthanc's default."""
    if not (ORTHANC.is_file() and ORTHANC_DICOMWEB.is_file()):
        raise Unavailable(
            "Orthanc and its DICOMweb plugin are needed: apt-get install orthanc orthanc-dicomweb"
        )
    folder.mkdir(parents=True, exist_ok=True)
    port, dicom_port = free_port(), free_port()
    config = {
        "Name": "dicomflow-test",
        "HttpPort": port,
        "DicomPort": dicom_port,
        "DicomAet": ORTHANC_AET,
        "DicomModalities": {name: m.config() for name, m in (modalities or {}).items()},
        "RemoteAccessAllowed": False,  # 1.10 listens on every address: refuse other hosts
        "AuthenticationEnabled": True,
        "RegisteredUsers": {ORTHANC_USER: ORTHANC_PASSWORD},
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "Plugins": [str(ORTHANC_DICOMWEB)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    root = f"http://127.0.0.1:{port}"
    ready = _answers(f"{root}/system", (ORTHANC_USER, ORTHANC_PASSWORD))
    with _process([str(ORTHANC), str(folder / "orthanc.json")], folder, ready, "orthanc"):
        yield OrthancServer(root, dicom_port)
