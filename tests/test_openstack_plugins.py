"""The OpenStack plugins (tutela.plugins.openstack) against the real all-in-one on loopback.

Per plugin: protect -> restore -> delete round trips (volume, image, server), and a volume
restored into another project by a user without an admin role (through a volume transfer).  Then the
end-to-end test of issue 8: a project with two servers booted from one image, one of them with
two attached volumes, protected (hook order checked against the recorded times), the originals
deleted, restored into a second project (servers ACTIVE with their volumes, data and image
checksum identical), and the checkpoint deleted (backups gone).  Last, a protect during which
cinder-backup is killed ends in `error` with Cinder's reason and leaves no snapshot, and a
snapshot Cinder refuses fails the protect with the server released by on_abort.

Every project the tests create is swept (servers, volumes, snapshots, backups, images) and
deleted at the end, also on failure.  Needs the services up (`scripts/openstack-aio start`;
the `openstack_service` fixture starts them).
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tutela import OperationFailed, Provider, ProviderConfig, Resource
from tutela.checkpoint import SUCCESS
from tutela.plugins.openstack import IMAGE, PROJECT, SERVER, VOLUME

pytestmark = [pytest.mark.openstack, pytest.mark.slow]

MOD = "tutela.plugins.openstack"
PLUGINS = [
    f"{MOD}.project:ProjectPlugin",
    f"{MOD}.server:ServerPlugin",
    f"{MOD}.volume:VolumePlugin",
    f"{MOD}.image:ImagePlugin",
]
PROTECTABLES = [
    f"{MOD}.project:ProjectProtectable",
    f"{MOD}.server:ServerProtectable",
    f"{MOD}.volume:VolumeProtectable",
    f"{MOD}.image:ImageProtectable",
]
WAIT = 300
MiB = 1 << 20


def pattern(tag: str) -> dict[int, bytes]:
    """Known bytes at three offsets of a 1 GiB volume."""
    head = hashlib.sha256(tag.encode()).digest() * 2048  # 64 KiB
    return {0: head, 300 * MiB + 7: os.urandom(4096), 1023 * MiB: tag.encode() * 100}


def write_pattern(path: Path, data: dict[int, bytes]) -> None:
    with open(path, "r+b") as fh:
        for offset, chunk in data.items():
            fh.seek(offset)
            fh.write(chunk)


def read_pattern(path: Path, data: dict[int, bytes]) -> dict[int, bytes]:
    with open(path, "rb") as fh:
        out = {}
        for offset, chunk in data.items():
            fh.seek(offset)
            out[offset] = fh.read(len(chunk))
        return out


def wait_until(what: str, check, timeout: float = WAIT, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


class Cloud:
    """Test projects (admin has the admin role in each), a flavor, and a sweeping cleanup."""

    def __init__(self, service):
        self.service = service
        self.admin = service.connect()
        self.tag = "tutela-os-" + uuid.uuid4().hex[:6]
        self.projects: list[Any] = []
        self.users: list[Any] = []
        self.flavor = self.admin.compute.create_flavor(
            name=self.tag, ram=128, vcpus=1, disk=1, is_public=True
        )
        self.user = self.admin.identity.find_user(
            "admin", domain_id="default", ignore_missing=False
        )
        self.role = self.admin.identity.find_role("admin", ignore_missing=False)

    def project(self, suffix: str) -> tuple[Any, Any]:
        project = self.admin.identity.create_project(
            name=f"{self.tag}-{suffix}", domain_id="default"
        )
        self.projects.append(project)
        self.admin.identity.assign_project_role_to_user(project, self.user, self.role)
        return project, self.admin.connect_as_project({"id": project.id})

    def member(self, *projects: Any) -> tuple[str, str]:
        """A user with only the `member` role in the given projects: (name, password)."""
        name, password = f"{self.tag}-member", uuid.uuid4().hex
        user = self.admin.identity.create_user(name=name, password=password, domain_id="default")
        self.users.append(user)
        role = self.admin.identity.find_role("member", ignore_missing=False)
        for project in projects:
            self.admin.identity.assign_project_role_to_user(project, user, role)
        return name, password

    def provider(self, tmp_path: Path, project: Any, **openstack: str) -> Provider:
        auth = self.service.auth
        section = {
            "auth_url": auth["auth_url"],
            "username": auth["username"],
            "password": auth["password"],
            "project_name": project.name,
            "user_domain_name": auth["user_domain_name"],
            "project_domain_name": auth["project_domain_name"],
            "region_name": self.service.region,
            "poll_interval": "0.5",
            "timeout": str(WAIT),
        }
        section.update(openstack)
        section = {k: v for k, v in section.items() if v != ""}
        root = tmp_path / f"bank-{uuid.uuid4().hex[:6]}"
        config = ProviderConfig.from_dict(
            {
                "provider": {
                    "name": "openstack-test",
                    "id": f"os-{uuid.uuid4().hex[:8]}",
                    "bank": "filesystem",
                    "plugin": PLUGINS,
                    "protectable": PROTECTABLES,
                    "executor": "threads",
                    "max_workers": 8,
                },
                "filesystem_bank": {"root": str(root), "fsync": "false"},
                "openstack": section,
            },
            path=str(tmp_path / "openstack.conf"),
        )
        return Provider.from_config(config)

    def image(self, conn: Any, name: str, size: int = 2 * MiB) -> tuple[Any, bytes]:
        data = b"TUTELA-OPENSTACK-PLUGIN-IMAGE\n" + os.urandom(size)
        image = conn.image.create_image(
            name=name,
            data=data,
            disk_format="raw",
            container_format="bare",
            allow_duplicates=True,
            wait=True,
            timeout=WAIT,
        )
        image = conn.image.wait_for_status(image, "active", failures=["killed"], wait=WAIT)
        return image, data

    def server(self, conn: Any, name: str, image_id: str) -> Any:
        server = conn.compute.create_server(
            name=name, image_id=image_id, flavor_id=self.flavor.id, networks="none"
        )
        return conn.compute.wait_for_server(
            server, status="ACTIVE", failures=["ERROR"], interval=1, wait=WAIT
        )

    def volume(self, conn: Any, name: str) -> Any:
        volume = conn.block_storage.create_volume(size=1, name=name)
        return conn.block_storage.wait_for_status(
            volume, "available", failures=["error"], interval=0.5, wait=WAIT
        )

    def attach(self, conn: Any, server: Any, volume: Any) -> None:
        conn.compute.create_volume_attachment(server, volume=volume.id)
        conn.block_storage.wait_for_status(
            volume, "in-use", failures=["error"], interval=0.5, wait=WAIT
        )

    # -- cleanup ------------------------------------------------------------------------
    def sweep(self, project_id: str) -> list[str]:
        """Delete everything in a project; returns what could not be deleted."""
        errors: list[str] = []
        conn = self.admin.connect_as_project({"id": project_id})
        bs = conn.block_storage

        def attempt(what: str, fn) -> None:
            try:
                fn()
            except Exception as exc:
                errors.append(f"{what}: {exc!r}")

        servers = list(conn.compute.servers())
        for s in servers:
            attempt(f"server {s.id}", lambda s=s: conn.compute.delete_server(s, force=True))
        for s in servers:
            attempt(f"server {s.id}", lambda s=s: conn.compute.wait_for_delete(s, wait=WAIT))
        for b in bs.backups(details=True):
            attempt(
                f"backup {b.id}",
                lambda b=b: wait_until(
                    f"backup {b.id} idle",
                    lambda: bs.get_backup(b.id).status not in ("creating", "restoring"),
                ),
            )
            attempt(f"backup {b.id}", lambda b=b: bs.delete_backup(b, force=True))
        for v in bs.volumes(details=True):
            attempt(
                f"volume {v.id}",
                lambda v=v: wait_until(
                    f"volume {v.id} detached",
                    lambda: (
                        bs.get_volume(v.id).status
                        not in ("in-use", "detaching", "attaching", "backing-up", "creating")
                    ),
                ),
            )
            attempt(f"volume {v.id}", lambda v=v: bs.delete_volume(v, cascade=True, force=True))
        for snap in bs.snapshots(details=True):
            attempt(f"snapshot {snap.id}", lambda s=snap: bs.delete_snapshot(s, force=True))
        for i in conn.image.images(owner=project_id):
            attempt(f"image {i.id}", lambda i=i: conn.image.delete_image(i, ignore_missing=True))
        for kind, lister in (
            ("backups", lambda: list(bs.backups())),
            ("volumes", lambda: list(bs.volumes())),
            ("snapshots", lambda: list(bs.snapshots())),
        ):
            attempt(
                kind, lambda lister=lister, k=kind: wait_until(f"{k} gone", lambda: not lister())
            )
        return errors

    def close(self) -> list[str]:
        errors: list[str] = []
        for project in self.projects:
            errors += self.sweep(project.id)
            try:
                self.admin.identity.delete_project(project)
            except Exception as exc:
                errors.append(f"project {project.id}: {exc!r}")
        for user in self.users:
            try:
                self.admin.identity.delete_user(user)
            except Exception as exc:
                errors.append(f"user {user.id}: {exc!r}")
        try:
            self.admin.compute.delete_flavor(self.flavor, ignore_missing=True)
        except Exception as exc:
            errors.append(f"flavor: {exc!r}")
        return errors


@pytest.fixture
def cloud(openstack_service):
    c = Cloud(openstack_service)
    yield c
    errors = c.close()
    assert not errors, "cleanup failed: " + "; ".join(errors)


def test_volume_round_trip(cloud, tmp_path, openstack_service):
    project, conn = cloud.project("vol")
    volume = cloud.volume(conn, "data")
    data = pattern(cloud.tag + "-vol")
    write_pattern(openstack_service.volume_file(volume.id), data)
    password_file = tmp_path / "pw"
    password_file.write_text(openstack_service.auth["password"] + "\n")
    provider = cloud.provider(tmp_path, project, password="", password_file=str(password_file))
    try:
        cp = provider.protect([Resource(VOLUME, volume.id)])
        assert cp.status == "available"
        info = cp.resource_records()[f"{VOLUME}#{volume.id}"]["saved_info"]
        assert info["backup_id"] and info["size_bytes"] == 1 << 30
        assert info["snapshot_started_at"] <= info["snapshot_at"] <= info["backup_at"]
        assert info["snapshot_deleted_at"] >= info["backup_at"]
        assert conn.block_storage.find_snapshot(info["snapshot_id"], ignore_missing=True) is None
        backup = conn.block_storage.get_backup(info["backup_id"])
        assert backup.status == "available" and backup.snapshot_id == info["snapshot_id"]

        # Damage the original: the restore comes from the backup, into a new volume.
        write_pattern(openstack_service.volume_file(volume.id), pattern("damaged"))
        record = provider.restore(cp.id)
        new = record.resource_records()[f"{VOLUME}#{volume.id}"]["new_resource"]
        assert new["id"] != volume.id
        restored = conn.block_storage.get_volume(new["id"])
        assert restored.name == f"data-restored-{cp.id[:8]}" and restored.status == "available"
        assert read_pattern(openstack_service.volume_file(new["id"]), data) == data

        # With no cinder-backup service up (as right after it restarts), Cinder answers the
        # delete with a 404 that is not the backup's: the delete waits for the service instead
        # of taking the backup for gone.
        service = next(
            s for s in cloud.admin.block_storage.services() if s.binary == "cinder-backup"
        )
        cloud.admin.block_storage.disable_service(service)
        try:
            deleted: list[Any] = []
            deleting = threading.Thread(target=lambda: deleted.append(provider.delete(cp.id)))
            deleting.start()
            time.sleep(3)
            assert deleting.is_alive()
            assert conn.block_storage.get_backup(info["backup_id"]).status == "available"
        finally:
            cloud.admin.block_storage.enable_service(service)
        deleting.join(WAIT)
        assert not deleting.is_alive()
        assert [c.status for c in deleted] == ["deleted"]
        assert conn.block_storage.find_backup(info["backup_id"], ignore_missing=True) is None
    finally:
        provider.close()


def test_volume_restore_into_another_project_as_a_member(cloud, tmp_path, openstack_service):
    """Without an admin role Cinder refuses to restore another project's backup: the plugin
    restores it in the original project and transfers the new volume."""
    project, conn = cloud.project("mema")
    other, other_conn = cloud.project("memb")
    username, password = cloud.member(project, other)
    volume = cloud.volume(conn, "notes")
    data = pattern(cloud.tag + "-member")
    write_pattern(openstack_service.volume_file(volume.id), data)
    provider = cloud.provider(tmp_path, project, username=username, password=password)
    try:
        cp = provider.protect([Resource(VOLUME, volume.id)])
        record = provider.restore(cp.id, {VOLUME: {"target_project": other.name}})
        new = record.resource_records()[f"{VOLUME}#{volume.id}"]["new_resource"]
        restored = other_conn.block_storage.get_volume(new["id"])
        assert restored.status == "available" and restored.name == f"notes-restored-{cp.id[:8]}"
        assert [v.id for v in conn.block_storage.volumes()] == [volume.id]  # nothing left behind
        assert read_pattern(openstack_service.volume_file(restored.id), data) == data
        backup_id = cp.resource_records()[f"{VOLUME}#{volume.id}"]["saved_info"]["backup_id"]
        provider.delete(cp.id)
        assert conn.block_storage.find_backup(backup_id, ignore_missing=True) is None
    finally:
        provider.close()


def bank_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_image_round_trip_dedup_and_other_project(cloud, tmp_path):
    project, conn = cloud.project("img")
    other, other_conn = cloud.project("img2")
    image, data = cloud.image(conn, "base", size=4 * MiB)
    provider = cloud.provider(tmp_path, project)
    try:
        cp = provider.protect([Resource(IMAGE, image.id)])
        info = cp.resource_records()[f"{IMAGE}#{image.id}"]["saved_info"]
        assert info["checksum"] == image.checksum == hashlib.md5(data).hexdigest()
        assert info["size"] == len(data) and info["image"]["disk_format"] == "raw"
        bank = Path(provider.config.get("filesystem_bank", "root"))
        before = bank_bytes(bank)
        cp2 = provider.protect([Resource(IMAGE, image.id)])
        grown = bank_bytes(bank) - before
        assert grown < len(data) // 10, f"a second checkpoint of the same image stored {grown} B"

        # Into the same project with an exact name, and into another project by name.
        record = provider.restore(
            cp.id, {f"{IMAGE}#{image.id}": {"name": "base-copy", "target_project": project.id}}
        )
        new = record.resource_records()[f"{IMAGE}#{image.id}"]["new_resource"]
        copy = conn.image.get_image(new["id"])
        assert copy.name == "base-copy" and copy.checksum == image.checksum
        assert copy.owner == project.id
        assert conn.image.download_image(copy).content == data

        record = provider.restore(cp2.id, {IMAGE: {"target_project": other.name}})
        new = record.resource_records()[f"{IMAGE}#{image.id}"]["new_resource"]
        copy = other_conn.image.get_image(new["id"])
        assert copy.name == f"base-restored-{cp2.id[:8]}"
        assert copy.owner == other.id and copy.hash_value == image.hash_value

        provider.delete(cp.id)
        provider.delete(cp2.id)
        assert bank_bytes(bank / "objects" / "content") < len(data) // 10
    finally:
        provider.close()


def test_server_round_trip(cloud, tmp_path):
    project, conn = cloud.project("srv")
    image, _ = cloud.image(conn, "boot")
    server = cloud.server(conn, "web", image.id)
    conn.compute.set_server_metadata(server, role="web")
    provider = cloud.provider(tmp_path, project)
    try:
        cp = provider.protect([Resource(SERVER, server.id)], {SERVER: {"quiesce": "lock"}})
        records = cp.resource_records()
        assert set(records) == {f"{SERVER}#{server.id}", f"{IMAGE}#{image.id}"}
        info = records[f"{SERVER}#{server.id}"]["saved_info"]
        assert info["quiesce"] == "lock" and info["quiesced_at"] <= info["released_at"]
        d = info["definition"]
        assert d["image_id"] == image.id and d["metadata"] == {"role": "web"}
        assert d["networks"] == [] and d["flavor"]["original_name"] == cloud.flavor.name
        assert not conn.compute.get_server(server.id).is_locked

        record = provider.restore(cp.id)
        new = record.resource_records()[f"{SERVER}#{server.id}"]["new_resource"]
        new_image = record.resource_records()[f"{IMAGE}#{image.id}"]["new_resource"]
        restored = conn.compute.get_server(new["id"])
        assert restored.status == "ACTIVE" and restored.name == f"web-restored-{cp.id[:8]}"
        assert restored.image["id"] == new_image["id"] != image.id
        assert restored.metadata == {"role": "web"}
        provider.delete(cp.id)
    finally:
        provider.close()


def test_project_end_to_end_into_another_project(cloud, tmp_path, openstack_service):
    """Issue 8: two servers from one image, one with two volumes; restore elsewhere."""
    src, conn = cloud.project("src")
    dst, dst_conn = cloud.project("dst")
    image, image_data = cloud.image(conn, "shared")
    db = cloud.server(conn, "db", image.id)
    web = cloud.server(conn, "web", image.id)
    vols = [cloud.volume(conn, f"db-{n}") for n in ("data", "logs")]
    for v in vols:
        cloud.attach(conn, db, v)
    written = {v.id: pattern(f"{cloud.tag}-{v.name}") for v in vols}
    for v in vols:
        write_pattern(openstack_service.volume_file(v.id), written[v.id])
    provider = cloud.provider(tmp_path, src)
    try:
        assert provider.list_resources(PROJECT) == [Resource(PROJECT, src.id)]
        graph = provider.build_graph([Resource(PROJECT, src.id)])
        assert {r.key for r in graph.nodes} == {
            f"{PROJECT}#{src.id}",
            f"{SERVER}#{db.id}",
            f"{SERVER}#{web.id}",
            f"{VOLUME}#{vols[0].id}",
            f"{VOLUME}#{vols[1].id}",
            f"{IMAGE}#{image.id}",
        }
        # The attached volumes are the server's children only; the image is one node.
        assert {r.key for r in graph.dependents(Resource(SERVER, db.id))} == {
            f"{VOLUME}#{vols[0].id}",
            f"{VOLUME}#{vols[1].id}",
            f"{IMAGE}#{image.id}",
        }
        assert {r.type for r in graph.dependents(Resource(PROJECT, src.id))} == {SERVER, IMAGE}

        cp = provider.protect([Resource(PROJECT, src.id)])
        assert cp.status == "available"
        records = cp.resource_records()
        srv = records[f"{SERVER}#{db.id}"]["saved_info"]
        assert srv["quiesce"] == "pause"
        backups = []
        for v in vols:
            info = records[f"{VOLUME}#{v.id}"]["saved_info"]
            # Rules 1 and 3: every snapshot inside the server's quiesce window.
            assert srv["quiesced_at"] <= info["snapshot_started_at"]
            assert info["snapshot_at"] <= srv["released_at"]
            assert info["snapshot_at"] < info["backup_at"] < info["snapshot_deleted_at"]
            assert (
                conn.block_storage.find_snapshot(info["snapshot_id"], ignore_missing=True) is None
            )
            backups.append(info["backup_id"])
        hooks = records[f"{SERVER}#{db.id}"]["hooks"]
        for v in vols:
            vh = records[f"{VOLUME}#{v.id}"]["hooks"]
            assert hooks["on_prepare_begin"][1] <= vh["on_prepare_finish"][0]
            assert vh["on_prepare_finish"][1] <= hooks["on_prepare_finish"][0]
        assert records[f"{PROJECT}#{src.id}"]["saved_info"]["servers"] == 2
        assert conn.compute.get_server(db.id).status == "ACTIVE"  # released

        # Lose the originals.
        for s in (db, web):
            conn.compute.delete_server(s)
        for s in (db, web):
            conn.compute.wait_for_delete(s, wait=WAIT)
        for v in vols:
            wait_until(
                "detached", lambda v=v: conn.block_storage.get_volume(v.id).status == "available"
            )
            conn.block_storage.delete_volume(v)
        conn.image.delete_image(image)

        record = provider.restore(cp.id, {PROJECT: {"target_project": dst.id}})
        assert record.status == SUCCESS
        new = {k: r.get("new_resource") for k, r in record.resource_records().items()}
        new_image = dst_conn.image.get_image(new[f"{IMAGE}#{image.id}"]["id"])
        assert (
            new_image.owner == dst.id and new_image.checksum == hashlib.md5(image_data).hexdigest()
        )
        servers = {s.id: s for s in dst_conn.compute.servers(details=True)}
        assert set(servers) == {new[f"{SERVER}#{db.id}"]["id"], new[f"{SERVER}#{web.id}"]["id"]}
        for s in servers.values():
            assert s.status == "ACTIVE" and s.image["id"] == new_image.id
        new_db = servers[new[f"{SERVER}#{db.id}"]["id"]]
        attached = {a["id"] for a in new_db.attached_volumes}
        assert attached == {new[f"{VOLUME}#{v.id}"]["id"] for v in vols}
        assert not servers[new[f"{SERVER}#{web.id}"]["id"]].attached_volumes
        for v in vols:
            nv = dst_conn.block_storage.get_volume(new[f"{VOLUME}#{v.id}"]["id"])
            assert nv.status == "in-use" and nv.name == f"{v.name}-restored-{cp.id[:8]}"
            got = read_pattern(openstack_service.volume_file(nv.id), written[v.id])
            assert got == written[v.id], f"volume {v.name} differs after restore"

        provider.delete(cp.id)
        for b in backups:
            assert conn.block_storage.find_backup(b, ignore_missing=True) is None
    finally:
        provider.close()


def test_failed_snapshot_releases_the_server(cloud, tmp_path):
    """A volume snapshot that Cinder refuses (the volume is in `error`) fails the protect in
    prepare_finish; on_abort unpauses the server and nothing is left behind."""
    project, conn = cloud.project("abort")
    image, _ = cloud.image(conn, "boot", size=MiB)
    server = cloud.server(conn, "app", image.id)
    volume = cloud.volume(conn, "app-data")
    cloud.attach(conn, server, volume)
    conn.block_storage.reset_volume_status(volume, status="error")
    provider = cloud.provider(tmp_path, project)
    try:
        with pytest.raises(OperationFailed) as failed:
            provider.protect([Resource(SERVER, server.id)], {SERVER: {"quiesce": "pause"}})
        assert f"{VOLUME}#{volume.id} on_prepare_finish" in str(failed.value)
        cp = provider.checkpoints.get(failed.value.record_id)
        assert cp.status == "error"
        info = cp.resource_section(Resource(SERVER, server.id), writable=False).get_json("metadata")
        assert info["quiesced"] == "pause" and info["released_at"] >= info["quiesced_at"]
        assert conn.compute.get_server(server.id).status == "ACTIVE"
        assert list(conn.block_storage.snapshots()) == []
        provider.delete(cp.id)
    finally:
        provider.close()
        conn.block_storage.reset_volume_status(volume, status="in-use", attach_status="attached")


def _cinder_backup_pid(state_dir: Path) -> int:
    return int((state_dir / "run" / "cinder-backup.pid").read_text().strip())


def test_backup_service_dies_during_protect(cloud, tmp_path, openstack_service):
    """cinder-backup killed mid-backup: on restart Cinder sets the backup to error; the
    checkpoint ends in error with Cinder's reason and no snapshot stays."""
    project, conn = cloud.project("fail")
    volume = cloud.volume(conn, "victim")
    # Random bytes all over make the backup long enough to be caught while it runs.
    with open(openstack_service.volume_file(volume.id), "r+b") as fh:
        for i in range(0, 1024, 64):
            fh.seek(i * MiB)
            fh.write(os.urandom(8 * MiB))
    clouds = openstack_service.state_dir / "clouds.yaml"
    provider = cloud.provider(
        tmp_path,
        project,
        cloud="tutela-aio",
        clouds_file=str(clouds),
        project_name="",
        auth_url="",
        username="",
        password="",
        user_domain_name="",
        project_domain_name="",
    )
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["cp"] = provider.protect([Resource(VOLUME, volume.id)])
        except OperationFailed as exc:
            outcome["error"] = exc

    restarted = False
    try:
        # The clouds.yaml cloud is scoped to `admin`: reach the test project through the
        # project-scoped connection (resources carry their project).
        thread = threading.Thread(target=run)
        thread.start()
        backup = wait_until(
            "a backup in progress",
            lambda: next(
                (b for b in conn.block_storage.backups(details=True) if b.status == "creating"),
                None,
            ),
            timeout=120,
            interval=0.2,
        )
        pid = _cinder_backup_pid(openstack_service.state_dir)
        os.killpg(pid, signal.SIGKILL)
        restarted = True
        openstack_service.run("start", timeout=600)
        thread.join(WAIT)
        assert not thread.is_alive()
        assert "error" in outcome, f"protect did not fail: {outcome}"
        exc = outcome["error"]
        assert "incomplete backup reset on manager restart" in str(exc)
        cp = provider.checkpoints.get(exc.record_id)
        assert cp.status == "error"
        assert "incomplete backup reset" in cp.index["error"]["message"]
        info = cp.resource_section(Resource(VOLUME, volume.id), writable=False).get_json("metadata")
        assert info["snapshot_deleted_at"]
        assert list(conn.block_storage.snapshots()) == []
        assert conn.block_storage.get_volume(volume.id).status == "available"
        wait_until(
            "the failed backup deleted",
            lambda: conn.block_storage.find_backup(backup.id, ignore_missing=True) is None,
        )
        provider.delete(cp.id)
    finally:
        provider.close()
        if restarted:
            openstack_service.run("start", timeout=600)
