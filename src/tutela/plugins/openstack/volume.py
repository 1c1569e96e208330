"""`OS::Cinder::Volume`: a Cinder volume, protected as a Cinder backup of a snapshot.

Protect: `on_prepare_finish` takes a snapshot (forced when the volume is in use), inside the
quiesce window of the server it is attached to; `on_main` makes a Cinder backup *from that
snapshot* (the heavy copy, outside the window, in parallel with the other volumes) and waits
for it; `on_complete` deletes the temporary snapshot.  If anything fails, `on_abort` deletes the
snapshot too (and a backup that ended in error), so a failed checkpoint leaves no snapshot.
Restore creates a new volume from the backup (in the target project); delete removes the backup.
The bank holds the volume's description and the backup id; the data stays in Cinder's backup
store (the bank and the backup store are separate failure domains only if you configure them so).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from openstack.exceptions import NotFoundException

from tutela.errors import TutelaError
from tutela.plugin import Operation
from tutela.plugins.openstack import schemas
from tutela.plugins.openstack.common import (
    PROJECT,
    SERVER,
    VOLUME,
    Clients,
    GiB,
    OpenStackPlugin,
    OpenStackProtectable,
    describe_error,
    project_of,
    read_info,
    restored_name,
    target_project,
    update_info,
    wait_for,
    wait_gone,
)
from tutela.resource import Resource


def volume_resource(volume: Any, project_id: str | None) -> Resource:
    return Resource(
        VOLUME,
        volume.id,
        name=volume.name or volume.id,
        extra_info={"project_id": project_id or volume.project_id, "size_gb": volume.size},
    )


def attached_server_ids(volume: Any) -> list[str]:
    return [a.get("server_id") for a in (volume.attachments or []) if a.get("server_id")]


class VolumeProtectable(OpenStackProtectable):
    """Volumes of a project that no server holds, and the volumes attached to a server."""

    resource_type = VOLUME
    parent_types = (PROJECT, SERVER)

    def list_resources(self, context, parameters=None) -> list[Resource]:
        conn = self.clients.base()
        pid = conn.current_project_id
        return [volume_resource(v, pid) for v in conn.block_storage.volumes(details=True)]

    def show_resource(self, context, resource_id: str) -> Resource:
        conn, volume = self.fetch(resource_id, lambda c: c.block_storage.get_volume(resource_id))
        return volume_resource(volume, volume.project_id or conn.current_project_id)

    def get_dependent_resources(self, context, parent_resource: Resource) -> list[Resource]:
        if parent_resource.type == PROJECT:
            conn = self.clients.for_project(parent_resource.id)
            return [
                volume_resource(v, parent_resource.id)
                for v in conn.block_storage.volumes(details=True)
                if not attached_server_ids(v)
            ]
        if parent_resource.type == SERVER:
            pid = parent_resource.extra_info.get("project_id")
            conn = self.clients.for_project(pid)
            server = conn.compute.get_server(parent_resource.id)
            ids = [a["id"] for a in (server.attached_volumes or []) if a.get("id")]
            return [volume_resource(conn.block_storage.get_volume(i), pid) for i in ids]
        return []


def _delete_snapshot(clients: Clients, conn: Any, snapshot_id: str, context=None) -> bool:
    """Delete a snapshot (callers make sure no backup of it still runs); True if it existed.

    A snapshot still `backing-up` after its backup ended was left so by a cinder-backup that
    died mid-way (Cinder resets the volume on restart, not the snapshot): it is force-deleted.
    """
    snap = conn.block_storage.find_snapshot(snapshot_id, ignore_missing=True)
    if snap is None:
        return False
    if snap.status in ("creating", "backing-up"):
        with contextlib.suppress(TutelaError):
            snap = wait_for(
                f"snapshot {snapshot_id}",
                lambda: conn.block_storage.get_snapshot(snapshot_id),
                {"available", "error"},
                set(),
                clients,
                context,
                timeout=min(clients.timeout, 30.0),
            )
    if snap.status == "backing-up":
        conn.block_storage.delete_snapshot(snapshot_id, ignore_missing=True, force=True)
    elif snap.status != "deleting":
        conn.block_storage.delete_snapshot(snapshot_id, ignore_missing=True)
    wait_gone(
        f"snapshot {snapshot_id}",
        lambda: conn.block_storage.find_snapshot(snapshot_id, ignore_missing=True),
        clients,
    )
    return True


def _backup_reason(backup: Any) -> str | None:
    return backup.fail_reason or None


def _delete_backup(clients: Clients, conn: Any, backup_id: str, context=None) -> bool:
    """Delete a backup and wait until it is gone; True if it existed.

    Cinder answers 404 both for a backup that is gone and for "no cinder-backup service is up"
    (one that has just restarted has not reported in yet): `ignore_missing` would take the
    second for the first and leave the backup behind.  So a 404 for a backup that still exists
    is waited out, up to the timeout, and then is an error.  A backup still being written or
    read is waited for first (Cinder refuses to delete it)."""
    what = f"backup {backup_id}"
    deadline = time.monotonic() + clients.timeout
    waiting = False
    while True:
        backup = conn.block_storage.find_backup(backup_id, ignore_missing=True)
        if backup is None:
            return False
        if backup.status == "deleting":
            break
        if backup.status in ("creating", "restoring"):
            backup = wait_for(
                what,
                lambda: conn.block_storage.get_backup(backup_id),
                {"available", "error"},
                set(),
                clients,
                context,
            )
        try:
            conn.block_storage.delete_backup(backup_id, ignore_missing=False)
            break
        except NotFoundException as exc:
            if time.monotonic() > deadline:
                raise TutelaError(
                    f"{what} not deleted after {clients.timeout:g} s: {describe_error(exc)}"
                ) from exc
            if not waiting and context is not None:
                context.progress.message(f"{what}: waiting for a cinder-backup service")
            waiting = True
            if context is not None:
                context.check_cancelled()
            time.sleep(clients.interval)
    wait_gone(what, lambda: conn.block_storage.find_backup(backup_id, ignore_missing=True), clients)
    return True


#: Seconds per GiB for a backup or restore here (POSIX driver): a guess for the scheduler,
#: which starts the longest remaining work first.
SECONDS_PER_GIB = 15.0


class _VolumeOperation(Operation):
    """A volume operation whose main hook moves the volume's bytes: it takes about as long
    as the volume is large, which the scheduler uses to start big volumes first."""

    def __init__(self, clients: Clients, size_gb: int | None = None):
        self.clients = clients
        self.size_gb = size_gb

    def estimated_duration(self, hook: str) -> float | None:
        if hook == "on_main" and self.size_gb:
            return self.size_gb * SECONDS_PER_GIB
        return None


class ProtectVolume(_VolumeOperation):
    idempotent_hooks = frozenset({"on_complete"})

    def on_prepare_finish(self, checkpoint, context, resource, parameters, **kwargs):
        """Snapshot now: the parent server is quiesced until every child's prepare_finish."""
        project_id = project_of(resource) or self.clients.project_id()
        conn = self.clients.for_project(project_id)
        volume = conn.block_storage.get_volume(resource.id)
        started = time.time()
        snap = conn.block_storage.create_snapshot(
            volume_id=volume.id,
            name=f"tutela-{checkpoint.id[:8]}-{volume.id[:8]}",
            description=f"temporary snapshot of tutela checkpoint {checkpoint.id}",
            is_forced=volume.status == "in-use",
        )
        update_info(
            checkpoint,
            project_id=project_id,
            volume={
                "id": volume.id,
                "name": volume.name,
                "description": volume.description,
                "size_gb": volume.size,
                "volume_type": volume.volume_type,
                "availability_zone": volume.availability_zone,
                "bootable": str(volume.is_bootable).lower() == "true",
                "metadata": dict(volume.metadata or {}),
                "status": volume.status,
                "attached_to": attached_server_ids(volume),
            },
            snapshot_id=snap.id,
            snapshot_started_at=started,
            snapshot_at=None,
            snapshot_deleted_at=None,
            backup_id=None,
            backup_at=None,
        )
        wait_for(
            f"snapshot of {resource.key}",
            lambda: conn.block_storage.get_snapshot(snap.id),
            {"available"},
            {"error"},
            self.clients,
            context,
        )
        update_info(checkpoint, snapshot_at=time.time())

    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        """Copy the snapshot into a Cinder backup (the long part, in parallel with others)."""
        info = read_info(checkpoint)
        conn = self.clients.for_project(info["project_id"])
        backup = conn.block_storage.create_backup(
            volume_id=resource.id,
            snapshot_id=info["snapshot_id"],
            name=f"tutela-{checkpoint.id[:8]}-{resource.id[:8]}",
            description=f"tutela checkpoint {checkpoint.id}",
            force=True,
            is_incremental=bool(parameters.get("incremental", False)),
        )
        update_info(checkpoint, backup_id=backup.id)
        try:
            done = wait_for(
                f"backup of {resource.key}",
                lambda: conn.block_storage.get_backup(backup.id),
                {"available"},
                {"error"},
                self.clients,
                context,
                reason=_backup_reason,
            )
        except TutelaError:
            # Whatever Cinder does with this backup later, it is not this checkpoint's: a
            # cinder-backup restarted with the create request still queued resets the backup
            # to error and then runs the request anyway, to `available`.  on_abort removes it.
            update_info(checkpoint, backup_failed=True)
            # A failed backup no longer holds the snapshot: free it now.  One still running
            # (a timeout) keeps it; on_abort waits for the backup, then deletes both.
            try:
                current = conn.block_storage.find_backup(backup.id, ignore_missing=True)
                running = current is not None and current.status == "creating"
                if not running and _delete_snapshot(
                    self.clients, conn, info["snapshot_id"], context
                ):
                    update_info(checkpoint, snapshot_deleted_at=time.time())
            except Exception as exc:  # keep Cinder's reason as the error
                context.progress.message(
                    f"{resource.key}: snapshot {info['snapshot_id']} not deleted: "
                    f"{describe_error(exc)}"
                )
            raise
        size = int(done.size or info["volume"]["size_gb"]) * GiB
        context.report_bytes(size)
        update_info(checkpoint, backup_at=time.time(), size_bytes=size)

    def on_complete(self, checkpoint, context, resource, parameters, **kwargs):
        """The backup is done: the temporary snapshot goes."""
        info = read_info(checkpoint)
        conn = self.clients.for_project(info["project_id"])
        _delete_snapshot(self.clients, conn, info["snapshot_id"], context)
        update_info(checkpoint, snapshot_deleted_at=time.time())

    def on_abort(self, checkpoint, context, resource, parameters, error=None, **kwargs):
        """No snapshot stays behind; a backup that failed is removed, also one that Cinder
        finished after reporting it failed (a good one stays for the checkpoint's delete)."""
        info = read_info(checkpoint)
        if not info.get("snapshot_id"):
            return
        conn = self.clients.for_project(info["project_id"])
        backup_id = info.get("backup_id")
        if backup_id:
            backup = conn.block_storage.find_backup(backup_id, ignore_missing=True)
            if backup is not None and backup.status == "creating":
                backup = wait_for(
                    f"backup {backup_id}",
                    lambda: conn.block_storage.get_backup(backup_id),
                    {"available", "error"},
                    set(),
                    self.clients,
                    context,
                )
            if backup is not None and (backup.status == "error" or info.get("backup_failed")):
                # backup_id stays until the backup is gone: if this fails, the checkpoint's
                # delete removes it.
                _delete_backup(self.clients, conn, backup_id, context)
                update_info(checkpoint, backup_id=None, failed_backup_id=backup_id)
        if not info.get("snapshot_deleted_at"):
            _delete_snapshot(self.clients, conn, info["snapshot_id"], context)
            update_info(checkpoint, snapshot_deleted_at=time.time())


