"""`OS::Keystone::Project`: a project and, as its children, what lives in it.

Dependents: its servers, its volumes that are attached to no server (an attached volume is a
child of its server, so that it is one node and its snapshot falls in the server's quiesce
window) and the images it owns.  Protect saves the project's description; restore picks the
target project in `on_prepare_begin` — before any child's hook — and records it with
`context.set_new_resource`, so every child restores into it (`target_project`, id or name;
default: the original project).  The target must exist and the configured user needs a role
in it; a restore never creates or changes a project.
"""

from __future__ import annotations

import time
from typing import Any

from tutela.errors import ResourceError
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
    describe_error,
    resolve_project,
    update_info,
)
from tutela.resource import Resource


class ProjectProtectable(OpenStackProtectable):
    """The project the connection is scoped to (others by id or name, with a role there)."""

    resource_type = PROJECT
    parent_types = ()

    def list_resources(self, context, parameters=None) -> list[Resource]:
        return [self.show_resource(context, self.clients.project_id())]

    def show_resource(self, context, resource_id: str) -> Resource:
        conn = self.clients.base()
        found = resolve_project(self.clients, resource_id)
        name = found.name
        if name is None:
            try:
                name = conn.identity.get_project(found.id).name
            except Exception:  # a member may not read its own project: keep the id
                name = found.id
        return Resource(PROJECT, found.id, name=name, extra_info={"project_id": found.id})


class ProtectProject(Operation):
    idempotent_hooks = frozenset({"on_main"})

    def __init__(self, clients: Clients):
        self.clients = clients

    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        info: dict[str, Any] = {"project_id": resource.id, "name": resource.name}
        try:
            project = self.clients.base().identity.get_project(resource.id)
            info.update(
                name=project.name, description=project.description, domain_id=project.domain_id
            )
        except Exception as exc:
            context.progress.message(f"{resource.key}: details not read ({describe_error(exc)})")
        kids = checkpoint.dependents()
        for key, kind in (("servers", SERVER), ("volumes", VOLUME), ("images", IMAGE)):
            info[key] = sum(1 for r in kids if r.type == kind)
        update_info(checkpoint, **info, saved_at=time.time())


class RestoreProject(Operation):
    def __init__(self, clients: Clients):
        self.clients = clients

    def on_prepare_begin(self, checkpoint, context, resource, parameters, **kwargs):
        """Choose the target before any child starts; the children read it."""
        ref = parameters.get("target_project")
        if ref:
            target = resolve_project(self.clients, str(ref))
        else:
            target = Resource(PROJECT, resource.id, name=resource.name)
        try:
            self.clients.for_project(target.id)  # fail early without a role there
        except Exception as exc:
            raise ResourceError(f"{resource.key}: target {target.id}: {exc}") from None
        context.set_new_resource(resource, target)


class ProjectPlugin(OpenStackPlugin):
    resource_type = PROJECT
    options_schema = schemas.PROJECT_OPTIONS
    restore_schema = schemas.PROJECT_RESTORE
    saved_info_schema = schemas.PROJECT_SAVED
    protect_operation = ProtectProject
    restore_operation = RestoreProject
    delete_operation = DeleteSection
