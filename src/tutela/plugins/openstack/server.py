"""`OS::Nova::Server`: a Nova server's definition; its volumes and boot image are its children.

Protect: `on_prepare_begin` quiesces the server (`quiesce`: `pause` (default), `lock` or
`none`) before any child's hook starts; `on_prepare_finish` releases it after every child's
`on_prepare_finish` (the volumes' snapshots), so all of them fall inside one window (rules 1 and
3 of the six).  `on_main` saves the definition: flavor, image, key, metadata, security groups,
networks and block device mapping.  If the operation fails in between, `on_abort` releases the
server.  Restore (`on_complete`, when the image and the volumes are restored) boots a new server
from the restored image (`networks='none'` when it had none) and attaches the restored volumes.
"""

from __future__ import annotations

import time
from typing import Any

from tutela.errors import TutelaError
from tutela.plugin import Operation
from tutela.plugins.openstack import schemas
from tutela.plugins.openstack.common import (
    IMAGE,
    PROJECT,
    SERVER,
    VOLUME,
    Clients,
    DeleteSection,
    OpenStackPlugin,
    OpenStackProtectable,
    new_id,
    project_of,
    read_info,
    restored_name,
    target_project,
    update_info,
    wait_for,
)
from tutela.resource import Resource


def image_id_of(server: Any) -> str | None:
    image = server.image
    if isinstance(image, dict):
        return image.get("id") or None
    return getattr(image, "id", None) or None


def server_resource(server: Any, project_id: str | None) -> Resource:
    return Resource(
        SERVER,
        server.id,
        name=server.name or server.id,
        extra_info={
            "project_id": project_id or server.project_id,
            "image_id": image_id_of(server),
        },
    )


def _fault(server: Any) -> str | None:
    fault = server.fault or {}
    return fault.get("message") if isinstance(fault, dict) else str(fault)


class ServerProtectable(OpenStackProtectable):
    """The servers of a project."""

    resource_type = SERVER
    parent_types = (PROJECT,)

    def list_resources(self, context, parameters=None) -> list[Resource]:
        conn = self.clients.base()
        pid = conn.current_project_id
        return [server_resource(s, pid) for s in conn.compute.servers(details=True)]

    def show_resource(self, context, resource_id: str) -> Resource:
        conn, server = self.fetch(resource_id, lambda c: c.compute.get_server(resource_id))
        return server_resource(server, server.project_id or conn.current_project_id)

    def get_dependent_resources(self, context, parent_resource: Resource) -> list[Resource]:
        if parent_resource.type != PROJECT:
            return []
        conn = self.clients.for_project(parent_resource.id)
        return [server_resource(s, parent_resource.id) for s in conn.compute.servers(details=True)]


class ProtectServer(Operation):
    idempotent_hooks = frozenset({"on_main"})  # saving the definition again is harmless

    def __init__(self, clients: Clients):
        self.clients = clients

    def _conn(self, resource: Resource) -> Any:
        return self.clients.for_project(project_of(resource) or self.clients.project_id())

    def on_prepare_begin(self, checkpoint, context, resource, parameters, **kwargs):
        """Hold the server before any of its volumes is snapshotted."""
        conn = self._conn(resource)
        how = parameters.get("quiesce", "pause")
        server = conn.compute.get_server(resource.id)
        update_info(
            checkpoint,
            project_id=project_of(resource) or self.clients.project_id(),
            quiesce=how,
            quiesced=None,
            quiesced_at=None,
            released_at=None,
        )
        if how == "pause":
            if server.status != "ACTIVE":
                context.progress.message(f"{resource.key} is {server.status}: not paused")
                how = "none"
            else:
                conn.compute.pause_server(resource.id)
                update_info(checkpoint, quiesced="pause")  # on_abort must undo from here on
                wait_for(
                    f"pause of {resource.key}",
                    lambda: conn.compute.get_server(resource.id),
                    {"paused"},
                    {"error"},
                    self.clients,
                    context,
                    reason=_fault,
                )
        elif how == "lock":
            if server.is_locked:
                context.progress.message(f"{resource.key} is already locked: left as it is")
                how = "none"
            else:
                conn.compute.lock_server(resource.id, locked_reason=f"tutela {checkpoint.id}")
                update_info(checkpoint, quiesced="lock")
        update_info(checkpoint, quiesced=how, quiesced_at=time.time())

    def _release(self, checkpoint, context, resource) -> None:
        info = read_info(checkpoint)
        how = info.get("quiesced")
        conn = self._conn(resource)
        if how == "pause":
            server = conn.compute.get_server(resource.id)
            if server.status == "PAUSED" or server.vm_state == "paused":
                conn.compute.unpause_server(resource.id)
            wait_for(
                f"unpause of {resource.key}",
                lambda: conn.compute.get_server(resource.id),
                {"active"},
                {"error"},
                self.clients,
                context,
                reason=_fault,
            )
        elif how == "lock":
            conn.compute.unlock_server(resource.id)
        update_info(checkpoint, released_at=time.time())

    def on_prepare_finish(self, checkpoint, context, resource, parameters, **kwargs):
        """Every child's snapshot is taken: let the server run again."""
        self._release(checkpoint, context, resource)

    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        """Save what it takes to boot an equivalent server."""
        conn = self._conn(resource)
        server = conn.compute.get_server(resource.id)
        attachments = [
            {
                "volume_id": a.volume_id,
                "device": a.device,
                "tag": getattr(a, "tag", None),
                "delete_on_termination": getattr(a, "delete_on_termination", None),
            }
            for a in conn.compute.volume_attachments(resource.id)
        ]
        networks = []
        if server.addresses:
            for port in conn.network.ports(device_id=resource.id):
                networks.append(
                    {
                        "network_id": port.network_id,
                        "port_id": port.id,
                        "fixed_ips": [ip.get("ip_address") for ip in port.fixed_ips or []],
                        "mac_address": port.mac_address,
                    }
                )
        flavor = server.flavor
        flavor = flavor.to_dict() if hasattr(flavor, "to_dict") else dict(flavor or {})
        definition = {
            "name": server.name,
            "description": server.description,
            "flavor": {
                k: v
                for k, v in flavor.items()
                if k in ("id", "name", "original_name", "vcpus", "ram", "disk", "extra_specs")
                and v is not None
            },
            "image_id": image_id_of(server),
            "key_name": server.key_name,
            "metadata": dict(server.metadata or {}),
            "security_groups": sorted(
                {g.get("name") for g in server.security_groups or [] if g.get("name")}
            ),
            "networks": networks,
            "addresses": server.addresses or {},
            "block_device_mapping": sorted(attachments, key=lambda a: a["device"] or ""),
            "root_device_name": server.root_device_name,
            "availability_zone": server.availability_zone,
            "status": server.status,
            "tags": list(server.tags or []),
        }
        update_info(checkpoint, definition=definition, saved_at=time.time())

    def on_abort(self, checkpoint, context, resource, parameters, error=None, **kwargs):
        info = read_info(checkpoint)
        if info.get("quiesced") in ("pause", "lock") and not info.get("released_at"):
            self._release(checkpoint, context, resource)


