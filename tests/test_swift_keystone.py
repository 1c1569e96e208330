"""The Swift bank with Keystone v3 authentication, against the OpenStack all-in-one's Keystone.

`scripts/swift-aio start-keystone-proxy` runs a second Swift proxy (port 18081) on the Swift
all-in-one's rings and backend servers, with `authtoken keystoneauth` in its pipeline, and
registers the `swift` service user and the `object-store` endpoint in Keystone.  The module
fixture starts it (and stops it at the end if it started it); if it cannot, every test here
fails with the script's explanation, never skips.

Checks: an object round trip (plain and segmented), listing and a lease as the admin user and as
a member of a fresh project; a provider file like the seed's (`bank = swift` with Keystone v3
options, `plugin = directory`) protecting, restoring and deleting a directory tree; and a wrong
password giving a clear error without the password in it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tutela import Provider, ProviderConfig, Resource
from tutela.bank.swift import SwiftBank
from tutela.errors import BankError, ObjectNotFound, TutelaError

pytestmark = [pytest.mark.swift, pytest.mark.openstack]

DIR = "Tutela::Directory"
FAST_RETRY = {"retry_attempts": "3", "retry_initial_wait": "0.05", "retry_max_wait": "0.3"}


@dataclass(frozen=True)
class KeystoneSwift:
    auth_url: str  # Keystone v3, e.g. http://127.0.0.1:5000/v3
    admin_password: str
    region: str
    storage_prefix: str  # http://127.0.0.1:18081/v1/AUTH_

    def bank_options(self, **extra) -> dict[str, str]:
        """`[swift_bank]` options for the admin user in project admin."""
        options = {
            "auth_url": self.auth_url,
            "auth_version": "3",
            "user": "admin",
            "key": self.admin_password,
            "project_name": "admin",
            "user_domain_name": "Default",
            "project_domain_name": "Default",
            **FAST_RETRY,
        }
        options.update({k: str(v) for k, v in extra.items()})
        return options


def _status_line(script) -> str:
    done = subprocess.run([str(script), "status"], capture_output=True, text=True, timeout=60)
    return next(
        (line for line in done.stdout.splitlines() if line.startswith("keystone-proxy:")), ""
    )


@pytest.fixture(scope="module")
def keystone_swift(swift_service, openstack_service) -> Iterator[KeystoneSwift]:
    script = swift_service.script
    auth_url = openstack_service.auth["auth_url"].rstrip("/")
    if not auth_url.endswith("/v3"):
        auth_url += "/v3"
    env = {
        **os.environ,
        "TUTELA_SWIFT_AIO_KEYSTONE": auth_url.removesuffix("/v3"),
        "TUTELA_OPENSTACK_ADMIN_PASSWORD": openstack_service.auth["password"],
        "TUTELA_SWIFT_AIO_KEYSTONE_REGION": openstack_service.region,
    }
    started = False
    if not _status_line(script).startswith("keystone-proxy: running"):
        try:
            done = subprocess.run(
                [str(script), "start-keystone-proxy"],
                capture_output=True,
                text=True,
                timeout=300,
                env=env,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.fail(
                f"cannot start the Keystone Swift proxy ({script} start-keystone-proxy): {exc}"
            )
        if done.returncode != 0:
            pytest.fail(
                f"cannot start the Keystone Swift proxy ({script} start-keystone-proxy, "
                f"exit {done.returncode}):\n{done.stderr.strip()}\n{done.stdout.strip()}"
            )
        started = True
    port = os.environ.get("TUTELA_SWIFT_AIO_KEYSTONE_PORT", "18081")
    for line in subprocess.run(
        [str(script), "env"], capture_output=True, text=True, check=True
    ).stdout.splitlines():
        if line.startswith("export TUTELA_SWIFT_KEYSTONE_STORAGE_URL="):
            port = line.rsplit(":", 1)[1].split("/", 1)[0]
    try:
        yield KeystoneSwift(
            auth_url=auth_url,
            admin_password=openstack_service.auth["password"],
            region=openstack_service.region,
            storage_prefix=f"http://127.0.0.1:{port}/v1/AUTH_",
        )
    finally:
        if started:
            subprocess.run([str(script), "stop-keystone-proxy"], capture_output=True, timeout=120)


@pytest.fixture
def member(keystone_swift, openstack_service) -> Iterator[dict[str, str]]:
    """A fresh project with a user holding only `member` in it; removed at the end."""
    conn = openstack_service.connect()
    tag = uuid.uuid4().hex[:8]
    password = f"pw-{uuid.uuid4().hex}"
    project = conn.identity.create_project(
        name=f"tutela-swift-{tag}", domain_id="default", description="test_swift_keystone"
    )
    user = None
    try:
        user = conn.identity.create_user(
            name=f"tutela-swift-{tag}",
            password=password,
            domain_id="default",
            default_project_id=project.id,
        )
        role = conn.identity.find_role("member", ignore_missing=False)
        conn.identity.assign_project_role_to_user(project, user, role)
        yield {
            "user": user.name,
            "key": password,
            "project_name": project.name,
            "project_id": project.id,
        }
    finally:
        if user is not None:
            conn.identity.delete_user(user, ignore_missing=True)
        conn.identity.delete_project(project, ignore_missing=True)
        conn.close()


def exercise_bank(bank: SwiftBank) -> None:
    # Plain and segmented (Static Large Object: needs slo in the Keystone proxy's pipeline).
    small = os.urandom(10_000)
    big = os.urandom(300_000)
    bank.update_object("k/small", small)
    assert bank.get_object("k/small") == small
    assert bank.update_object_stream("k/big", iter([big[:100_000], big[100_000:]])) == len(big)
    assert b"".join(bank.get_object_stream("k/big")) == big
    assert bank.object_size("k/big") == len(big)
    bank.update_object("k/small", b"replaced")
    assert bank.get_object("k/small") == b"replaced"
    bank.update_object("other", b"x")
    assert bank.list_objects("k/") == ["k/big", "k/small"]
    assert bank.list_objects(sort_dir="desc") == ["other", "k/small", "k/big"]
    assert bank.list_objects("k/", limit=1, marker="k/big") == ["k/small"]
    assert bank.acquire_lease("job")
    assert bank.get_lease_owner("job") == bank.get_owner_id()
    assert bank.check_lease_validity("job")
    bank.renew_lease("job")
    bank.release_lease("job")
    assert bank.get_lease_owner("job") is None
    bank.delete_object("k/big")
    with pytest.raises(ObjectNotFound):
        bank.get_object("k/big")
    assert bank.list_objects("k/") == ["k/small"]


def test_bank_as_admin(keystone_swift):
    bank = SwiftBank(
        **keystone_swift.bank_options(container=f"ks{uuid.uuid4().hex[:10]}", segment_size="64K")
    )
    try:
        # The token's catalogue led swiftclient to the Keystone proxy and the admin project.
        conn = bank._conn()
        assert conn.url.startswith(keystone_swift.storage_prefix), conn.url
        exercise_bank(bank)
    finally:
        bank.purge()
        bank.close()


def test_bank_as_member_of_a_fresh_project(keystone_swift, member):
    container = f"ksm{uuid.uuid4().hex[:10]}"
    options = keystone_swift.bank_options(
        container=container,
        segment_size="64K",
        user=member["user"],
        key=member["key"],
        project_name=member["project_name"],
        region_name=keystone_swift.region,
        interface="public",
    )
    bank = SwiftBank(**options)
    try:
        conn = bank._conn()
        assert conn.url == keystone_swift.storage_prefix + member["project_id"]
        exercise_bank(bank)
        # keystoneauth keeps projects apart: the admin's bank does not see the member's account.
        admin = SwiftBank(**keystone_swift.bank_options(container=container))
        try:
            assert admin.list_objects() == []
        finally:
            admin.purge()
            admin.close()
    finally:
        bank.purge()
        bank.close()


PROVIDER_FILE = """\
# Like the seed's provider file: the bank is Swift, authenticated by Keystone v3.
[provider]
name = swift-keystone
id = {provider_id}
bank = swift
plugin = directory
executor = threads

