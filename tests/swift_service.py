"""The Swift all-in-one as a session fixture (`swift_service`).

Started once through `scripts/swift-aio start` and stopped at the end, unless it was already
running (then it is reused and left running).  If it cannot be started, every test using it
fails with the script's own explanation: tests marked `swift` are never silently skipped.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "swift-aio"


@dataclass(frozen=True)
class SwiftService:
    auth_url: str
    user: str
    key: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    s3_region: str
    state_dir: Path
    script: Path

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run the script (e.g. `stop-server object`); raise with its output on failure."""
        done = subprocess.run(
            [str(self.script), *args], capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"swift-aio {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}"
            )
        return done

    def pid(self, server: str) -> int | None:
        path = self.state_dir / "run" / f"{server}.pid"
        try:
            return int(path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def swift_options(self, **extra) -> dict:
        return {"auth_url": self.auth_url, "user": self.user, "key": self.key, **extra}

    def s3_options(self, **extra) -> dict:
        return {
            "endpoint_url": self.s3_endpoint,
            "access_key": self.s3_access_key,
            "secret_key": self.s3_secret_key,
            "region": self.s3_region,
            **extra,
        }


def _parse_env(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export ") :].partition("=")
            values[name] = shlex.split(value)[0] if value else ""
    return values


@pytest.fixture(scope="session")
def swift_service() -> Iterator[SwiftService]:
    env_state = os.environ.get("TUTELA_SWIFT_AIO_DIR") or "/tmp/tutela-swift-aio"
    status = subprocess.run([str(SCRIPT), "status"], capture_output=True, text=True, timeout=60)
    # Stop at the end only what this session started from nothing: another session may
    # have one server down for a moment (a fault test) while the rest runs.
    started = status.returncode != 0 and not any(
        ": running" in line for line in status.stdout.splitlines()
    )
    if status.returncode != 0:
        try:
            start = subprocess.run(
                [str(SCRIPT), "start"], capture_output=True, text=True, timeout=600
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.fail(f"cannot start the Swift all-in-one ({SCRIPT} start): {exc}")
        if start.returncode != 0:
            pytest.fail(
                f"cannot start the Swift all-in-one ({SCRIPT} start, exit {start.returncode}):\n"
                f"{start.stderr.strip()}\n{start.stdout.strip()}"
            )
    values = _parse_env(
        subprocess.run([str(SCRIPT), "env"], capture_output=True, text=True, check=True).stdout
    )
    service = SwiftService(
        auth_url=values["TUTELA_SWIFT_AUTH_URL"],
        user=values["TUTELA_SWIFT_USER"],
        key=values["TUTELA_SWIFT_KEY"],
        s3_endpoint=values["TUTELA_S3_ENDPOINT"],
        s3_access_key=values["TUTELA_S3_ACCESS_KEY"],
        s3_secret_key=values["TUTELA_S3_SECRET_KEY"],
        s3_region=values["TUTELA_S3_REGION"],
        state_dir=Path(values.get("TUTELA_SWIFT_AIO_DIR") or env_state),
        script=SCRIPT,
    )
    yield service
    if started:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=120)