class RestoreVolume(_VolumeOperation):
    def _source(self, project_id: str) -> Any:
        try:
            return self.clients.for_project(project_id)
        except TutelaError:
            return self.clients.base()  # the original project is gone; an admin still can

    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        """A new volume from the backup, in the target project; never an existing volume."""
        info = read_info(checkpoint)
        backup_id = info.get("backup_id")
        if not backup_id or not info.get("backup_at"):
            raise TutelaError(f"{resource.key}: checkpoint {checkpoint.id} holds no backup of it")
        source_id = project_of(resource, info) or self.clients.project_id()
        project_id = target_project(self.clients, context, parameters, source_id)
        conn = self.clients.for_project(project_id)
        source = self._source(source_id) if project_id != source_id else conn
        name = restored_name(checkpoint, parameters, info["volume"].get("name"))
        maker = conn
        try:
            result = conn.block_storage.restore_backup(backup_id, name=name)
        except NotFoundException:
            if source is conn:
                raise
            # Cinder lets only admins restore another project's backup: restore it where the
            # backup lives, then hand the new volume over with a volume transfer.
            maker = source
            result = source.block_storage.restore_backup(backup_id, name=name)
        volume_id = result.volume_id
        if not volume_id:
            raise TutelaError(f"{resource.key}: Cinder returned no volume for the restore")
        volume = wait_for(
            f"restore of {resource.key} into volume {volume_id}",
            lambda: maker.block_storage.get_volume(volume_id),
            {"available"},
            {"error", "error_restoring"},
            self.clients,
            context,
        )
        if maker is not conn:
            try:
                transfer = source.block_storage.create_transfer(
                    volume_id=volume_id, name=f"tutela-{checkpoint.id[:8]}"
                )
                conn.block_storage.accept_transfer(transfer.id, auth_key=transfer.auth_key)
            except Exception:
                source.block_storage.delete_volume(volume_id, ignore_missing=True)
                raise
            volume = conn.block_storage.get_volume(volume_id)
            context.progress.message(
                f"{resource.key}: restored in project {source_id}, transferred to {project_id}"
            )
        new = Resource(VOLUME, volume_id, name=name, extra_info={"project_id": project_id})
        context.set_new_resource(resource, new)
        if info["volume"].get("description"):
            conn.block_storage.update_volume(volume, description=info["volume"]["description"])
        meta = info["volume"].get("metadata") or {}
        if meta:
            conn.block_storage.set_volume_metadata(volume, **meta)
        # The backup is `restoring` until Cinder has finished with it; wait, so that a delete
        # of the checkpoint right after finds it available.
        wait_for(
            f"backup {backup_id}",
            lambda: source.block_storage.get_backup(backup_id),
            {"available"},
            {"error"},
            self.clients,
            context,
            reason=_backup_reason,
        )
        context.report_bytes(int(volume.size or 0) * GiB)


