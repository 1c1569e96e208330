"""The protection provider: one bank plus protection plugins (a resource type -> plugin map),
with the protectables that discover resources and their dependencies.

`ProviderRegistry` loads every `*.conf` file of the provider config dir; a bad file yields one
error naming the file and key and never stops the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tutela.bank import Bank
from tutela.checkpoint import (
    AVAILABLE,
    DELETED,
    DELETING,
    ERROR,
    ERROR_DELETING,
    Checkpoint,
    CheckpointStore,
    RestoreRecord,
)
from tutela.config import CONTENT_STORE_SECTION, ProviderConfig, config_dir, provider_files
from tutela.engine import ExecutorPolicy, make_policy
from tutela.errors import (
    CheckpointNotFound,
    ConfigError,
    MissingPluginError,
    ParameterError,
    PluginError,
    ResourceError,
    TutelaError,
)
from tutela.flow import Flow
from tutela.graph import ResourceGraph, build_graph
from tutela.loader import (
    BANK_GROUP,
    BANK_METHODS,
    PLUGIN_METHODS,
    PROTECTABLE_GROUP,
    PROTECTABLE_METHODS,
    PROTECTION_GROUP,
    check_methods,
    declared_config_keys,
    entry_points,
    instantiate,
    load_class,
)
from tutela.operations import OperationContext, OperationRun, Progress
from tutela.parameters import ParameterValidator, check_parameters_shape, merged_parameters
from tutela.plugin import PERMISSIVE_SCHEMA
from tutela.resource import Resource

log = logging.getLogger(__name__)

#: The keys of `[provider]`; any other is refused.
PROVIDER_KEYS = frozenset(
    {
        "name",
        "id",
        "description",
        "bank",
        "plugin",
        "protectable",
        "executor",
        "max_workers",
        "scheduler_address",
        "status_retry_seconds",
    }
)

#: The sections Tutela itself reads; no plugin may declare them in its `config_keys`.
TUTELA_SECTIONS = ("provider", CONTENT_STORE_SECTION)

SCHEMA_GETTERS = {
    "protect": "get_options_schema",
    "restore": "get_restore_schema",
    "delete": None,
}
OPERATION_GETTERS = {
    "protect": "get_protect_operation",
    "restore": "get_restore_operation",
    "delete": "get_delete_operation",
}


class DiscoveryContext:
    """The `context` handed to protectables: the provider and a resolver for other types."""

    def __init__(self, provider: Provider):
        self.provider = provider
        self.provider_id = provider.id
        self.config = provider.config

    def show_resource(self, resource_type: str, resource_id: str) -> Resource:
        return self.provider.show_resource(resource_type, resource_id, context=self)


class Provider:
    """A loaded provider.  Build it with `Provider.from_config`."""

    def __init__(
        self,
        config: ProviderConfig,
        *,
        id: str,
        name: str,
        description: str,
        bank_plugin: Any,
        plugins: list[tuple[str, Any]],
        protectables: list[tuple[str, Any]],
        policy: ExecutorPolicy,
    ):
        self.config = config
        self.id = id
        self.name = name
        self.description = description
        self.bank = Bank(bank_plugin)
        self.checkpoints = CheckpointStore(self.bank)
        self.plugins = plugins
        self.policy = policy
        self.type_map: dict[str, Any] = {}
        for _ref, plugin in plugins:
            for t in plugin.get_supported_resources_types():
                self.type_map[t] = plugin
        self.protectables: dict[str, Any] = {}
        self.protectable_refs: dict[str, str] = {}
        for ref, protectable in protectables:
            t = protectable.get_resource_type()
            self.protectables[t] = protectable
            self.protectable_refs[t] = ref
        self.status_retry_seconds = config.get_float("provider", "status_retry_seconds", 60) or 60.0
        self._store: Any = None
        self._store_lock = threading.Lock()
        self._dependents_of: dict[str, list[Any]] = {}
        for protectable in self.protectables.values():
            for parent_type in protectable.get_parent_resource_types() or []:
                self._dependents_of.setdefault(parent_type, []).append(protectable)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: ProviderConfig) -> Provider:
        path = config.path
        if not config.has_section("provider"):
            raise ConfigError(path, "has no [provider] section")
        config.check_keys("provider", PROVIDER_KEYS)
        config.check_sections(TUTELA_SECTIONS)
        if config.has_section(CONTENT_STORE_SECTION):
            # Checked now, not at the first protect: a wrong value must show in `tutela
            # providers`, not as a failed checkpoint.  (Imported only then: the store's
            # libraries cost light commands 40 ms.)
            from tutela.contentstore.store import StoreSettings

            StoreSettings.from_config(config)
        pid = config.get("provider", "id")
        if not pid:
            raise ConfigError(path, "is required", "provider.id")
        name = config.get("provider", "name") or pid
        description = config.get("provider", "description") or ""
        bank_refs = config.get_list("provider", "bank")
        if not bank_refs:
            raise ConfigError(path, "is required (one bank plugin)", "provider.bank")
        if len(bank_refs) > 1:
            raise ConfigError(
                path, "names more than one bank; a provider has exactly one", "provider.bank"
            )
        plugin_refs = config.get_list("provider", "plugin")
        if not plugin_refs:
            raise ConfigError(
                path, "is required (at least one protection plugin)", "provider.plugin"
            )

        # Every class first: the sections they declare are checked before any of them is built
        # (a bank may create its root or containers, a plugin read an inventory: a misspelt
        # key must be refused before that, not after).
        plugin_classes = [
            (ref, cls._load_class(config, ref, PROTECTION_GROUP, "provider.plugin"))
            for ref in plugin_refs
        ]
        bank_class = cls._load_class(config, bank_refs[0], BANK_GROUP, "provider.bank")
        protectable_classes = [
            (ref, cls._load_class(config, ref, PROTECTABLE_GROUP, "provider.protectable"))
            for ref in cls._protectable_refs(config, plugin_refs)
        ]
        declared = cls._check_plugin_sections(
            config,
            [
                *((ref, "provider.plugin", c) for ref, c in plugin_classes),
                (bank_refs[0], "provider.bank", bank_class),
                *((ref, "provider.protectable", c) for ref, c in protectable_classes),
            ],
        )

        plugins: list[tuple[str, Any]] = []
        owner: dict[str, str] = {}
        for ref, plugin_class in plugin_classes:
            try:
                plugin = instantiate(plugin_class, config)
                check_methods(plugin, PLUGIN_METHODS, "protection plugin")
                types = list(plugin.get_supported_resources_types())
            except ConfigError:
                raise
            except TutelaError as exc:
                raise ConfigError(path, f"{ref}: {exc}", "provider.plugin") from None
            if not types:
                raise ConfigError(path, f"{ref}: supports no resource type", "provider.plugin")
            for t in types:
                if t in owner:
                    raise ConfigError(
                        path,
                        f"resource type {t!r} is claimed by both {owner[t]} and {ref}",
                        "provider.plugin",
                    )
                owner[t] = ref
            plugins.append((ref, plugin))

        protectables = cls._load_protectables(config, protectable_classes, plugins, owner)
        executor = config.get("provider", "executor") or "serial"
        max_workers = config.get_int("provider", "max_workers")
        options = {}
        address = config.get("provider", "scheduler_address")
        if address:
            options["scheduler_address"] = address
        try:
            policy = make_policy(executor, max_workers, **options)
        except TutelaError as exc:
            raise ConfigError(path, str(exc), "provider.executor") from None

        try:
            bank_plugin = instantiate(bank_class, config)
            check_methods(bank_plugin, BANK_METHODS, "bank plugin")
        except ConfigError:
            raise
        except TutelaError as exc:
            raise ConfigError(path, f"{bank_refs[0]}: {exc}", "provider.bank") from None
        # What only the objects say: an instance's own `config_keys`, and the protectables
        # that a plugin's `get_protectables()` made.
        named = {ref for ref, _ in protectable_classes}
        cls._check_plugin_sections(
            config,
            [
                *((ref, "provider.plugin", p) for ref, p in plugins),
                (bank_refs[0], "provider.bank", bank_plugin),
                *(
                    # Those of get_protectables() come with a plugin.
                    (ref, "provider.protectable" if ref in named else "provider.plugin", p)
                    for ref, p in protectables
                ),
            ],
            already=declared,
        )
        return cls(
            config,
            id=pid,
            name=name,
            description=description,
            bank_plugin=bank_plugin,
            plugins=plugins,
            protectables=protectables,
            policy=policy,
        )

    @staticmethod
    def _load_class(config: ProviderConfig, ref: str, group: str, key: str) -> type:
        try:
            return load_class(ref, group)
        except ConfigError:
            raise
        except TutelaError as exc:
            raise ConfigError(config.path, f"{ref}: {exc}", key) from None

    @staticmethod
    def _check_plugin_sections(
        config: ProviderConfig,
        declarers: list[tuple[str, str, Any]],
        already: dict[str, frozenset[str]] | None = None,
    ) -> dict[str, frozenset[str]]:
        """Check the sections that the bank, plugins and protectables declare they read (their
        `config_keys`, classes or objects): a key none of them declares is refused, and so is
        a section named nearly like one of them.  Sections nobody declares are left alone
        (a third-party plugin may declare nothing).  Returns what is declared."""
        declared: dict[str, set[str]] = {s: set(keys) for s, keys in (already or {}).items()}
        for ref, key, declarer in declarers:
            try:
                found = declared_config_keys(declarer)
            except TutelaError as exc:
                raise ConfigError(config.path, f"{ref}: {exc}", key) from None
            for section, keys in found.items():
                if section in TUTELA_SECTIONS:
                    raise ConfigError(
                        config.path,
                        f"{ref}: config_keys declares [{section}], which is Tutela's own",
                        key,
                    )
                declared.setdefault(section, set()).update(keys)
        result = {section: frozenset(keys) for section, keys in declared.items()}
        if result != already:
            config.check_sections([*TUTELA_SECTIONS, *sorted(result)])
            for section in config.sections():
                if section in result:
                    config.check_keys(section, result[section])
        return result

    @staticmethod
    def _protectable_refs(config: ProviderConfig, plugin_refs: list[str]) -> list[str]:
        """The `tutela.protectables` entry points named like the provider's plugin entry
        points, then the `protectable` keys of [provider]."""
        installed = {ep.name for ep in entry_points(group=PROTECTABLE_GROUP)}
        refs = [ref for ref in plugin_refs if ref in installed]
        refs.extend(config.get_list("provider", "protectable"))
        return refs

    @staticmethod
    def _load_protectables(
        config: ProviderConfig,
        protectable_classes: list[tuple[str, type]],
        plugins: list[tuple[str, Any]],
        owner: dict[str, str],
    ) -> list[tuple[str, Any]]:
        """Protectables: those of `_protectable_refs` (their classes loaded), and whatever a
        plugin offers through an optional `get_protectables()`."""
        path = config.path
        found: list[tuple[str, Any]] = []
        for ref, protectable_class in protectable_classes:
            try:
                protectable = instantiate(protectable_class, config)
                check_methods(protectable, PROTECTABLE_METHODS, "protectable")
            except ConfigError:
                raise
            except TutelaError as exc:
                raise ConfigError(path, f"{ref}: {exc}", "provider.protectable") from None
            found.append((ref, protectable))
        for _ref, plugin in plugins:
            extra = getattr(plugin, "get_protectables", None)
            if callable(extra):
                found.extend((f"{type(p).__module__}:{type(p).__qualname__}", p) for p in extra())
        seen: dict[str, str] = {}
        for ref, protectable in found:
            t = protectable.get_resource_type()
            if t not in owner:
                raise ConfigError(
                    path,
                    f"protectable {ref} is for resource type {t!r}, which no plugin of this "
                    "provider supports",
                    "provider.plugin",
                )
            if t in seen and seen[t] != ref:
                raise ConfigError(
                    path, f"two protectables for {t!r}: {seen[t]} and {ref}", "provider"
                )
            seen[t] = ref
        return found

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        self.bank.plugin.close()

    def content_store(self):
        """The bank's content store (section `content/`), opened on first use; one per
        provider object, shared by every hook thread (the store is thread-safe)."""
        with self._store_lock:
            if self._store is None:
                from tutela.contentstore import ContentStore

                self._store = ContentStore.open(self.bank.get_section("content"), self.config)
            return self._store

    def referenced_chunks(self, exclude: str | None = None) -> set[str]:
        """Every chunk id that a checkpoint not deleted (or being deleted) refers to: what a
        sweep must keep.  Plugins list theirs under `content-chunks/` of their sections."""
        live: set[str] = set()
        for cid in self.checkpoints.iter_ids():
            if cid == exclude:
                continue
            try:
                cp = self.checkpoints.get(cid)
            except TutelaError:
                continue
            if cp.status in (DELETED,):
                continue
            section = cp.data_section()
            for key in section.iter_objects():
                if "/content-chunks/" in key:
                    live.update(section.get_object(key).decode().split())
        return live

    def collect_garbage(self, repack_threshold: float = 0.3):
        """Free the space no checkpoint refers to any more (mark and sweep).  Returns the
        sweep report, or None when there is no content store or another writer is active
        (then a later delete or prune frees it)."""
        if not self.bank.list_objects("content/config", limit=1):
            return None
        from tutela.contentstore import StoreLockedError

        store = self.content_store()
        try:
            return store.sweep(self.referenced_chunks(), repack_threshold=repack_threshold)
        except StoreLockedError as exc:
            log.warning("space not freed yet: %s", exc)
            return None

    # -- lookups ---------------------------------------------------------------------------
    @property
    def resource_types(self) -> list[str]:
        return sorted(self.type_map)

    def plugin_for(self, resource_type: str) -> Any:
        plugin = self.type_map.get(resource_type)
        if plugin is None:
            raise MissingPluginError(resource_type, self.name)
        return plugin

    def schema(self, resource_type: str, which: str) -> dict[str, Any]:
        plugin = self.plugin_for(resource_type)
        getter = getattr(plugin, which, None)
        if getter is None:
            return PERMISSIVE_SCHEMA
        return getter(resource_type) or PERMISSIVE_SCHEMA

    def describe(self) -> dict[str, Any]:
        types = {}
        for t in self.resource_types:
            types[t] = {
                "plugin": next(ref for ref, p in self.plugins if p is self.type_map[t]),
                "protectable": self.protectable_refs.get(t),
                "options_schema": self.schema(t, "get_options_schema"),
                "restore_schema": self.schema(t, "get_restore_schema"),
                "saved_info_schema": self.schema(t, "get_saved_info_schema"),
            }
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "file": self.config.path,
            "bank": self.bank.plugin.describe(),
            "executor": self.policy.describe(),
            "plugins": [ref for ref, _ in self.plugins],
            "resource_types": types,
        }

    # -- resources and graphs --------------------------------------------------------------
    def discovery_context(self) -> DiscoveryContext:
        return DiscoveryContext(self)

    def list_resources(
        self, resource_type: str | None = None, context: Any = None
    ) -> list[Resource]:
        context = context or self.discovery_context()
        types = [resource_type] if resource_type else sorted(self.protectables)
        out: list[Resource] = []
        for t in types:
            protectable = self.protectables.get(t)
            if protectable is None:
                if t in self.type_map:
                    continue
                raise MissingPluginError(t, self.name)
            out.extend(protectable.list_resources(context, None) or [])
        return out

    def show_resource(self, resource_type: str, resource_id: str, context: Any = None) -> Resource:
        self.plugin_for(resource_type)
        protectable = self.protectables.get(resource_type)
        if protectable is None:
            return Resource(resource_type, resource_id)
        resource = protectable.show_resource(context or self.discovery_context(), resource_id)
        if resource is None:
            raise ResourceError(f"{resource_type} {resource_id!r} not found")
        return resource

    def build_graph(self, resources: Iterable[Resource], context: Any = None) -> ResourceGraph:
        """The live graph of the selected resources; every type must map to a plugin."""
        context = context or self.discovery_context()
        sources = [self.show_resource(r.type, r.id, context) for r in resources]
        dependents_of = self._dependents_of

        def dependents(parent: Resource) -> list[Resource]:
            out: list[Resource] = []
            for protectable in dependents_of.get(parent.type, ()):
                try:
                    found = protectable.get_dependent_resources(context, parent)
                except TutelaError:
                    raise
                except Exception as exc:
                    # Never protect an incomplete graph silently.
                    raise ResourceError(
                        f"listing the dependents of {parent.key} through "
                        f"{protectable.get_resource_type()} failed: {type(exc).__name__}: {exc}"
                    ) from exc
                out.extend(found or [])
            return out

        graph = build_graph(sources, dependents)
        self.check_types(graph)
        return graph

    def check_types(self, graph: ResourceGraph) -> None:
        for t in sorted(graph.resource_types()):
            self.plugin_for(t)

    def build_flow(
        self, kind: str, graph: ResourceGraph, parameters: dict[str, Any] | None = None
    ) -> Flow:
        """Operations and validated parameters for every resource, before anything runs."""
        parameters = check_parameters_shape(parameters or {})
        self.check_types(graph)
        schema_getter = SCHEMA_GETTERS[kind]
        validator = (
            ParameterValidator(lambda t: self.schema(t, schema_getter), kind)
            if schema_getter
            else None
        )
        keys = {r.key for r in graph.nodes}
        types = graph.resource_types()
        for key in parameters:
            if ("#" in key and key not in keys) or ("#" not in key and key not in types):
                raise ParameterError(
                    key, "(key)", "matches no resource type or resource in this graph"
                )
        get_op = OPERATION_GETTERS[kind]
        operations: list[Any] = []
        params_list: list[dict[str, Any]] = []
        plugins = self.type_map
        for resource in graph.nodes:
            params = merged_parameters(parameters, resource)
            if validator is not None:
                validator.validate(
                    resource, params, resource.key if resource.key in parameters else None
                )
            plugin = plugins[resource.type]
            op = getattr(plugin, get_op, None)
            operations.append(op(resource) if op is not None else None)
            params_list.append(params)
        return Flow(kind, graph, operations, params_list)

    # -- the three operations --------------------------------------------------------------
    def protect(
        self,
        resources: Iterable[Resource],
        parameters: dict[str, Any] | None = None,
        *,
        policy: ExecutorPolicy | None = None,
        progress: Progress | None = None,
    ) -> Checkpoint:
        graph = self.build_graph(resources)
        flow = self.build_flow("protect", graph, parameters)
        policy = policy or self.policy
        policy.preflight(flow)
        checkpoint = self.checkpoints.create(
            self.id, graph, parameters or {}, self.bank.plugin.get_owner_id()
        )
        OperationRun(
            self, flow, checkpoint, checkpoint, policy or self.policy, progress or Progress()
        ).execute()
        return checkpoint

    def restore(
        self,
        checkpoint_id: str,
        parameters: dict[str, Any] | None = None,
        *,
        policy: ExecutorPolicy | None = None,
        progress: Progress | None = None,
    ) -> RestoreRecord:
        checkpoint = self.checkpoints.get(checkpoint_id)
        if checkpoint.status != AVAILABLE:
            raise TutelaError(
                f"checkpoint {checkpoint_id} is {checkpoint.status}, not available; it cannot be restored"
            )
        flow = self.build_flow("restore", checkpoint.graph(), parameters)
        policy = policy or self.policy
        policy.preflight(flow)
        record = self.checkpoints.create_restore(
            checkpoint, self.id, parameters or {}, self.bank.plugin.get_owner_id()
        )
        OperationRun(
            self, flow, record, checkpoint, policy or self.policy, progress or Progress()
        ).execute()
        return record

    def delete(
        self,
        checkpoint_id: str,
        *,
        policy: ExecutorPolicy | None = None,
        progress: Progress | None = None,
        collect: bool = True,
    ) -> Checkpoint:
        checkpoint = self.checkpoints.get(checkpoint_id)
        if checkpoint.status == DELETED:
            raise TutelaError(f"checkpoint {checkpoint_id} is already deleted")
        if checkpoint.status == DELETING and self._owner_alive(checkpoint):
            raise TutelaError(
                f"checkpoint {checkpoint_id} is being deleted by {checkpoint.index.get('owner_id')}"
            )
        if checkpoint.status not in (
            AVAILABLE,
            ERROR,
            ERROR_DELETING,
            DELETING,
        ) and self._owner_alive(checkpoint):
            raise TutelaError(
                f"checkpoint {checkpoint_id} is {checkpoint.status} by a live owner "
                f"({checkpoint.index.get('owner_id')}); wait for it to finish"
            )
        flow = self.build_flow("delete", checkpoint.graph(), {})
        policy = policy or self.policy
        policy.preflight(flow)
        checkpoint.set_status(DELETING, owner_id=self.bank.plugin.get_owner_id())
        OperationRun(
            self, flow, checkpoint, checkpoint, policy or self.policy, progress or Progress()
        ).execute()
        # Plugins removed their data; sweep whatever is left under the checkpoint's data,
        # then free the chunks that no other checkpoint refers to.
        checkpoint.data_section().delete_all()
        if collect:
            self.collect_garbage()
        return checkpoint

    def verify(self, checkpoint_id: str, read_data: bool = False) -> dict[str, Any]:
        """Check that everything the checkpoint needs exists and, with `read_data`, that
        every chunk decrypts, decompresses and hashes to its id.  Problems name the pack and
        the resources (and files) they affect."""
        checkpoint = self.checkpoints.get(checkpoint_id)
        problems: list[dict[str, Any]] = []
        graph = checkpoint.graph()
        records = checkpoint.resource_records()
        chunks_of: dict[str, set[str]] = {}
        for resource in graph.nodes:
            section = checkpoint.resource_section(resource, writable=False)
            if checkpoint.status == AVAILABLE and resource.key not in records:
                problems.append({"resource": resource.key, "message": "no record of this resource"})
            ids: set[str] = set()
            for key in section.iter_objects("content-chunks/"):
                ids.update(section.get_object(key).decode().split())
            if ids:
                chunks_of[resource.key] = ids
        report: dict[str, Any] = {
            "checkpoint": checkpoint.id,
            "status": checkpoint.status,
            "read_data": read_data,
            "warnings": [],
        }
        if checkpoint.status != AVAILABLE:
            # Only an available checkpoint promises anything; say so rather than "ok".
            problems.append(
                {"message": f"status is {checkpoint.status!r}: not a complete checkpoint"}
            )
        if chunks_of:
            store = self.content_store()
            all_ids = set().union(*chunks_of.values())
            result = store.verify(read_data=read_data, referenced=all_ids)
            report["packs_checked"] = result.packs_checked
            report["chunks_checked"] = result.chunks_checked
            bad = result.damaged_chunks
            for error in result.errors:
                problems.append({"message": error})
            report["warnings"].extend(result.warnings)
            for resource in graph.nodes:
                hit = chunks_of.get(resource.key, set()) & bad
                if not hit:
                    continue
                item: dict[str, Any] = {
                    "resource": resource.key,
                    "message": f"{len(hit)} damaged or missing chunk(s)",
                }
                lister = getattr(self.type_map.get(resource.type), "list_files", None)
                if lister is not None:
                    section = checkpoint.resource_section(resource, writable=False)
                    try:
                        item["files"] = [
                            e["path"]
                            for e in lister(section, resource, store=store)
                            if "ref" in e and any(c[0] in hit for c in e["ref"]["chunks"])
                        ]
                    except TutelaError as exc:  # the file list itself is damaged
                        item["message"] += f"; its list of files is unreadable too ({exc})"
                problems.append(item)
        report["problems"] = problems
        report["ok"] = not problems
        return report

    def prune(
        self, policy, dry_run: bool = False, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Apply a retention policy per set of protected resources, delete what it does not
        keep, then free the space once."""
        from tutela.retention import select

        groups: dict[tuple[str, ...], list[Checkpoint]] = {}
        for cp in self.checkpoints.list(provider_id=self.id):
            roots = tuple(sorted(f"{r['type']}#{r['id']}" for r in cp.summary()["roots"]))
            groups.setdefault(roots, []).append(cp)
        plan = []
        for roots, cps in groups.items():
            delete, kept = select([(c.id, c.created_at, c.status) for c in cps], policy)
            plan.append({"resources": list(roots), "keep": kept, "delete": delete})
        deleted, failed = [], []
        if not dry_run:
            for group in plan:
                for cid in group["delete"]:
                    try:
                        self.delete(cid, progress=progress, collect=False)
                        deleted.append(cid)
                    except TutelaError as exc:
                        failed.append({"id": cid, "error": str(exc)})
        sweep = None
        if not dry_run:
            if progress is not None:
                progress.message("freeing the space no remaining checkpoint refers to")
            sweep = self.collect_garbage()
        return {
            "dry_run": dry_run,
            "groups": plan,
            "deleted": deleted,
            "failed": failed,
            "freed_bytes": getattr(sweep, "bytes_freed", 0) if sweep else 0,
        }

    def _owner_alive(self, checkpoint: Checkpoint) -> bool:
        owner = checkpoint.index.get("owner_id")
        if not owner:
            return False
        return self.bank.plugin.get_lease_owner(f"owner-{owner}") == owner

    def is_stale(self, checkpoint: Checkpoint) -> bool:
        """A `protecting`/`deleting` checkpoint whose owner's lease has lapsed."""
        return checkpoint.status in ("protecting", DELETING) and not self._owner_alive(checkpoint)

    def saved_info(self, checkpoint: Checkpoint, resource: Resource) -> Any:
        plugin = self.type_map[resource.type]
        getter = getattr(plugin, "get_saved_info", None)
        if getter is None:
            return None
        info = getter(checkpoint.resource_section(resource, writable=False), resource)
        return info

    def operation_context(
        self, kind: str, record_id: str, progress: Progress | None = None
    ) -> OperationContext:
        return OperationContext(self, kind, record_id, progress or Progress())


