"""The fuzz suite's profiles, its work folder and the summary ``make fuzz`` prints.

Two hypothesis profiles, chosen by ``FUZZ_PROFILE`` (``ci`` unless set):

- ``ci``, what ``make test`` runs: a few dozen cases per target, the same ones every run
  (``derandomize``, which keeps no database), so that a red CI names a change, not a draw;
- ``fuzz``, what ``make fuzz`` runs: new random cases every run, at least 10,000 in all. It
  keeps failing examples in hypothesis's database under ``.cache/hypothesis`` (git-ignored),
  so a failure found replays first in every later ``make fuzz`` until it is fixed; then it is
  kept for good as an ``@example`` on its property, which both profiles run.

Each case is bounded in time and memory by ``tests.fuzz.bounds.bounded``, besides hypothesis's
deadline.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from tests.fuzz.bounds import CASES

ROOT = Path(__file__).resolve().parents[2]
PROFILE = os.environ.get("FUZZ_PROFILE", "ci")
# examples per input target: (ci, fuzz); the fuzz column adds up to more than 10,000 (the
# descriptor counts only what the validator accepts, about a quarter)
BUDGET: dict[str, tuple[int, int]] = {
    "validator": (120, 3000),
    "descriptor": (80, 4000),  # about a quarter get past the validator
    "multipart form-data": (80, 1500),
    "STOW multipart/related": (60, 1000),
    "multipart/related reader": (60, 1000),
    "tag expressions": (150, 1000),
    "QIDO query keys": (150, 1000),
    "QIDO matching": (150, 1000),
}
MIN_FUZZ_CASES = 10_000

_common = {
    "deadline": timedelta(seconds=3),  # and a hard stop by bounded() per case
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("ci", derandomize=True, database=None, **_common)
settings.register_profile(
    "fuzz",
    derandomize=False,
    database=DirectoryBasedExampleDatabase(ROOT / ".cache" / "hypothesis"),
    **_common,
)
settings.load_profile(PROFILE)


def cases(target: str) -> settings:
    """The settings of one target's property: its share of the profile's cases."""
    ci, fuzz = BUDGET[target]
    return settings(max_examples=fuzz if PROFILE == "fuzz" else ci)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the files one case needs (the same for every case of a target)."""
    return tmp_path_factory.mktemp("fuzz")


_FAILED: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed and "tests/fuzz/" in report.nodeid:
        _FAILED.append(report.nodeid)


def _input_cases() -> int:
    """Cases of the input targets (the API's requests are counted apart)."""
    return sum(CASES[target] for target in BUDGET)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A fuzz run of fewer input cases than promised fails (unless asked for a subset)."""
    short = _input_cases() < MIN_FUZZ_CASES
    if PROFILE == "fuzz" and CASES and short and not session.config.option.keyword:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not CASES:
        return
    write = terminalreporter.write_line
    terminalreporter.section(f"fuzz summary (profile {PROFILE})")
    for target, count in sorted(CASES.items(), key=lambda item: -item[1]):
        write(f"{target:<32} {count:>7} cases")
    inputs = _input_cases()
    write(f"{'input cases':<32} {inputs:>7} (files, bodies, strings)")
    write(f"{'total':<32} {sum(CASES.values()):>7} cases, {len(_FAILED)} failed test(s)")
    for nodeid in _FAILED:
        write(f"  failed: {nodeid}")
    if PROFILE == "fuzz" and inputs < MIN_FUZZ_CASES:
        write(f"fewer than {MIN_FUZZ_CASES} input cases ran")
