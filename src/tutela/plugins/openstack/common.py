"""The OpenStack connection, per-project scoping, waiting with progress and restore targets.

Config section `[openstack]` of the provider file, either

    cloud = NAME                 ; a cloud of clouds.yaml (OS_CLIENT_CONFIG_FILE or the usual places)
    clouds_file = PATH           ; optional: that clouds.yaml

or

    auth_url = http://127.0.0.1:5000/v3
    username = admin
    password = ...               ; or password_file = PATH (first line), kept out of the file
    project_name = admin
    user_domain_name = Default
    project_domain_name = Default
    region_name = RegionOne

plus, in both cases, `timeout` (seconds to wait for one OpenStack operation, default 900),
`poll_interval` (seconds, default 1) and `verify` (TLS verification, default true) / `cacert`.

The password is read when the first connection is made and never logged or put in a message.
Resources of another project are reached with a token scoped to that project (the configured
user needs a role there), so that backups, images and servers belong to the right project.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from tutela.errors import ConfigError, ObjectNotFound, ResourceError, TutelaError
from tutela.plugin import Operation, Protectable, ProtectionPlugin
from tutela.resource import Resource

PROJECT = "OS::Keystone::Project"
SERVER = "OS::Nova::Server"
VOLUME = "OS::Cinder::Volume"
IMAGE = "OS::Glance::Image"

SECTION = "openstack"
AUTH_KEYS = (
    "auth_url",
    "username",
    "user_id",
    "project_name",
    "project_id",
    "user_domain_name",
    "user_domain_id",
    "project_domain_name",
    "project_domain_id",
)
#: Every key of `[openstack]`, declared by the four plugins and their protectables.
CONFIG_KEYS = {
    SECTION: frozenset(
        {
            *AUTH_KEYS,
            "password",
            "password_file",
            "region_name",
            "cloud",
            "clouds_file",
            "verify",
            "cacert",
            "timeout",
            "poll_interval",
        }
    )
}
GiB = 1 << 30


class Clients:
    """Connections for one provider: the configured scope, and one per other project."""

    def __init__(self, config) -> None:
        self.config = config
        self.path = config.path if config is not None else "<none>"
        self.timeout = float(self._get_float("timeout", 900.0))
        self.interval = float(self._get_float("poll_interval", 1.0))
        self._base: Any = None
        self._scoped: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _get(self, key: str) -> str | None:
        if self.config is None:
            return None
        return self.config.get(SECTION, key)

    def _get_float(self, key: str, default: float) -> float:
        if self.config is None:
            return default
        return self.config.get_float(SECTION, key, default) or default

    def _connect(self) -> Any:
        import openstack
        import openstack.config

        if self.config is None or not self.config.has_section(SECTION):
            raise ConfigError(self.path, "has no [openstack] section", SECTION)
        cloud = self._get("cloud")
        extra: dict[str, Any] = {}
        if self.config.get(SECTION, "cacert"):
            extra["cacert"] = str(self.config.get_path(SECTION, "cacert"))
        if self.config.get(SECTION, "verify") is not None:
            extra["verify"] = self.config.get_bool(SECTION, "verify", True)
        if cloud:
            clouds_file = self.config.get_path(SECTION, "clouds_file")
            try:
                loader = openstack.config.OpenStackConfig(
                    config_files=[str(clouds_file)] if clouds_file else None
                )
                region = loader.get_one(cloud=cloud, region_name=self._get("region_name"), **extra)
            except Exception as exc:  # the sdk's message names the cloud, never a password
                raise ConfigError(
                    self.path, f"cloud {cloud!r}: {type(exc).__name__}: {exc}", f"{SECTION}.cloud"
                ) from None
            return openstack.connection.Connection(config=region)
        auth = {k: v for k in AUTH_KEYS if (v := self._get(k))}
        if "auth_url" not in auth:
            raise ConfigError(
                self.path, "is required (or give cloud = NAME)", f"{SECTION}.auth_url"
            )
        password = self._get("password")
        if not password:
            pw_file = self.config.get_path(SECTION, "password_file")
            if pw_file is None:
                raise ConfigError(
                    self.path, "is required (or password_file)", f"{SECTION}.password"
                )
            try:
                password = pw_file.read_text(encoding="utf-8").splitlines()[0].strip()
            except (OSError, IndexError):
                raise ConfigError(
                    self.path, f"cannot read {str(pw_file)!r}", f"{SECTION}.password_file"
                ) from None
        auth["password"] = password
        return openstack.connect(
            auth=auth,
            region_name=self._get("region_name"),
            identity_api_version="3",
            **extra,
        )

    def base(self) -> Any:
        """The connection in the configured scope (authenticated on first use)."""
        with self._lock:
            if self._base is None:
                conn = self._connect()
                try:
                    conn.authorize()
                except Exception as exc:
                    raise TutelaError(
                        f"OpenStack authentication failed ({self.path} [openstack]): "
                        f"{type(exc).__name__}: {_short(exc)}"
                    ) from None
                self._base = conn
            return self._base

    def project_id(self) -> str:
        return self.base().current_project_id

    def for_project(self, project_id: str | None) -> Any:
        """A connection scoped to `project_id` (the configured one when it is that project)."""
        base = self.base()
        if not project_id or project_id == base.current_project_id:
            return base
        with self._lock:
            conn = self._scoped.get(project_id)
            if conn is None:
                try:
                    conn = base.connect_as_project({"id": project_id})
                    conn.authorize()
                except Exception as exc:
                    raise TutelaError(
                        f"cannot get a token for project {project_id}: the configured user "
                        f"needs a role there ({type(exc).__name__}: {_short(exc)})"
                    ) from None
                self._scoped[project_id] = conn
            return conn


_clients: dict[tuple[Any, ...], Clients] = {}
_clients_lock = threading.Lock()


def clients_for(config) -> Clients:
    """One `Clients` per provider config (shared by the four plugins and their protectables)."""
    key: tuple[Any, ...] = (
        (config.path, tuple(sorted(config.section(SECTION).items())))
        if config is not None
        else ("<none>",)
    )
    with _clients_lock:
        found = _clients.get(key)
        if found is None:
            found = _clients[key] = Clients(config)
        return found


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_short(exc)}"


def wait_for(
    what: str,
    fetch: Callable[[], Any],
    ready: set[str],
    failed: set[str],
    clients: Clients,
    context: Any = None,
    reason: Callable[[Any], str | None] | None = None,
    status_attr: str = "status",
    timeout: float | None = None,
) -> Any:
    """Poll `fetch()` until its status is in `ready`; raise with OpenStack's reason on a
    status in `failed` or after the timeout.  Status changes are shown as progress notes."""
    deadline = time.monotonic() + (timeout or clients.timeout)
    last = None
    while True:
        obj = fetch()
        status = str(getattr(obj, status_attr, None) or "").lower()
        if status != last and context is not None and last is not None:
            context.progress.message(f"{what}: {status}")
        last = status
        if status in ready:
            return obj
        if status in failed:
            why = reason(obj) if reason else None
            raise TutelaError(f"{what} went to {status}" + (f": {why}" if why else ""))
        if time.monotonic() > deadline:
            raise TutelaError(
                f"{what} still {status or 'unknown'} after {timeout or clients.timeout:g} s"
            )
        if context is not None:
            context.check_cancelled()  # Ctrl-C: stop waiting (on_abort cleans up)
        time.sleep(clients.interval)


def wait_gone(what: str, fetch: Callable[[], Any], clients: Clients, failed=("error",)) -> None:
    """Poll until `fetch()` returns None (deleted), raising on an error status."""
    deadline = time.monotonic() + clients.timeout
    while True:
        obj = fetch()
        if obj is None:
            return
        status = str(getattr(obj, "status", "") or "").lower()
        if status in {f"{s}_deleting" for s in failed} | {"error_deleting"}:
            raise TutelaError(f"deleting {what} failed ({status})")
        if time.monotonic() > deadline:
            raise TutelaError(f"{what} still {status} after {clients.timeout:g} s")
        time.sleep(clients.interval)


def read_info(checkpoint) -> dict[str, Any]:
    try:
        return checkpoint.bank_section.get_json("metadata")
    except ObjectNotFound:
        return {}


def update_info(checkpoint, **values: Any) -> dict[str, Any]:
    """Merge values into the resource's saved info (its `metadata` JSON)."""
    info = read_info(checkpoint)
    info.update(values)
    checkpoint.bank_section.put_json("metadata", info)
    return info


