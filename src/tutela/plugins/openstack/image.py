"""`OS::Glance::Image`: a Glance image, its bytes kept in the bank's content store.

Protect (`on_main`) streams the image data from Glance into the bank through
`tutela.datapath.save_stream`, so the bytes are deduplicated: a second checkpoint of the same
image, or of a near copy, stores almost nothing new.  The checksums Glance reports (md5 and
`os_hash_value`) are checked against the bytes read, and every Glance property is saved.
Restore (`on_main`) uploads the bytes as a *new* image (name: `name`, or the original name plus
a suffix) in the target project and checks both checksums before the image is handed to the
servers that boot from it; `use_existing: true` maps the image to the original instead when that
still exists with the same checksum.  An image shared by several servers is one node of the
graph, restored once.  Delete removes the image's data from the checkpoint.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

from tutela.datapath import open_stream, save_stream
from tutela.errors import TutelaError
from tutela.plugin import Operation
from tutela.plugins.openstack import schemas
from tutela.plugins.openstack.common import (
    IMAGE,
    PROJECT,
    SERVER,
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

CHUNK = 1 << 20
#: Glance fields a client cannot set on a new image (or that belong to the old one).
READ_ONLY = {
    "id",
    "status",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "size",
    "virtual_size",
    "created_at",
    "updated_at",
    "file",
    "schema",
    "self",
    "direct_url",
    "locations",
    "owner",
    "stores",
    "protected",
    "os_hidden",
    "name",
}


def image_resource(image: Any, project_id: str | None) -> Resource:
    return Resource(
        IMAGE,
        image.id,
        name=image.name or image.id,
        extra_info={"project_id": project_id, "owner": image.owner},
    )


class ImageProtectable(OpenStackProtectable):
    """Images a project owns, and the image a server boots from (one node when shared)."""

    resource_type = IMAGE
    parent_types = (PROJECT, SERVER)

    def list_resources(self, context, parameters=None) -> list[Resource]:
        conn = self.clients.base()
        pid = conn.current_project_id
        return [image_resource(i, pid) for i in conn.image.images(owner=pid, status="active")]

    def show_resource(self, context, resource_id: str) -> Resource:
        conn, image = self.fetch(resource_id, lambda c: c.image.get_image(resource_id))
        return image_resource(image, conn.current_project_id)

    def get_dependent_resources(self, context, parent_resource: Resource) -> list[Resource]:
        if parent_resource.type == PROJECT:
            conn = self.clients.for_project(parent_resource.id)
            return [
                image_resource(i, parent_resource.id)
                for i in conn.image.images(owner=parent_resource.id, status="active")
            ]
        if parent_resource.type == SERVER:
            pid = parent_resource.extra_info.get("project_id")
            image_id = parent_resource.extra_info.get("image_id")
            if not image_id:
                return []  # booted from a volume
            conn = self.clients.for_project(pid)
            image = conn.image.find_image(image_id, ignore_missing=True)
            if image is None:
                # The boot image was deleted from Glance: restore then needs `image`.
                return []
            return [image_resource(image, pid)]
        return []


def raw_image(conn: Any, image_id: str) -> dict[str, Any]:
    """Every field and property of the image, as Glance returns it."""
    return conn.image.get(f"/images/{image_id}").json()


class ProtectImage(Operation):
    idempotent_hooks = frozenset({"on_main"})  # re-reading the bytes stores nothing twice

    def __init__(self, clients: Clients):
        self.clients = clients

    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        project_id = project_of(resource) or self.clients.project_id()
        conn = self.clients.for_project(project_id)
        props = raw_image(conn, resource.id)
        if props.get("status") != "active":
            raise TutelaError(f"{resource.key} is {props.get('status')}, not active; no data")
        algo = props.get("os_hash_algo") or "sha512"
        md5 = hashlib.md5(usedforsecurity=False)
        multi = hashlib.new(algo)
        response = conn.image.download_image(resource.id, stream=True)

        def blocks() -> Iterator[bytes]:
            for block in response.iter_content(CHUNK):
                if block:
                    md5.update(block)
                    multi.update(block)
                    yield block

        try:
            ref = save_stream(checkpoint, context, "data", blocks())
        finally:
            response.close()
        if props.get("checksum") and md5.hexdigest() != props["checksum"]:
            raise TutelaError(
                f"{resource.key}: read md5 {md5.hexdigest()}, Glance says {props['checksum']}"
            )
        if props.get("os_hash_value") and multi.hexdigest() != props["os_hash_value"]:
            raise TutelaError(f"{resource.key}: the {algo} of the bytes read differs from Glance's")
        update_info(
            checkpoint,
            project_id=project_id,
            image=props,
            data=ref,
            checksum=md5.hexdigest(),
            os_hash_algo=algo,
            os_hash_value=multi.hexdigest(),
            size=ref["size"],
            saved_at=time.time(),
        )


class RestoreImage(Operation):
    """Upload as a new image; not idempotent (a second run would make a second image)."""

    def __init__(self, clients: Clients):
        self.clients = clients

    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        info = read_info(checkpoint)
        if not info.get("data"):
            raise TutelaError(f"{resource.key}: checkpoint {checkpoint.id} holds no data for it")
        props = info["image"]
        project_id = target_project(self.clients, context, parameters, project_of(resource, info))
        conn = self.clients.for_project(project_id)
        if parameters.get("use_existing"):
            old = conn.image.find_image(resource.id, ignore_missing=True)
            if old is not None and old.checksum == info["checksum"] and old.status == "active":
                context.set_new_resource(resource, image_resource(old, project_id))
                return
        name = restored_name(checkpoint, parameters, props.get("name"))
        body = {k: v for k, v in props.items() if k not in READ_ONLY and v is not None}
        body = {k: v for k, v in body.items() if not k.startswith("os_glance")}
        if body.get("visibility") in ("public", "community"):
            body["visibility"] = "private"  # publishing is an admin's decision, not a restore's
        body["name"] = name
        created = conn.image.post("/images", json=body)
        if created.status_code >= 400:
            raise TutelaError(
                f"{resource.key}: Glance refused the new image ({created.status_code}): "
                f"{created.text[:300]}"
            )
        image_id = created.json()["id"]
        try:
            upload = conn.image.put(
                f"/images/{image_id}/file",
                data=open_stream(checkpoint, context, info["data"]),
                headers={"Content-Type": "application/octet-stream"},
            )
            if upload.status_code >= 400:
                raise TutelaError(
                    f"{resource.key}: upload to image {image_id} failed ({upload.status_code})"
                )
            image = wait_for(
                f"image {image_id}",
                lambda: conn.image.get_image(image_id),
                {"active"},
                {"killed", "deleted"},
                self.clients,
                context,
            )
            if image.checksum != info["checksum"] or (
                info.get("os_hash_value") and image.hash_value != info["os_hash_value"]
            ):
                raise TutelaError(
                    f"{resource.key}: uploaded image {image_id} has checksum {image.checksum}, "
                    f"expected {info['checksum']}"
                )
        except BaseException:
            conn.image.delete_image(image_id, ignore_missing=True)
            raise
        context.set_new_resource(resource, image_resource(image, project_id))


class ImagePlugin(OpenStackPlugin):
    resource_type = IMAGE
    options_schema = schemas.IMAGE_OPTIONS
    restore_schema = schemas.IMAGE_RESTORE
    saved_info_schema = schemas.IMAGE_SAVED
    protect_operation = ProtectImage
    restore_operation = RestoreImage
    delete_operation = DeleteSection


__all__ = ["ImagePlugin", "ImageProtectable", "new_id"]
