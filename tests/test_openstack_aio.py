"""Smoke test of the OpenStack all-in-one (scripts/openstack-aio) through openstacksdk.

One pass over everything Tutela will protect: Keystone token and project, a Glance image round
trip, a Nova server (fake virt driver) and its snapshot into Glance, a Cinder volume attached to
it, a volume snapshot, a backup from that snapshot and its restore to a new volume.  Everything it
creates is deleted again.  Takes about 50-70 s once the services are up (most of it the 1 GiB
backup and restore).
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid

import pytest

pytestmark = [pytest.mark.openstack, pytest.mark.slow]

WAIT = 180  # seconds per operation (backup and restore of 1 GiB take 10-30 s here)
MiB = 1024 * 1024
# Known bytes written straight into the volume's backing file, at two offsets.
PATTERN = {0: b"tutela-aio head " * 4096, 700 * MiB: b"tutela-aio tail " * 256}


def _image_bytes() -> bytes:
    return b"TUTELA-AIO-IMAGE\n" + os.urandom(MiB)


def test_control_plane_round_trip(openstack_service):
    timings: dict[str, float] = {}
    cleanups: list[tuple[str, object]] = []
    t_all = time.monotonic()

    def step(name: str, t0: float) -> None:
        timings[name] = round(time.monotonic() - t0, 2)

    admin = openstack_service.connect()
    tag = "tutela-smoke-" + uuid.uuid4().hex[:8]
    try:
        # Keystone: a token, a project with the admin user as its admin.
        t0 = time.monotonic()
        assert admin.auth_token
        project = admin.identity.create_project(name=tag, domain_id="default")
        cleanups.append(("project", lambda: admin.identity.delete_project(project)))
        user = admin.identity.find_user("admin", domain_id="default", ignore_missing=False)
        role = admin.identity.find_role("admin", ignore_missing=False)
        admin.identity.assign_project_role_to_user(project, user, role)
        conn = admin.connect_as_project({"id": project.id})
        assert conn.current_project_id == project.id
        step("keystone", t0)

        # Glance: upload and download, same checksum.
        t0 = time.monotonic()
        data = _image_bytes()
        image = conn.image.create_image(
            name=tag,
            data=data,
            disk_format="raw",
            container_format="bare",
            allow_duplicates=True,
            wait=True,
            timeout=WAIT,
        )
        cleanups.append(("image", lambda: conn.image.delete_image(image, ignore_missing=True)))
        image = conn.image.wait_for_status(image, "active", failures=["killed"], wait=WAIT)
        downloaded = conn.image.download_image(image).content
        assert (
            hashlib.md5(downloaded).hexdigest() == hashlib.md5(data).hexdigest() == image.checksum
        )
        step("glance upload+download", t0)

        # Nova: boot without networks (fake virt driver), wait ACTIVE.
        t0 = time.monotonic()
        flavor = admin.compute.create_flavor(name=tag, ram=128, vcpus=1, disk=1)
        cleanups.append(
            ("flavor", lambda: admin.compute.delete_flavor(flavor, ignore_missing=True))
        )
        server = conn.compute.create_server(
            name=tag, image_id=image.id, flavor_id=flavor.id, networks="none"
        )

        def delete_server():
            conn.compute.delete_server(server, ignore_missing=True)
            conn.compute.wait_for_delete(server, wait=WAIT)

        cleanups.append(("server", delete_server))
        server = conn.compute.wait_for_server(
            server, status="ACTIVE", failures=["ERROR"], wait=WAIT
        )
        step("nova boot", t0)

        # Nova snapshot into Glance (the fake driver uploads the base image's bytes).
        t0 = time.monotonic()
        snap_image = conn.compute.create_server_image(
            server, name=tag + "-snap", wait=True, timeout=WAIT
        )
        cleanups.append(
            (
                "server snapshot image",
                lambda: conn.image.delete_image(snap_image, ignore_missing=True),
            )
        )
        assert conn.image.download_image(snap_image).content == data
        step("nova snapshot to glance", t0)

        # Cinder: a 1 GiB volume attached to the server.
        t0 = time.monotonic()
        volume = conn.block_storage.create_volume(size=1, name=tag)

        def delete_volume(volume_id: str):
            v = conn.block_storage.find_volume(volume_id, ignore_missing=True)
            if v is not None:
                conn.block_storage.delete_volume(v)
                conn.block_storage.wait_for_delete(v, wait=WAIT)

        cleanups.append(("volume", lambda: delete_volume(volume.id)))
        volume = conn.block_storage.wait_for_status(
            volume, "available", failures=["error"], wait=WAIT
        )
        conn.compute.create_volume_attachment(server, volume=volume.id)

        def detach():
            v = conn.block_storage.get_volume(volume.id)
            if v.status == "in-use":
                conn.compute.delete_volume_attachment(server, volume.id)
                conn.block_storage.wait_for_status(v, "available", failures=["error"], wait=WAIT)

        cleanups.append(("attachment", detach))
        volume = conn.block_storage.wait_for_status(volume, "in-use", failures=["error"], wait=WAIT)
        step("cinder create+attach", t0)

        # Known bytes into the backing file (only possible when we can reach it, e.g. as root).
        backing = openstack_service.volume_file(volume.id)
        wrote_pattern = False
        if backing.exists() and os.access(backing, os.W_OK):
            with open(backing, "r+b") as f:
                for offset, chunk in PATTERN.items():
                    f.seek(offset)
                    f.write(chunk)
            wrote_pattern = True

        # Snapshot (forced: the volume is in use), backup from the snapshot, restore.
        t0 = time.monotonic()
        snapshot = conn.block_storage.create_snapshot(volume_id=volume.id, name=tag, is_forced=True)

        def delete_snapshot():
            conn.block_storage.delete_snapshot(snapshot, ignore_missing=True)
            conn.block_storage.wait_for_delete(snapshot, wait=WAIT)

        cleanups.append(("snapshot", delete_snapshot))
        snapshot = conn.block_storage.wait_for_status(
            snapshot, "available", failures=["error"], wait=WAIT
        )
        step("cinder snapshot", t0)

        t0 = time.monotonic()
        backup = conn.block_storage.create_backup(
            volume_id=volume.id, snapshot_id=snapshot.id, name=tag, force=True
        )

        def delete_backup():
            conn.block_storage.delete_backup(backup, ignore_missing=True)
            conn.block_storage.wait_for_delete(backup, wait=WAIT)

        cleanups.append(("backup", delete_backup))
        backup = conn.block_storage.wait_for_status(
            backup, "available", failures=["error"], interval=1, wait=WAIT
        )
        assert backup.snapshot_id == snapshot.id
        step("cinder backup from snapshot", t0)

        t0 = time.monotonic()
        restored = conn.block_storage.restore_backup(backup, name=tag + "-restored")
        restored_id = restored.volume_id
        assert restored_id
        cleanups.append(("restored volume", lambda: delete_volume(restored_id)))
        restored_volume = conn.block_storage.wait_for_status(
            conn.block_storage.get_volume(restored_id),
            "available",
            failures=["error", "error_restoring"],
            interval=1,
            wait=WAIT,
        )
        assert restored_volume.size == 1
        conn.block_storage.wait_for_status(
            backup, "available", failures=["error"], interval=1, wait=WAIT
        )
        step("cinder restore", t0)

        if wrote_pattern:
            with open(openstack_service.volume_file(restored_id), "rb") as f:
                for offset, chunk in PATTERN.items():
                    f.seek(offset)
                    assert f.read(len(chunk)) == chunk, (
                        f"restored volume differs at offset {offset}"
                    )
    finally:
        t0 = time.monotonic()
        errors = []
        for what, undo in reversed(cleanups):
            try:
                undo()
            except Exception as exc:  # keep deleting the rest
                errors.append(f"{what}: {exc!r}")
        step("cleanup", t0)
        timings["total"] = round(time.monotonic() - t_all, 2)
        print("openstack-aio smoke timings (s):", timings)
    assert not errors, "cleanup failed: " + "; ".join(errors)