def restore_suffix(checkpoint, parameters: dict[str, Any]) -> str:
    suffix = parameters.get("name_suffix")
    return f"-restored-{checkpoint.id[:8]}" if suffix is None else suffix


def restored_name(checkpoint, parameters: dict[str, Any], original: str | None) -> str:
    """`name` if given, else the original name plus the suffix (`-restored-<checkpoint>`)."""
    if parameters.get("name"):
        return str(parameters["name"])
    return f"{original or ''}{restore_suffix(checkpoint, parameters)}" or "restored"


def resolve_project(clients: Clients, ref: str) -> Resource:
    """A project by id or name (in the configured user's domain)."""
    base = clients.base()
    if ref == base.current_project_id:
        return Resource(PROJECT, ref)
    try:
        project = base.identity.find_project(ref, ignore_missing=True)
    except Exception:  # a non-admin may not read other projects
        project = None
    if project is not None:
        return Resource(PROJECT, project.id, name=project.name)
    # The projects the user has a role in (any token may list them).
    try:
        mine = base.identity.get("/auth/projects").json().get("projects", [])
    except Exception as exc:
        raise ResourceError(f"{PROJECT} {ref!r}: {describe_error(exc)}") from None
    for p in mine:
        if ref in (p.get("id"), p.get("name")):
            return Resource(PROJECT, p["id"], name=p.get("name"))
    raise ResourceError(f"{PROJECT} {ref!r} does not exist, or the user has no role in it")


