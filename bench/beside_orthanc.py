"""``make bench``'s rows beside Orthanc (issue 11): STOW-RS, C-STORE, QIDO-RS and WADO-RS, for
dicomflow and for Debian's Orthanc with its DICOMweb plugin, in the same run on the same files.

Both servers run side by side, and are measured in turn, one at a time (the other idles: an
idle dicomflow, its five services and Redis, takes under 2% of one core):

- STOW-RS: the CT slices (512x512, 16-bit) as ``multipart/related`` requests of 25 instances,
  4 clients at once; instances per second from the first request to the last answer.
- C-STORE: dcmtk's ``storescu`` sends a folder of other slices over one association; files
  per second of storescu's whole run.

  These two rates are measured ``BENCH_ROUNDS`` (3) times, alternating between the servers
  (Orthanc's STOW-RS, dicomflow's, Orthanc's C-STORE, dicomflow's, then again with new
  files), and each server's median is its figure: this VM's speed drifts by a third within
  minutes, and measuring one server entirely before the other made that drift part of the
  ratio. Every round is printed under the table.
- QIDO-RS: ``BENCH_QIDO_INSTANCES`` (10,000) small instances (16x16; 10 a series, 4 series a
  study, a patient a study) sent by storescu over one association; once the server holds them
  all (dicomflow: every job archived, so indexed), three queries are each asked
  ``BENCH_LATENCY_SAMPLES`` (100) times with other values, one at a time: studies by a patient
  name prefix (10 studies match), the series of a study, the instances of a series.
- WADO-RS: frame 1, then the rendered JPEG, of ``BENCH_LATENCY_SAMPLES`` distinct slices, one
  request at a time (each rendering is the first of its instance: nothing is cached yet).

Between two steps the bench waits until the server has settled (dicomflow's pipeline has
archived everything it accepted), so each step runs on an idle server. Every answer's status
is checked, and every query's number of results, so no figure is one of errors.

Fairness. Orthanc runs with its defaults (``testbed.servers.orthanc`` sets only its ports,
folders, the DICOMweb plugin and HTTP basic auth, which the bench sends; ``StorageCompression``
and ``OverwriteInstances`` are left at their default, false). dicomflow runs as ``make run``
starts it, with the defaults a user gets (each accepted instance fsynced before its answer,
``FSYNC_UPLOADS``), its DIMSE listener accepting any calling AE title; its STOW-RS answer waits
for each instance's validation (``STOW_VALIDATION_TIMEOUT_S``). The load comes from this
process (httpx, storescu) in both cases, on the same 2 cores as the server.

Targets (issue 11): STOW-RS and C-STORE at least half of Orthanc's rate; QIDO-RS p50 under
20 ms at 10,000 instances. A target missed is marked in the table and fails ``make bench``.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pydicom

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.jobs import FINAL  # noqa: E402
from testbed import servers  # noqa: E402
from testbed.series import ct_slice, write_ct_series  # noqa: E402
from testbed.system import System, start_system, stop_system  # noqa: E402

QIDO_INSTANCES = int(os.environ.get("BENCH_QIDO_INSTANCES", "10000"))
SAMPLES = int(os.environ.get("BENCH_LATENCY_SAMPLES", "100"))
STOW_BATCH, STOW_CLIENTS = 25, 4
PER_SERIES, SERIES_PER_STUDY = 10, 4
QIDO_P50_MS = 20.0
RATE_SHARE = 0.5
BOUNDARY = "dicomflow-bench-stow"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"'
SETTLE_S = 1800
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
RATES = ("stow", "cstore")
Request = tuple[str, int | None]  # a URL, and the number of results expected (None: any)


@dataclass(frozen=True)
class Peer:
    """A server under measure: its DICOMweb root and DICOM listener, and how to wait until it
    holds ``count`` instances, stored and searchable."""

    name: str
    dicomweb: str
    aet: str
    dimse_port: int
    settle: Callable[[int], None]
    auth: tuple[str, str] | None = None


@dataclass
class Files:
    """The generated files both servers get, and what the queries ask of them."""

    stow: list[list[Path]]  # each round's slices
    cstore: list[Path]  # each round's folder of slices
    qido: Path  # a folder
    counts: dict[str, int]  # files in each (a round's, for stow and cstore)
    studies: list[tuple[str, list[str]]] = field(default_factory=list)  # (study, its series)

    @property
    def held_after_rates(self) -> int:
        return ROUNDS * (self.counts["stow"] + self.counts["cstore"])

    @property
    def prefixes(self) -> int:
        """Patient name prefixes ``BENCH^P<nnn>*`` that match 10 studies each."""
        return max(1, len(self.studies) // 10)


def qido_files(folder: Path, count: int) -> list[tuple[str, list[str]]]:
    """``count`` 16x16 CT instances: 10 a series, 4 series a study, one patient a study
    (``BENCH^P0000``, ID ``BENCH-0000``, ...). Returns each study's UID and its series'."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    studies: list[tuple[str, list[str]]] = []
    per_study = PER_SERIES * SERIES_PER_STUDY
    for s in range((count + per_study - 1) // per_study):
        study, series = str(generate_uid()), [str(generate_uid()) for _ in range(SERIES_PER_STUDY)]
        studies.append((study, series))
        for i in range(min(per_study, count - s * per_study)):
            data = ct_slice(
                i,
                rows=16,
                columns=16,
                study_uid=study,
                series_uid=series[i // PER_SERIES],
                seed=s,
                patient_name=f"BENCH^P{s:04d}",
                patient_id=f"BENCH-{s:04d}",
            )
            (folder / f"q{s:05d}_{i:03d}.dcm").write_bytes(data)
    return studies


def stow_bodies(paths: list[Path]) -> list[bytes]:
    """The STOW-RS request bodies: ``multipart/related``, 25 instances each."""
    bodies = []
    for start in range(0, len(paths), STOW_BATCH):
        parts = [
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + path.read_bytes()
            + b"\r\n"
            for path in paths[start : start + STOW_BATCH]
        ]
        bodies.append(b"".join(parts) + f"--{BOUNDARY}--\r\n".encode())
    return bodies


async def stow_rate(peer: Peer, bodies: list[bytes], count: int) -> float:
    """Instances per second, ``STOW_CLIENTS`` clients sending the bodies at once."""
    queue = bodies[::-1]
    headers = {"Content-Type": STOW_TYPE, "Accept": "application/dicom+json"}
    async with httpx.AsyncClient(auth=peer.auth, timeout=600) as client:

        async def sender() -> None:
            while queue:
                answer = await client.post(
                    f"{peer.dicomweb}/studies", content=queue.pop(), headers=headers
                )
                if answer.status_code != 200:
                    raise SystemExit(
                        f"{peer.name}: STOW-RS answered {answer.status_code}: {answer.text[:300]}"
                    )

        t0 = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(STOW_CLIENTS)))
        return count / (time.perf_counter() - t0)