class ProviderRegistry:
    """Every provider of a config dir, plus the errors of the files that did not load."""

    def __init__(
        self, providers: list[Provider], errors: list[ConfigError], directory: Path | None = None
    ):
        self.providers = providers
        self.errors = errors
        self.directory = directory

    @classmethod
    def load(cls, directory: str | Path | None = None) -> ProviderRegistry:
        folder = config_dir(str(directory) if directory else None)
        providers: list[Provider] = []
        errors: list[ConfigError] = []
        seen: dict[str, str] = {}
        for path in provider_files(folder):
            try:
                config = ProviderConfig.read(path)
                pid = config.get("provider", "id") if config.has_section("provider") else None
                if pid and pid in seen:
                    raise ConfigError(
                        path, f"id {pid!r} is already used by {seen[pid]}", "provider.id"
                    )
                provider = Provider.from_config(config)
            except ConfigError as exc:
                errors.append(exc)
                log.debug("provider file %s not loaded: %s", path, exc)
                continue
            except TutelaError as exc:
                errors.append(ConfigError(path, str(exc)))
                continue
            seen[provider.id] = str(path)
            providers.append(provider)
        return cls(providers, errors, folder)

    def get(self, ref: str) -> Provider:
        for p in self.providers:
            if p.id == ref:
                return p
        named = [p for p in self.providers if p.name == ref]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise TutelaError(f"provider name {ref!r} is ambiguous; use its id")
        hint = ""
        if any(ref in str(e) for e in self.errors):
            hint = " (its file has errors: see `tutela providers`)"
        raise TutelaError(f"no provider {ref!r}{hint}")

    def find_checkpoint(
        self, checkpoint_id: str, provider: str | None = None
    ) -> tuple[Provider, Checkpoint]:
        candidates = [self.get(provider)] if provider else self.providers
        for p in candidates:
            if p.checkpoints.exists(checkpoint_id):
                checkpoint = p.checkpoints.get(checkpoint_id)
                owner = checkpoint.provider_id
                if owner != p.id and not provider:
                    for q in self.providers:
                        if q.id == owner:
                            return q, checkpoint
                return p, checkpoint
        raise CheckpointNotFound(f"no provider's bank holds checkpoint {checkpoint_id}")

    def find_restore(self, restore_id: str) -> tuple[Provider, RestoreRecord]:
        for p in self.providers:
            try:
                return p, p.checkpoints.get_restore(restore_id)
            except CheckpointNotFound:
                continue
        raise CheckpointNotFound(f"no provider's bank holds restore {restore_id}")

    def close(self) -> None:
        for p in self.providers:
            try:
                p.close()
            except Exception as exc:  # the others still close; a lost flush is not hidden
                log.error("provider %s: closing failed: %s", p.name, exc)


__all__ = ["DiscoveryContext", "PluginError", "Provider", "ProviderRegistry"]
