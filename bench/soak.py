"""``make soak``: 1,000 uploads at concurrency 8 while a random service is SIGKILLed every two
seconds and Redis is killed and restarted once (issue 12).

The pipeline runs as ``make run`` runs it (run.py restarts a killed service), on a Redis of its
own with the append-only file fsynced every second, as compose runs it: a Redis killed loses up
to a second of writes, which the gateway's recovery of files without a job must make good.
Each client sends its files one at a time and, as a client should, sends a file again when its
answer did not come (the gateway was killed mid-request) or was a 503 (Redis was down).

Passes (exit 0) when: every upload the gateway accepted (a 202) ends ``archived``, once (one
``archived`` in its history); every file sent is archived byte for byte (the SHA-256 of the
archived original is the file's); no log line of any service holds the patient name every file
carries; and no service died that the soak did not kill. Prints its figures as a table.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared import redis_names as names  # noqa: E402
from testbed.series import ct_slice  # noqa: E402
from testbed.system import System, start_system, stop_system  # noqa: E402

FILES = int(os.environ.get("SOAK_FILES", "1000"))
CONCURRENCY = int(os.environ.get("SOAK_CONCURRENCY", "8"))
KILL_EVERY_S = float(os.environ.get("SOAK_KILL_EVERY_S", "2"))
VICTIMS = ("gateway", "validator", "descriptor", "uploader", "status", "dimse")
PATIENT = "Soak^Secret^Patient"
SETTLE_S = 300


@dataclass
class Soak:
    system: System
    files: list[bytes]
    accepted: dict[str, int] = field(default_factory=dict)  # upload id -> index of its file
    retries: Counter[str] = field(default_factory=Counter)  # why a file was sent again
    kills: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    sending: threading.Event = field(default_factory=threading.Event)

    def send(self, index: int) -> None:
        """Send one file until the gateway says it has it (202) or refuses it for good."""
        data = self.files[index]
        while True:
            try:
                with httpx.Client(base_url=self.system.url(), timeout=60) as client:
                    answer = client.post("/upload", files={"file": (f"{index}.dcm", data)})
            except httpx.HTTPError as exc:
                self.note_retry(type(exc).__name__)
                time.sleep(0.2)
                continue
            if answer.status_code == 503:
                self.note_retry("503")
                time.sleep(0.2)
                continue
            if answer.status_code != 202:
                raise SystemExit(f"file {index}: {answer.status_code} {answer.text[:300]}")
            with self.lock:
                for upload in answer.json()["uploads"]:
                    self.accepted[upload["upload_id"]] = index
            return

    def note_retry(self, why: str) -> None:
        with self.lock:
            self.retries[why] += 1

    def killer(self, redis_at: int) -> None:
        """A random service every KILL_EVERY_S while files are being sent; Redis once, when
        ``redis_at`` files have been accepted."""
        rng = random.Random(12)
        redis_done = False
        while self.sending.is_set():
            time.sleep(KILL_EVERY_S)
            if not redis_done and len(self.accepted) >= redis_at:
                self.system.redis.kill()
                time.sleep(1.0)
                self.system.redis.start()
                self.kills["redis"] += 1
                redis_done = True
                continue
            victim = rng.choice(VICTIMS)
            try:
                self.system.kill(victim)
            except httpx.HTTPError:
                continue  # it is still coming back from the last kill
            self.kills[victim] += 1


def archived_sha256(final: dict[str, object]) -> str:
    details = final["details"]
    assert isinstance(details, dict)
    folder = Path(str(details["archive_path"]))
    return hashlib.sha256((folder / "original.dcm").read_bytes()).hexdigest()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dicomflow-soak-") as tmp:
        print(f"generating {FILES} CT slices (64x64) ...", file=sys.stderr)
        files = [
            ct_slice(i, rows=64, columns=64, seed=i, patient_name=PATIENT) for i in range(FILES)
        ]
        system = start_system(Path(tmp) / "system", redis_fsync="everysec")
        soak = Soak(system, files)
        problems: list[str] = []
        try:
            soak.sending.set()
            killer = threading.Thread(target=soak.killer, args=(FILES * 2 // 5,), daemon=True)
            killer.start()
            started = time.monotonic()
            queue = list(range(FILES))
            taking = threading.Lock()

            def client() -> None:
                while True:
                    with taking:
                        if not queue:
                            return
                        index = queue.pop()
                    soak.send(index)

            threads = [threading.Thread(target=client) for _ in range(CONCURRENCY)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            sent_s = time.monotonic() - started
            soak.sending.clear()
            killer.join()
            print(f"sent in {sent_s:.0f}s; waiting for every upload to end ...", file=sys.stderr)
            # every job the pipeline holds: those whose 202 a client never got (the gateway
            # killed after its transaction, before its answer) must end archived as well
            held = redis.Redis.from_url(system.redis.url, decode_responses=True)
            jobs = {str(i) for i in held.zrange(names.JOBS_BY_TIME, 0, -1)} | set(soak.accepted)
            held.close()
            finals = system.wait_final(sorted(jobs), seconds=SETTLE_S)
            drained_s = time.monotonic() - started

            states = Counter(str(f["status"]) for f in finals.values())
            if set(states) != {"archived"}:
                problems.append(f"not all archived: {dict(states)}")
            for upload_id, final in finals.items():
                history = [h["state"] for h in final["details"]["history"]]
                if history.count("archived") != 1:
                    problems.append(f"{upload_id} archived {history.count('archived')} times")
            expected = {hashlib.sha256(f).hexdigest() for f in files}
            stored = {archived_sha256(f) for f in finals.values() if f["status"] == "archived"}
            if stored != expected:
                problems.append(f"{len(expected - stored)} files not archived byte for byte")
            sent_files = set(soak.accepted.values())
            if sent_files != set(range(FILES)):
                problems.append(f"{FILES - len(sent_files)} files never accepted")
            log = system.log.read_text(errors="replace")
            if any(part in log for part in PATIENT.split("^")):
                problems.append("a log line holds the patient's name")
        finally:
            stop_system(system, check=False)
            problems += system.unexpected_exits()
            kept = ROOT / "test-artifacts" / "soak.log"
            kept.parent.mkdir(exist_ok=True)
            shutil.copyfile(system.log, kept)  # every service's lines, for a failure's story

    rows = [
        ("files", FILES),
        ("clients at once", CONCURRENCY),
        ("uploads accepted (202)", len(soak.accepted)),
        ("jobs in the pipeline (with those whose 202 was lost)", len(finals)),
        ("requests sent again", sum(soak.retries.values())),
        ("  why", ", ".join(f"{k} {n}" for k, n in soak.retries.most_common()) or "-"),
        ("SIGKILLs", sum(soak.kills.values())),
        ("  of", ", ".join(f"{k} {n}" for k, n in sorted(soak.kills.items()))),
        ("seconds to send every file", f"{sent_s:.1f}"),
        ("seconds until every upload ended", f"{drained_s:.1f}"),
        ("uploads archived", states.get("archived", 0)),
        ("archived byte for byte", f"{len(stored & expected)} of {FILES}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\n| {'soak'.ljust(width)} | value |\n|{'-' * (width + 2)}|-------|")
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value} |")
    if problems:
        print("\nFAILED:\n  " + "\n  ".join(problems[:20]), file=sys.stderr)
        print(f"(the services' log: {ROOT / 'test-artifacts' / 'soak.log'})", file=sys.stderr)
        sys.exit(1)
    print("\npassed: every accepted upload archived once, byte for byte; no patient data logged")


if __name__ == "__main__":
    main()