class DeleteVolume(Operation):
    idempotent_hooks = frozenset({"on_main"})

    def __init__(self, clients: Clients):
        self.clients = clients

    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        """The backup (and a snapshot a failed protect may have left) goes."""
        info = read_info(checkpoint)
        if info:
            try:
                conn = self.clients.for_project(info.get("project_id"))
            except TutelaError:
                conn = self.clients.base()  # the project is gone; an admin can still delete
            if info.get("backup_id"):
                _delete_backup(self.clients, conn, info["backup_id"], context)
            if info.get("snapshot_id") and not info.get("snapshot_deleted_at"):
                _delete_snapshot(self.clients, conn, info["snapshot_id"], context)
        checkpoint.bank_section.delete_all()


class VolumePlugin(OpenStackPlugin):
    resource_type = VOLUME
    options_schema = schemas.VOLUME_OPTIONS
    restore_schema = schemas.VOLUME_RESTORE
    saved_info_schema = schemas.VOLUME_SAVED
    protect_operation = ProtectVolume
    restore_operation = RestoreVolume
    delete_operation = DeleteVolume

    def operation(self, cls, resource: Resource) -> Operation:
        if cls is DeleteVolume:
            return DeleteVolume(self.clients)
        return cls(self.clients, resource.extra_info.get("size_gb"))