def dcmtk_storescu() -> str | None:
    """dcmtk's storescu: not pynetdicom's, which a virtual environment's bin may also hold."""
    venv = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv)
    return shutil.which("storescu", path=path)


def storescu_rate(peer: Peer, folder: Path, count: int) -> float:
    """Files per second of one storescu association sending ``folder``."""
    binary = dcmtk_storescu()
    assert binary is not None
    command = [binary, "-aet", "BENCHSCU", "-aec", peer.aet, "+sd", "127.0.0.1"]
    t0 = time.perf_counter()
    done = subprocess.run(
        [*command, str(peer.dimse_port), str(folder)],
        capture_output=True,
        text=True,
        timeout=SETTLE_S,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    if done.returncode != 0 or "Failed" in done.stderr:
        raise SystemExit(f"{peer.name}: storescu failed: {(done.stderr + done.stdout)[-1000:]}")
    return count / elapsed


def latencies(
    client: httpx.Client,
    requests: list[Request],
    accept: str,
    peer: Peer,
) -> dict[str, float]:
    """p50 and p95 in ms of GETs made one at a time (after 3 not counted), each answer checked:
    its status, and its number of results when the request says how many it must have."""
    times = []
    for n, (url, expected) in enumerate([*requests[:3], *requests]):
        t0 = time.perf_counter()
        answer = client.get(url, headers={"Accept": accept})
        elapsed = (time.perf_counter() - t0) * 1000
        if answer.status_code != 200 or not answer.content:
            raise SystemExit(f"{peer.name}: GET {url} answered {answer.status_code}")
        if expected is not None and len(answer.json()) != expected:
            raise SystemExit(
                f"{peer.name}: GET {url} gave {len(answer.json())} results, not {expected}"
            )
        if n >= 3:
            times.append(elapsed)
    times.sort()
    return {"p50": statistics.median(times), "p95": times[max(0, int(len(times) * 0.95) - 1)]}


def rates(peers: list[Peer], files: Files) -> dict[str, dict[str, list[float]]]:
    """Each server's STOW-RS and C-STORE rates, ``ROUNDS`` times, in turn (see the module);
    each step on settled servers."""
    found: dict[str, dict[str, list[float]]] = {p.name: {k: [] for k in RATES} for p in peers}
    held = 0
    for r in range(ROUNDS):
        bodies = stow_bodies(files.stow[r])
        for peer in peers:
            print(f"  round {r + 1}: {peer.name}: STOW-RS ...", file=sys.stderr)
            rate = asyncio.run(stow_rate(peer, bodies, len(files.stow[r])))
            found[peer.name]["stow"].append(rate)
            peer.settle(held + len(files.stow[r]))
        del bodies
        held += len(files.stow[r])
        for peer in peers:
            print(f"  round {r + 1}: {peer.name}: C-STORE ...", file=sys.stderr)
            rate = storescu_rate(peer, files.cstore[r], files.counts["cstore"])
            found[peer.name]["cstore"].append(rate)
            peer.settle(held + files.counts["cstore"])
        held += files.counts["cstore"]
    return found


def measure(peer: Peer, files: Files) -> dict[str, float]:
    """The rest of one server's figures, in order, each step on a settled server (after
    ``rates``: it holds their files)."""
    result: dict[str, float] = {}
    held = files.held_after_rates
    print(f"  {peer.name}: {files.counts['qido']} instances for QIDO-RS ...", file=sys.stderr)
    t0 = time.perf_counter()
    result["qido load"] = storescu_rate(peer, files.qido, files.counts["qido"])
    held += files.counts["qido"]
    peer.settle(held)
    result["qido settled"] = files.counts["qido"] / (time.perf_counter() - t0)

    rng = random.Random(11)  # the same queries for both servers
    studies = [rng.choice(files.studies) for _ in range(SAMPLES)]
    prefixes = [rng.randrange(files.prefixes) for _ in range(SAMPLES)]
    web = peer.dicomweb
    with httpx.Client(auth=peer.auth, timeout=60) as client:
        print(f"  {peer.name}: QIDO-RS ...", file=sys.stderr)
        json = "application/dicom+json"
        queries: dict[str, list[Request]] = {
            # ^ and * as they are: Orthanc 1.10.1 does not percent-decode query values
            # (PatientName=BENCH%5EP012%2A matches nothing there), dicomflow takes either
            "qido name": [(f"{web}/studies?PatientName=BENCH^P{p:03d}*", 10) for p in prefixes],
            "qido series": [(f"{web}/studies/{s}/series", len(ss)) for s, ss in studies],
            "qido instances": [
                (f"{web}/studies/{s}/series/{ss[0]}/instances", PER_SERIES) for s, ss in studies
            ],
        }
        for key, requests in queries.items():
            for stat, value in latencies(client, requests, json, peer).items():
                result[f"{key} {stat}"] = value
        print(f"  {peer.name}: WADO-RS ...", file=sys.stderr)
        urls = [instance_url(web, path) for path in files.stow[0][:SAMPLES]]
        for key, suffix, accept in (
            ("frame", "/frames/1", FRAME_ACCEPT),
            ("rendered", "/rendered", "image/jpeg"),
        ):
            gets: list[Request] = [(url + suffix, None) for url in urls]
            for stat, value in latencies(client, gets, accept, peer).items():
                result[f"{key} {stat}"] = value
    return result


def instance_url(web: str, path: Path) -> str:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    series = f"{web}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    return f"{series}/instances/{ds.SOPInstanceUID}"


def dicomflow_peer(system: System) -> Peer:
    def settle(count: int) -> None:
        """Until ``count`` jobs are final; every one of them must be archived."""
        deadline = time.monotonic() + SETTLE_S
        with system.client() as client:
            while True:
                by_state = client.get("/stats").json()["by_state"]
                if sum(by_state.get(state, 0) for state in FINAL) >= count:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"dicomflow did not settle: {by_state}")
                time.sleep(0.5)
        if by_state.get("archived", 0) != count:
            raise SystemExit(f"dicomflow: {count} instances sent, yet {by_state}")

    return Peer("dicomflow", f"{system.url()}/dicomweb", "DICOMFLOW", system.dimse_port, settle)


