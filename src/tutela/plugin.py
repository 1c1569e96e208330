"""The plugin contracts: `Protectable` (what exists and how it depends), `ProtectionPlugin`
(how to protect, restore and delete a resource type) and `Operation` (four hooks).

A third-party plugin may subclass these or implement the same methods on any class; what is
beyond the contract has a default here and is looked up with a fallback by the provider.
Hooks are called by keyword, so their parameter order never matters.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

from tutela.errors import ObjectNotFound, PluginError
from tutela.resource import Resource

#: The four hooks, in the order of a resource's own lifecycle.
HOOKS: tuple[str, ...] = ("on_prepare_begin", "on_prepare_finish", "on_main", "on_complete")
PREPARE_BEGIN, PREPARE_FINISH, MAIN, COMPLETE = range(4)

PERMISSIVE_SCHEMA: dict[str, Any] = {"type": "object"}


class Operation:
    """One resource's part of a protect, restore or delete.

    Override only the hooks you need: a hook left as inherited creates no task at all, while the
    ordering through it is kept.  Each hook is called as
    `hook(checkpoint=..., context=..., resource=..., parameters=..., **kwargs)`.
    """

    #: Hooks that may safely run again after a worker died mid-way (used by distributed
    #: executors); by default none is retried.
    idempotent_hooks: frozenset[str] = frozenset()

    def estimated_duration(self, hook: str) -> float | None:
        """Seconds this hook is expected to take (e.g. from the data size), or None for the
        default guess.  The scheduler starts the longest remaining path first."""
        return None

    def on_prepare_begin(self, checkpoint, context, resource, parameters, **kwargs) -> None:
        """Before any hook of this resource's dependents (e.g. quiesce)."""

    def on_prepare_finish(self, checkpoint, context, resource, parameters, **kwargs) -> None:
        """After every dependent's prepare_finish (e.g. snapshot, then release)."""

    def on_main(self, checkpoint, context, resource, parameters, **kwargs) -> None:
        """The heavy lifting; runs in parallel with other resources' main hooks."""

    def on_complete(self, checkpoint, context, resource, parameters, **kwargs) -> None:
        """After this resource's main and every dependent's complete (e.g. attach, commit)."""

    def on_abort(self, checkpoint, context, resource, parameters, error=None, **kwargs) -> None:
        """Called once after a failed or cancelled operation in which some hook of this
        resource ran; undo what must not stay (e.g. release a quiesced application)."""


_BASE_HOOKS = {name: getattr(Operation, name) for name in (*HOOKS, "on_abort")}
_impl_cache: dict[type, tuple[bool, ...]] = {}
_call_cache: dict[tuple[type, str], Callable[..., Any]] = {}


def implemented_hooks(operation: object) -> tuple[bool, bool, bool, bool]:
    """Which of the four hooks the operation's class really implements."""
    cls = type(operation)
    found = _impl_cache.get(cls)
    if found is None:
        flags = []
        for name in HOOKS:
            attr = inspect.getattr_static(cls, name, None)
            if attr is None:
                flags.append(False)
            else:
                flags.append(attr is not _BASE_HOOKS[name] and callable(getattr(operation, name)))
        found = _impl_cache[cls] = tuple(flags)
        check_hook_signatures(operation, [n for n, f in zip(HOOKS, found, strict=True) if f])
    return found  # type: ignore[return-value]


def has_abort(operation: object) -> bool:
    attr = inspect.getattr_static(type(operation), "on_abort", None)
    return attr is not None and attr is not _BASE_HOOKS["on_abort"]


_REQUIRED_ARGS = ("checkpoint", "context", "resource", "parameters")


def check_hook_signatures(operation: object, names: list[str]) -> None:
    """Refuse, before anything runs, a hook that cannot take the four arguments by keyword."""
    for name in names:
        fn = getattr(operation, name)
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            continue
        params = sig.parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            continue
        accepted = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        missing = [a for a in _REQUIRED_ARGS if a not in accepted]
        if missing:
            raise PluginError(
                f"{type(operation).__module__}.{type(operation).__qualname__}.{name} must accept "
                f"{', '.join(_REQUIRED_ARGS)} as keyword arguments (missing: {', '.join(missing)})"
            )


def call_hook(operation: object, name: str, kwargs: dict[str, Any]) -> Any:
    """Call a hook by keyword, passing extra keyword arguments only if it takes them."""
    key = (type(operation), name)
    caller = _call_cache.get(key)
    if caller is None:
        fn = getattr(operation, name)
        try:
            params = inspect.signature(fn).parameters.values()
            takes_all = any(p.kind is p.VAR_KEYWORD for p in params)
            names = frozenset(p.name for p in params)
        except (TypeError, ValueError):
            takes_all, names = True, frozenset()
        if takes_all:

            def caller(op, kw, _name=name):
                return getattr(op, _name)(**kw)
        else:

            def caller(op, kw, _name=name, _names=names):
                return getattr(op, _name)(**{k: v for k, v in kw.items() if k in _names})

        _call_cache[key] = caller
    return caller(operation, kwargs)


class ProtectionPlugin:
    """How to protect, restore and delete one or more resource types.

    Constructed with the provider's `ProviderConfig` (plugins read their own sections).
    """

    #: The provider-file sections this plugin reads and the keys of each, e.g.
    #: `{"acme": frozenset({"queues", "timeout"})}`.  The provider refuses any other key of a
    #: declared section, and a section named nearly like one (`[Acme]`, `[acme-queue]` for
    #: `[acme_queue]`), naming the file and the key; a section nobody declares is left alone.
    config_keys: ClassVar[dict[str, frozenset[str]]] = {}

    def __init__(self, config=None):
        self.config = config

    def get_supported_resources_types(self) -> list[str]:
        raise NotImplementedError

    def get_options_schema(self, resource_type: str) -> dict[str, Any]:
        return PERMISSIVE_SCHEMA

    def get_restore_schema(self, resource_type: str) -> dict[str, Any]:
        return PERMISSIVE_SCHEMA

    def get_saved_info_schema(self, resource_type: str) -> dict[str, Any]:
        return PERMISSIVE_SCHEMA

    def get_saved_info(self, metadata_store, resource: Resource) -> Any:
        """What `tutela checkpoints show` lists for the resource.  The default reads the JSON
        object a plugin stored under the key `metadata` of its section, if any."""
        try:
            return metadata_store.get_json("metadata")
        except ObjectNotFound:
            return None

    def get_protect_operation(self, resource: Resource) -> Operation:
        return Operation()

    def get_restore_operation(self, resource: Resource) -> Operation:
        return Operation()

    def get_delete_operation(self, resource: Resource) -> Operation:
        return Operation()


class Protectable:
    """What resources of one type exist, and which resources each depends on."""

    #: The sections and keys this protectable reads, as for `ProtectionPlugin.config_keys`.
    config_keys: ClassVar[dict[str, frozenset[str]]] = {}

    def __init__(self, config=None):
        self.config = config

    def get_resource_type(self) -> str:
        raise NotImplementedError

    def get_parent_resource_types(self) -> list[str]:
        return []

    def list_resources(self, context, parameters=None) -> list[Resource]:
        return []

    def show_resource(self, context, resource_id: str) -> Resource:
        return Resource(self.get_resource_type(), resource_id)

    def get_dependent_resources(self, context, parent_resource: Resource) -> list[Resource]:
        return []