class RestoreServer(Operation):
    def __init__(self, clients: Clients):
        self.clients = clients

    def _flavor(self, conn: Any, parameters: dict[str, Any], saved: dict[str, Any]) -> Any:
        wanted = parameters.get("flavor")
        candidates = [wanted] if wanted else [saved.get("id"), saved.get("original_name")]
        for ref in candidates:
            if ref:
                flavor = conn.compute.find_flavor(ref, ignore_missing=True)
                if flavor is not None:
                    return flavor
        if not wanted:
            for flavor in conn.compute.flavors(details=True):
                if (flavor.vcpus, flavor.ram, flavor.disk) == (
                    saved.get("vcpus"),
                    saved.get("ram"),
                    saved.get("disk"),
                ):
                    return flavor
        raise TutelaError(
            f"no flavor {wanted or saved.get('original_name') or saved.get('id')!r}; "
            "give the restore parameter flavor"
        )

    def on_complete(self, checkpoint, context, resource, parameters, **kwargs):
        """Boot from the restored image and attach the restored volumes (both complete)."""
        info = read_info(checkpoint)
        d = info.get("definition")
        if not d:
            raise TutelaError(f"{resource.key}: checkpoint {checkpoint.id} has no definition")
        project_id = target_project(self.clients, context, parameters, project_of(resource, info))
        conn = self.clients.for_project(project_id)
        image_id = parameters.get("image")
        if not image_id and d.get("image_id"):
            image_id = new_id(context, IMAGE, d["image_id"])
            if image_id is None and conn.image.find_image(d["image_id"], ignore_missing=True):
                image_id = d["image_id"]
        if not image_id:
            raise TutelaError(
                f"{resource.key}: its boot image {d.get('image_id')} is neither restored nor "
                "available; give the restore parameter image"
            )
        flavor = self._flavor(conn, parameters, d.get("flavor") or {})
        networks: Any = parameters.get("networks")
        if networks is None:
            ids = sorted({n["network_id"] for n in d.get("networks") or []})
            networks = [{"uuid": i} for i in ids] if ids else "none"
        elif isinstance(networks, list):
            networks = [{"uuid": i} for i in networks]
        attrs: dict[str, Any] = {
            "name": restored_name(checkpoint, parameters, d.get("name")),
            "image_id": image_id,
            "flavor_id": flavor.id,
            "networks": networks,
            "metadata": d.get("metadata") or {},
        }
        if d.get("key_name"):
            if conn.compute.find_keypair(d["key_name"], ignore_missing=True) is not None:
                attrs["key_name"] = d["key_name"]
            else:
                context.progress.message(f"{resource.key}: keypair {d['key_name']!r} not found")
        if networks != "none" and d.get("security_groups"):
            attrs["security_groups"] = [{"name": n} for n in d["security_groups"]]
        server = conn.compute.create_server(**attrs)
        try:
            server = wait_for(
                f"boot of {resource.key} as {server.id}",
                lambda: conn.compute.get_server(server.id),
                {"active"},
                {"error"},
                self.clients,
                context,
                reason=_fault,
            )
        except TutelaError:
            conn.compute.delete_server(server.id, ignore_missing=True)
            raise
        context.set_new_resource(
            resource,
            Resource(SERVER, server.id, name=server.name, extra_info={"project_id": project_id}),
        )
        if not parameters.get("attach_volumes", True):
            return
        for bdm in d.get("block_device_mapping") or []:
            volume_id = new_id(context, VOLUME, bdm["volume_id"])
            if volume_id is None:
                context.progress.message(
                    f"{resource.key}: volume {bdm['volume_id']} was not restored; not attached"
                )
                continue
            conn.compute.create_volume_attachment(server.id, volume=volume_id)
            wait_for(
                f"attachment of volume {volume_id} to {server.id}",
                lambda vid=volume_id: conn.block_storage.get_volume(vid),
                {"in-use"},
                {"error", "error_attaching"},
                self.clients,
                context,
            )


class ServerPlugin(OpenStackPlugin):
    resource_type = SERVER
    options_schema = schemas.SERVER_OPTIONS
    restore_schema = schemas.SERVER_RESTORE
    saved_info_schema = schemas.SERVER_SAVED
    protect_operation = ProtectServer
    restore_operation = RestoreServer
    delete_operation = DeleteSection