def target_project(
    clients: Clients, context, parameters: dict[str, Any], original_project: str | None
) -> str:
    """Where a restored resource goes: its own `target_project` parameter, else what its
    project became in this restore (`OS::Keystone::Project` in the graph), else its original
    project, else the configured one."""
    ref = parameters.get("target_project")
    if ref:
        return resolve_project(clients, str(ref)).id
    if original_project:
        new = context.new_resources.get(f"{PROJECT}#{original_project}")
        if new is not None:
            return new.id if isinstance(new, Resource) else str(new)
        return original_project
    return clients.project_id()


def new_id(context, resource_type: str, old_id: str) -> str | None:
    new = context.new_resources.get(f"{resource_type}#{old_id}")
    if new is None:
        return None
    return new.id if isinstance(new, Resource) else str(new)


def project_of(resource: Resource, info: dict[str, Any] | None = None) -> str | None:
    return (info or {}).get("project_id") or resource.extra_info.get("project_id")


class DeleteSection(Operation):
    """Delete for types whose checkpoint data is only their bank section (the provider frees
    the chunks once no checkpoint refers to them)."""

    idempotent_hooks = frozenset({"on_main"})

    def __init__(self, clients: Clients | None = None):
        self.clients = clients

    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        checkpoint.bank_section.delete_all()


class OpenStackPlugin(ProtectionPlugin):
    """One OpenStack resource type, declared by class attributes: its schemas and the
    operation classes, each built with the plugin's clients."""

    resource_type: str
    options_schema: dict[str, Any]
    restore_schema: dict[str, Any]
    saved_info_schema: dict[str, Any]
    protect_operation: type[Operation]
    restore_operation: type[Operation]
    delete_operation: type[Operation] = DeleteSection
    config_keys = CONFIG_KEYS

    def __init__(self, config=None):
        super().__init__(config)
        self.clients = clients_for(config)

    def operation(self, cls: type[Operation], resource: Resource) -> Operation:
        return cls(self.clients)  # type: ignore[call-arg]

    def get_supported_resources_types(self) -> list[str]:
        return [self.resource_type]

    def get_options_schema(self, resource_type: str) -> dict[str, Any]:
        return self.options_schema

    def get_restore_schema(self, resource_type: str) -> dict[str, Any]:
        return self.restore_schema

    def get_saved_info_schema(self, resource_type: str) -> dict[str, Any]:
        return self.saved_info_schema

    def get_protect_operation(self, resource: Resource) -> Operation:
        return self.operation(self.protect_operation, resource)

    def get_restore_operation(self, resource: Resource) -> Operation:
        return self.operation(self.restore_operation, resource)

    def get_delete_operation(self, resource: Resource) -> Operation:
        return self.operation(self.delete_operation, resource)


class OpenStackProtectable(Protectable):
    """One OpenStack resource type and the types whose dependents it lists, declared by class
    attributes; the listing methods are the subclass's."""

    resource_type: str
    parent_types: tuple[str, ...] = ()
    config_keys = CONFIG_KEYS

    def __init__(self, config=None):
        super().__init__(config)
        self.clients = clients_for(config)

    def get_resource_type(self) -> str:
        return self.resource_type

    def get_parent_resource_types(self) -> list[str]:
        return list(self.parent_types)

    def fetch(self, resource_id: str, get: Callable[[Any], Any]) -> tuple[Any, Any]:
        """(connection, what `get(connection)` returns); any failure is a ResourceError
        naming the type and id."""
        conn = self.clients.base()
        try:
            return conn, get(conn)
        except Exception as exc:
            raise ResourceError(
                f"{self.resource_type} {resource_id!r}: {describe_error(exc)}"
            ) from None