def orthanc_peer(server: servers.OrthancServer) -> Peer:
    def settle(count: int) -> None:
        """Orthanc answers once it has stored: it must hold ``count`` instances now."""
        with httpx.Client(base_url=server.root, auth=server.auth) as client:
            held = client.get("/statistics").json()["CountInstances"]
        if held != count:
            raise SystemExit(f"Orthanc: {count} instances sent, it holds {held}")

    return Peer("Orthanc", server.dicomweb, server.aet, server.dicom_port, settle, server.auth)


def orthanc_version(server: servers.OrthancServer) -> str:
    with httpx.Client(base_url=server.root, auth=server.auth) as client:
        core = client.get("/system").json()["Version"]
        plugin = client.get("/plugins/dicom-web").json()["Version"]
    return f"Orthanc {core}, DICOMweb plugin {plugin}"


@dataclass(frozen=True)
class Row:
    label: str
    key: str
    target: str = ""

    def met(self, ours: float, theirs: float) -> bool | None:
        if self.target.startswith(">="):
            return ours >= RATE_SHARE * theirs
        if self.target.startswith("p50"):
            return ours < QIDO_P50_MS
        return None


ROWS = (
    Row("STOW-RS, 25 a request, 4 clients (inst/s)", "stow", f">= {RATE_SHARE}x"),
    Row("C-STORE, storescu, one association (inst/s)", "cstore", f">= {RATE_SHARE}x"),
    Row("C-STORE 16x16 into the QIDO set (inst/s)", "qido load"),
    Row("  the same, until stored and indexed (inst/s)", "qido settled"),
    Row("QIDO-RS studies?PatientName=BENCH^P0nn* p50 ms", "qido name p50", "p50 < 20 ms"),
    Row("  p95 ms", "qido name p95"),
    Row("QIDO-RS studies/{study}/series p50 ms", "qido series p50", "p50 < 20 ms"),
    Row("  p95 ms", "qido series p95"),
    Row("QIDO-RS .../series/{series}/instances p50 ms", "qido instances p50", "p50 < 20 ms"),
    Row("  p95 ms", "qido instances p95"),
    Row("WADO-RS frames/1, 512x512 16-bit p50 ms", "frame p50"),
    Row("  p95 ms", "frame p95"),
    Row("WADO-RS rendered (image/jpeg) p50 ms", "rendered p50"),
    Row("  p95 ms", "rendered p95"),
)


