"""Resolve a plugin reference (an entry-point name or `package.module:ClassName`), build the
object with the provider's configuration, and check its contract before anything runs."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from tutela.errors import PluginError, TutelaError

BANK_GROUP = "tutela.banks"
PROTECTION_GROUP = "tutela.protections"
PROTECTABLE_GROUP = "tutela.protectables"

PLUGIN_METHODS = (
    "get_supported_resources_types",
    "get_protect_operation",
    "get_restore_operation",
    "get_delete_operation",
)
BANK_METHODS = (
    "update_object",
    "get_object",
    "list_objects",
    "delete_object",
    "acquire_lease",
    "renew_lease",
    "check_lease_validity",
    "get_owner_id",
)
PROTECTABLE_METHODS = (
    "get_resource_type",
    "get_parent_resource_types",
    "list_resources",
    "show_resource",
    "get_dependent_resources",
)


@functools.cache
def _installed_entry_points() -> importlib.metadata.EntryPoints:
    """Every installed entry point, read once per process: each read scans the metadata of
    every installed distribution (about 12 ms in a venv with the OpenStack clients), and one
    command looks up several groups."""
    return importlib.metadata.entry_points()


def entry_points(group: str) -> importlib.metadata.EntryPoints:
    """The installed entry points of `group`."""
    return _installed_entry_points().select(group=group)


def entry_point_names(group: str) -> list[str]:
    return sorted({ep.name for ep in entry_points(group=group)})


def load_class(reference: str, group: str) -> type:
    """An entry-point name of `group`, or an import path `package.module:ClassName`
    (`package.module.ClassName` is accepted too)."""
    reference = reference.strip()
    if not reference:
        raise PluginError("empty plugin reference")
    found = [ep for ep in entry_points(group=group) if ep.name == reference]
    if found:
        try:
            return found[0].load()
        except Exception as exc:
            raise PluginError(
                f"entry point {reference!r} ({found[0].value}) cannot be imported: "
                f"{type(exc).__name__}: {exc}"
            ) from None
    if ":" in reference:
        module_name, _, attr = reference.partition(":")
    elif "." in reference:
        module_name, _, attr = reference.rpartition(".")
    else:
        known = ", ".join(entry_point_names(group)) or "none installed"
        raise PluginError(f"unknown plugin {reference!r}: not an entry point of {group} ({known})")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise PluginError(
            f"cannot import {module_name!r} for {reference!r}: {type(exc).__name__}: {exc}"
        ) from None
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(
                f"{module_name!r} has no attribute {attr!r} (from {reference!r})"
            ) from None
    if not inspect.isclass(obj):
        raise PluginError(f"{reference!r} is not a class")
    return obj


def instantiate(cls: type, config: Any) -> Any:
    """Build a plugin, passing the provider config when its constructor takes an argument."""
    try:
        sig = inspect.signature(cls)
        params = [
            p
            for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) or p.kind is p.VAR_POSITIONAL
        ]
        takes_config = bool(params)
    except (TypeError, ValueError):
        takes_config = True
    try:
        return cls(config) if takes_config else cls()
    except TutelaError:
        raise
    except Exception as exc:
        raise PluginError(
            f"{cls.__module__}.{cls.__qualname__} failed to start: {type(exc).__name__}: {exc}"
        ) from None


def check_methods(obj: Any, methods: tuple[str, ...], what: str) -> None:
    missing = [m for m in methods if not callable(getattr(obj, m, None))]
    if missing:
        cls = type(obj)
        raise PluginError(
            f"{cls.__module__}.{cls.__qualname__} is not a {what}: missing {', '.join(missing)}"
        )


def declared_config_keys(obj: Any) -> dict[str, frozenset[str]]:
    """The `config_keys` of a plugin, bank or protectable (class or instance): the sections of
    the provider file it reads and the keys of each; {} when it declares none."""
    declared = getattr(obj, "config_keys", None)
    if declared is None:
        return {}
    if isinstance(declared, Mapping):
        out: dict[str, frozenset[str]] = {}
        for section, keys in declared.items():
            if not (isinstance(section, str) and section) or isinstance(keys, str | bytes):
                break
            if not isinstance(keys, Iterable):
                break
            names = frozenset(keys)
            if not all(isinstance(key, str) for key in names):
                break
            out[section] = names
        else:
            return out
    cls = obj if inspect.isclass(obj) else type(obj)
    raise PluginError(
        f"{cls.__module__}.{cls.__qualname__}.config_keys must map section names to sets of "
        "key names"
    )