[swift_bank]
auth_url = {auth_url}
auth_version = 3
user = admin
key = {key}
project_name = admin
user_domain_name = Default
project_domain_name = Default
region_name = {region}
interface = public
container = {container}
retry_attempts = 3
"""


def make_tree(root):
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "docs" / "deep" / "random.bin").write_bytes(os.urandom(1_500_000))
    (root / "docs" / "text.txt").write_text("tutela\n" * 5_000)
    (root / "empty").write_bytes(b"")
    (root / "link").symlink_to("docs/text.txt")
    os.chmod(root / "docs" / "text.txt", 0o600)
    return root


def same_tree(a, b) -> None:
    for dirpath, dirs, files in os.walk(a):
        rel = os.path.relpath(dirpath, a)
        other = os.path.join(b, rel)
        assert sorted(os.listdir(other)) == sorted(dirs + files), rel
        for name in files:
            pa, pb = os.path.join(dirpath, name), os.path.join(other, name)
            if os.path.islink(pa):
                assert os.readlink(pa) == os.readlink(pb)
            else:
                with open(pa, "rb") as x, open(pb, "rb") as y:
                    assert x.read() == y.read(), name
                assert os.stat(pa).st_mode == os.stat(pb).st_mode, name


def test_provider_file_protect_restore_delete(keystone_swift, tmp_path):
    container = f"ksp{uuid.uuid4().hex[:10]}"
    path = tmp_path / "swift-keystone.conf"
    path.write_text(
        PROVIDER_FILE.format(
            provider_id=str(uuid.uuid4()),
            auth_url=keystone_swift.auth_url,
            key=keystone_swift.admin_password,
            region=keystone_swift.region,
            container=container,
        )
    )
    src = make_tree(tmp_path / "src")
    provider = Provider.from_config(ProviderConfig.read(path))
    try:
        assert isinstance(provider.bank.plugin, SwiftBank)
        assert keystone_swift.admin_password not in provider.bank.plugin.describe()
        checkpoint = provider.protect([Resource(DIR, str(src))])
        assert checkpoint.status == "available"
        out = tmp_path / "restored"
        provider.restore(checkpoint.id, {DIR: {"target": str(out)}})
        same_tree(src, out)
        provider.delete(checkpoint.id)
        assert provider.checkpoints.get(checkpoint.id).status == "deleted"
        assert provider.referenced_chunks() == set()
        assert provider.bank.list_objects("content/packs/") == []
    finally:
        bank = provider.bank.plugin
        provider.close()
        bank.purge()
        bank.close()


def test_wrong_password_is_a_clear_error_without_the_password(keystone_swift, tmp_path, caplog):
    wrong = f"wrong-{uuid.uuid4().hex}"
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    with pytest.raises(BankError) as info:
        SwiftBank(**keystone_swift.bank_options(key=wrong, container="never-created"))
    message = str(info.value)
    assert "authentication failed" in message, message
    assert "via " + keystone_swift.auth_url in message, message
    assert wrong not in message and wrong not in repr(info.value)
    assert info.value.__cause__ is None  # raised "from None": no swiftclient chain to leak
    assert wrong not in caplog.text
    assert time.monotonic() - started < 60

    # The same through a provider file: the error names the bank and keeps the password out.
    path = tmp_path / "wrong.conf"
    path.write_text(
        PROVIDER_FILE.format(
            provider_id=str(uuid.uuid4()),
            auth_url=keystone_swift.auth_url,
            key=wrong,
            region=keystone_swift.region,
            container="never-created",
        )
    )
    with pytest.raises(TutelaError) as info:
        Provider.from_config(ProviderConfig.read(path))
    assert "authentication failed" in str(info.value), str(info.value)
    assert wrong not in str(info.value) and wrong not in repr(info.value)
    assert wrong not in caplog.text


def test_wrong_password_is_not_retried(keystone_swift, monkeypatch):
    import swiftclient.client

    calls = []
    real = swiftclient.client.get_auth_keystone

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(swiftclient.client, "get_auth_keystone", counting)
    with pytest.raises(BankError):
        SwiftBank(**keystone_swift.bank_options(key="wrong", container="never-created"))
    assert len(calls) == 1