@dataclass
class Comparison:
    version: str
    files: Files
    dicomflow: dict[str, float]
    orthanc: dict[str, float]
    rounds: dict[str, dict[str, list[float]]]  # the rates of each round, by server

    def missed(self) -> list[str]:
        return [
            f"{row.label.strip()}: {self.dicomflow[row.key]:.1f} vs Orthanc "
            f"{self.orthanc[row.key]:.1f} ({row.target})"
            for row in ROWS
            if row.met(self.dicomflow[row.key], self.orthanc[row.key]) is False
        ]

    def print(self) -> None:
        counts = self.files.counts
        print(
            f"Beside {self.version}, the same files, one server measured at a time: "
            f"STOW-RS {counts['stow']} and C-STORE {counts['cstore']} CT slices 512x512 16-bit "
            f"(the median of {ROUNDS} rounds in turn), QIDO-RS over "
            f"{self.files.held_after_rates + counts['qido']} instances held, {SAMPLES} requests "
            "a row"
        )
        width = max(len(row.label) for row in ROWS)
        print(
            f"| {'measure':<{width}} | dicomflow |   Orthanc | dicomflow/Orthanc | {'target':<18} |"
        )
        print(f"|{'-' * (width + 2)}|-----------|-----------|-------------------|{'-' * 20}|")
        for row in ROWS:
            ours, theirs = self.dicomflow[row.key], self.orthanc[row.key]
            met = row.met(ours, theirs)
            verdict = "" if met is None else f"{row.target}: {'met' if met else 'MISSED'}"
            print(
                f"| {row.label:<{width}} | {ours:>9.1f} | {theirs:>9.1f} | "
                f"{ours / theirs:>17.2f} | {verdict:<18} |"
            )
        print("dicomflow/Orthanc: in inst/s, above 1 is dicomflow faster; in ms, below 1 is")
        for key, name in (("stow", "STOW-RS"), ("cstore", "C-STORE")):
            mine, others = self.rounds["dicomflow"][key], self.rounds["Orthanc"][key]
            shares = ", ".join(f"{a / b:.2f}" for a, b in zip(mine, others, strict=True))
            print(
                f"{name} rounds (inst/s): dicomflow {', '.join(f'{r:.1f}' for r in mine)}; "
                f"Orthanc {', '.join(f'{r:.1f}' for r in others)}; dicomflow/Orthanc {shares}"
            )


