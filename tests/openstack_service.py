"""The OpenStack all-in-one as a session fixture (`openstack_service`).

Started once through `scripts/openstack-aio start` and stopped at the end, unless it was already
running (then it is reused and left running).  If it cannot be started, every test using it fails
with the script's own explanation: tests marked `openstack` are never silently skipped.
Clients use `openstacksdk` from PyPI (`pip install openstacksdk`).
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
SCRIPT = ROOT / "scripts" / "openstack-aio"
START_TIMEOUT = (
    900  # first start: schemas + every service (about 2 min here; more on a busy machine)
)


@dataclass(frozen=True)
class OpenStackService:
    auth: dict[str, str]  # openstacksdk auth arguments for the admin user
    region: str
    state_dir: Path
    script: Path

    def connect(self, **kwargs):
        """An openstacksdk Connection as admin (project `admin` unless overridden)."""
        import openstack

        return openstack.connect(
            auth=dict(self.auth), region_name=self.region, identity_api_version="3", **kwargs
        )

    def volume_file(self, volume_id: str) -> Path:
        """The sparse file backing a Cinder volume (testing/openstack/tutela_aio/cinder_file.py)."""
        return self.state_dir / "data" / "cinder" / "volumes" / f"volume-{volume_id}"

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [str(self.script), *args], capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"openstack-aio {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}"
            )
        return done


def _parse_env(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export ") :].partition("=")
            values[name] = shlex.split(value)[0] if value else ""
    return values


def _status() -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), "status"], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def openstack_service() -> Iterator[OpenStackService]:
    try:
        import openstack  # noqa: F401
    except ImportError:
        pytest.fail("openstacksdk is not installed in this environment: pip install openstacksdk")
    status = _status()
    started = False
    if status.returncode != 0:
        # Only stop at the end what this session started from nothing.
        nothing_ran = all(
            "not running" in line for line in status.stdout.splitlines()[1:] if line.strip()
        )
        try:
            start = subprocess.run(
                [str(SCRIPT), "start"], capture_output=True, text=True, timeout=START_TIMEOUT
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.fail(f"cannot start the OpenStack all-in-one ({SCRIPT} start): {exc}")
        if start.returncode != 0:
            pytest.fail(
                f"cannot start the OpenStack all-in-one "
                f"({SCRIPT} start, exit {start.returncode}):\n"
                f"{start.stderr.strip()[-4000:]}\n{start.stdout.strip()[-2000:]}"
            )
        started = nothing_ran
    values = _parse_env(
        subprocess.run([str(SCRIPT), "env"], capture_output=True, text=True, check=True).stdout
    )
    service = OpenStackService(
        auth={
            "auth_url": values["OS_AUTH_URL"],
            "username": values["OS_USERNAME"],
            "password": values["OS_PASSWORD"],
            "project_name": values["OS_PROJECT_NAME"],
            "user_domain_name": values["OS_USER_DOMAIN_NAME"],
            "project_domain_name": values["OS_PROJECT_DOMAIN_NAME"],
        },
        region=values["OS_REGION_NAME"],
        state_dir=Path(
            values.get("TUTELA_OPENSTACK_AIO_DIR")
            or os.environ.get("TUTELA_OPENSTACK_AIO_DIR")
            or "/tmp/tutela-openstack-aio"
        ),
        script=SCRIPT,
    )
    yield service
    if started:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=300)
