"""``make emulators``: the four cloud emulators, ready for ``make run`` to copy to.

Starts moto (S3), Azurite (Azure Blob), gcp-storage-emulator (GCS) and Orthanc with its
DICOMweb plugin on free local ports, creates a ``dicomflow`` bucket or container in each,
and writes the variables that point the pipeline at them to ``data/emulators.env``. Leave it
running; in another terminal: ``set -a; . data/emulators.env; set +a; make run``.
Ctrl-C stops them. The same servers the tests use (testbed/servers.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testbed import servers  # noqa: E402

NAME = "dicomflow"
EMULATORS: dict[str, Callable[[Path], contextlib.AbstractContextManager[object]]] = {
    "s3": servers.moto_s3,
    "azure": servers.azurite,
    "gcs": servers.gcs_emulator,
    "dicomweb": servers.orthanc,
}


def main() -> None:
    data = Path(os.environ.get("DICOMFLOW_DATA", ROOT / "data"))
    folder = data / "emulators"
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.ExitStack() as stack:
        env: dict[str, str] = {"UPLOAD_TARGETS": "local"}
        for name, start in EMULATORS.items():
            try:
                server = stack.enter_context(start(folder / name))
            except servers.Unavailable as exc:
                print(f"[emulators] {name}: not started: {exc}", file=sys.stderr)
                continue
            env.update(prepare(name, server))
            env["UPLOAD_TARGETS"] += f",{name}"
            print(f"[emulators] {name}: ready", file=sys.stderr)
        out = data / "emulators.env"
        out.write_text("".join(f"{k}='{v}'\n" for k, v in env.items()))  # shell and .env
        print(f"[emulators] variables written to {out}:", file=sys.stderr)
        print(out.read_text(), end="")
        print(
            "[emulators] in another terminal: set -a; . data/emulators.env; set +a; make run",
            file=sys.stderr,
        )
        print("[emulators] Ctrl-C stops them", file=sys.stderr)
        stop.wait()


def prepare(name: str, server: object) -> dict[str, str]:
    """Create the bucket or container in a fresh emulator; the variables that point at it."""
    if isinstance(server, servers.S3Server):
        import boto3

        env = {**server.env(NAME)}
        boto3.client(
            "s3",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        ).create_bucket(Bucket=NAME)
        return env
    if isinstance(server, servers.AzureServer):
        from azure.storage.blob import BlobServiceClient

        BlobServiceClient.from_connection_string(server.connection_string()).create_container(NAME)
        return server.env(NAME)
    if isinstance(server, servers.GcsServer):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        os.environ["STORAGE_EMULATOR_HOST"] = server.url
        storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket(NAME)
        return server.env(NAME)
    assert isinstance(server, servers.OrthancServer), name
    return server.env()


if __name__ == "__main__":
    main()