def make_files(folder: Path, slices: int) -> Files:
    """Each round's CT slices for STOW-RS and for C-STORE (a folder each), and the QIDO set."""
    print(f"generating {ROUNDS} x 2 x {slices} CT slices (512x512, 16-bit) ...", file=sys.stderr)
    stow = [write_ct_series(folder / f"stow{r}", slices, seed=1 + r) for r in range(ROUNDS)]
    cstore = [folder / f"cstore{r}" for r in range(ROUNDS)]
    for r, path in enumerate(cstore):
        write_ct_series(path, slices, seed=101 + r)
    print(f"generating {QIDO_INSTANCES} instances 16x16 for QIDO-RS ...", file=sys.stderr)
    studies = qido_files(folder / "qido", QIDO_INSTANCES)
    counts = {"stow": slices, "cstore": slices, "qido": QIDO_INSTANCES}
    return Files(stow, cstore, folder / "qido", counts, studies)


def compare(folder: Path, slices: int, deaths: list[str]) -> Comparison | None:
    """Orthanc and dicomflow measured on the same files; None (and why, on stderr) when
    Orthanc or dcmtk is not installed. dicomflow's services that died are added to ``deaths``."""
    if dcmtk_storescu() is None:
        print("  skipped: dcmtk's storescu is needed: apt-get install dcmtk", file=sys.stderr)
        return None
    # dcmtk (storescu, and Orthanc's DICOM server, built on it) leaves Nagle's algorithm on
    # unless TCP_NODELAY=1 is in its environment, and each C-STORE then waits for a delayed
    # ACK (here 40 files took 1.8 s instead of 0.05 s between storescu and storescp). It is
    # set for storescu and Orthanc alike, so neither figure is that wait; dicomflow's
    # listener sets TCP_NODELAY on its sockets itself.
    os.environ["TCP_NODELAY"] = "1"
    files = make_files(folder, slices)
    try:
        with servers.orthanc(folder / "orthanc") as server:
            version = orthanc_version(server)
            system = start_system(
                folder / "dicomflow",
                redis_fsync="everysec",
                FSYNC_UPLOADS="true",
                CLAIM_IDLE_MS="15000",
                MAX_DELIVERIES="5",
                DIMSE_AE_TITLE="DICOMFLOW",
                DIMSE_ALLOWED_CALLING_AE_TITLES="",  # any calling AE title, as Orthanc's default
            )
            try:
                orthanc, dicomflow = orthanc_peer(server), dicomflow_peer(system)
                print("beside Orthanc: STOW-RS and C-STORE rounds ...", file=sys.stderr)
                rounds = rates([orthanc, dicomflow], files)
                print("beside Orthanc: the rest, Orthanc ...", file=sys.stderr)
                theirs = measure(orthanc, files)
                print("beside Orthanc: the rest, dicomflow ...", file=sys.stderr)
                ours = measure(dicomflow, files)
            finally:
                stop_system(system, check=False)
                deaths.extend(system.unexpected_exits())
    except servers.Unavailable as exc:
        print(f"  skipped: {exc}", file=sys.stderr)
        return None
    for result, name in ((ours, "dicomflow"), (theirs, "Orthanc")):
        result.update({key: statistics.median(rounds[name][key]) for key in RATES})
    return Comparison(version, files, ours, theirs, rounds)


def main() -> None:
    """This section of ``make bench`` alone: ``python bench/beside_orthanc.py``."""
    slices = int(os.environ.get("BENCH_SLICES", "200"))
    deaths: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dicomflow-bench-") as tmp:
        comparison = compare(Path(tmp), slices, deaths)
    missed = []
    if comparison:
        print()
        comparison.print()
        missed = comparison.missed()
    if deaths:
        print(f"\nFAILED: services died during the runs: {' | '.join(deaths)}", file=sys.stderr)
    if missed:
        print(f"\nFAILED: targets missed: {' | '.join(missed)}", file=sys.stderr)
    if deaths or missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
