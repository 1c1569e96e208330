"""`Tutela::Group`: a named set of resources from a small inventory file, so that real
parent/child graphs exist (an application = its folders, its databases, nested groups).

Config section `[group]`: `inventory` — a TOML file (relative paths are relative to the
provider file):

    [groups.app]
    name = "Shop"
    members = ["Tutela::Directory=/srv/shop/uploads", "Tutela::Group=shop-db"]
    prepare_begin_command = ["/usr/local/bin/shop-freeze"]   # optional: quiesce
    prepare_finish_command = "/usr/local/bin/shop-thaw"      # optional: release
    command_timeout = 60                                      # seconds, default 60

Protect runs `prepare_begin_command` in prepare_begin (before any member's hook) and
`prepare_finish_command` in prepare_finish (after every member's prepare_finish), so every
member's snapshot falls inside the window; if the operation fails in between, the release
command still runs (on_abort).  Commands run without a shell, with TUTELA_* variables set.
A command that outlives `command_timeout` is killed, and so is a quiesce command when the
operation is cancelled (Ctrl-C, SIGTERM); a release command always runs to its end.
"""

from __future__ import annotations

import difflib
import os
import shlex
import subprocess
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tutela.errors import ConfigError, ObjectNotFound, ResourceError, TutelaError
from tutela.plugin import Operation, Protectable, ProtectionPlugin
from tutela.resource import Resource

TYPE = "Tutela::Group"
SECTION = "group"
#: The keys of `[group]`, declared by the plugin and its protectable.
CONFIG_KEYS = {SECTION: frozenset({"inventory"})}
#: The keys an inventory may hold: a misspelt one (`prepare_being_command`) would otherwise
#: be ignored, and the group protected without its quiesce window.
INVENTORY_KEYS = frozenset({"groups"})
GROUP_KEYS = frozenset(
    {"name", "members", "prepare_begin_command", "prepare_finish_command", "command_timeout"}
)


def _unknown_key(keys: Any, known: frozenset[str]) -> str | None:
    """A message for the first key of `keys` not in `known` (with the nearest known one)."""
    for key in keys:
        if key not in known:
            names = sorted(known)
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(names)})"
            return f"unknown key {key!r}{hint}"
    return None


OPTIONS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "quiesce": {"type": "boolean", "default": True, "description": "Run the group's commands."},
        "command_timeout": {"type": "number", "exclusiveMinimum": 0},
    },
    "additionalProperties": False,
}
SAVED_INFO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "members": {"type": "array", "items": {"type": "string"}},
        "quiesced_at": {"type": ["number", "null"]},
        "released_at": {"type": ["number", "null"]},
    },
    "required": ["members"],
}


class Inventory:
    """The parsed inventory: group id -> definition."""

    def __init__(self, config):
        self.path: Path | None = config.get_path(SECTION, "inventory") if config else None
        self.config_path = config.path if config else "<none>"
        self.groups: dict[str, dict[str, Any]] = {}
        if self.path is None:
            return
        try:
            data = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(
                self.config_path,
                f"cannot read inventory {str(self.path)!r}: {exc.strerror}",
                "group.inventory",
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                self.config_path,
                f"inventory {str(self.path)!r} is not valid TOML: {exc}",
                "group.inventory",
            ) from None
        unknown = _unknown_key(data, INVENTORY_KEYS)
        if unknown:
            raise ConfigError(
                self.config_path, f"inventory {str(self.path)!r}: {unknown}", "group.inventory"
            )
        groups = data.get("groups", {})
        if not isinstance(groups, dict):
            raise ConfigError(
                self.config_path,
                f"inventory {str(self.path)!r}: [groups] must be a table",
                "group.inventory",
            )
        for gid, spec in groups.items():
            where = f"inventory {str(self.path)!r}, group {gid!r}"
            if not isinstance(spec, dict):
                raise ConfigError(self.config_path, f"{where}: must be a table", "group.inventory")
            unknown = _unknown_key(spec, GROUP_KEYS)
            if unknown:
                raise ConfigError(self.config_path, f"{where}: {unknown}", "group.inventory")
            if not isinstance(spec.get("name", ""), str):
                raise ConfigError(
                    self.config_path, f"{where}: name must be a string", "group.inventory"
                )
            timeout = spec.get("command_timeout", 60)
            if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
                raise ConfigError(
                    self.config_path,
                    f"{where}: command_timeout must be a positive number of seconds",
                    "group.inventory",
                )
            members = spec.get("members", [])
            if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
                raise ConfigError(
                    self.config_path,
                    f"{where}: members must be a list of TYPE=ID strings",
                    "group.inventory",
                )
            parsed = []
            for m in members:
                try:
                    parsed.append(Resource.parse(m))
                except ValueError as exc:
                    raise ConfigError(
                        self.config_path, f"{where}: {exc}", "group.inventory"
                    ) from None
            for key in ("prepare_begin_command", "prepare_finish_command"):
                value = spec.get(key)
                if value is not None and not isinstance(value, str | list):
                    raise ConfigError(
                        self.config_path,
                        f"{where}: {key} must be a string or a list",
                        "group.inventory",
                    )
            self.groups[gid] = {**spec, "members": parsed}

    def get(self, gid: str) -> dict[str, Any]:
        try:
            return self.groups[gid]
        except KeyError:
            raise ResourceError(f"{TYPE} {gid!r} is not in the inventory {self.path}") from None


class GroupProtectable(Protectable):
    config_keys = CONFIG_KEYS

    def __init__(self, config=None):
        super().__init__(config)
        self.inventory = Inventory(config)

    def get_resource_type(self) -> str:
        return TYPE

    def get_parent_resource_types(self) -> list[str]:
        return [TYPE]

    def list_resources(self, context, parameters=None) -> list[Resource]:
        return [self.show_resource(context, gid) for gid in self.inventory.groups]

    def show_resource(self, context, resource_id: str) -> Resource:
        spec = self.inventory.get(resource_id)
        return Resource(TYPE, resource_id, name=spec.get("name", resource_id))

    def get_dependent_resources(self, context, parent_resource: Resource) -> list[Resource]:
        """A group's members, of any type, each resolved by its own protectable."""
        spec = self.inventory.get(parent_resource.id)
        return [context.show_resource(m.type, m.id) for m in spec["members"]]


def run_command(
    command: str | list[str],
    timeout: float,
    env: dict[str, str],
    what: str,
    check: Callable[[], None] | None = None,
) -> None:
    """Run a quiesce or release command.  It is killed when it outlives `timeout`, or when
    `check` raises (a cancel: Ctrl-C, SIGTERM), which is then raised."""
    args = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    try:
        proc = subprocess.Popen(
            args,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except FileNotFoundError:
        raise TutelaError(f"{what}: command not found: {args[0]!r}") from None
    deadline = time.monotonic() + timeout
    with proc:
        while True:
            try:  # (retrying communicate() after its timeout loses no output)
                _, stderr = proc.communicate(
                    timeout=max(0.0, min(0.1, deadline - time.monotonic()))
                )
                break
            except subprocess.TimeoutExpired:
                stop: BaseException | None = None
                if time.monotonic() >= deadline:
                    stop = TutelaError(f"{what}: command {args[0]!r} timed out after {timeout:g} s")
                elif check is not None:
                    try:
                        check()
                    except BaseException as exc:
                        stop = exc
                if stop is not None:
                    proc.kill()
                    proc.communicate()
                    raise stop from None
    if proc.returncode != 0:
        tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise TutelaError(
            f"{what}: command {args[0]!r} exited with {proc.returncode}"
            + (f": {' | '.join(tail)}" if tail else "")
        )


class ProtectGroup(Operation):
    def __init__(self, spec: dict[str, Any]):
        self.spec = spec

    def _run(self, key: str, checkpoint, resource, parameters, check=None) -> float | None:
        command = self.spec.get(key)
        if not command or not parameters.get("quiesce", True):
            return None
        timeout = float(parameters.get("command_timeout") or self.spec.get("command_timeout", 60))
        env = {
            "TUTELA_CHECKPOINT_ID": checkpoint.id,
            "TUTELA_RESOURCE_ID": resource.id,
            "TUTELA_HOOK": key.removesuffix("_command"),
        }
        run_command(command, timeout, env, f"{resource.key} {key}", check)
        return time.time()

    def _write(self, checkpoint, **times: float | None) -> None:
        section = checkpoint.bank_section
        try:
            info = section.get_json("metadata")
        except ObjectNotFound:
            info = {
                "members": [m.key for m in self.spec["members"]],
                "quiesced_at": None,
                "released_at": None,
            }
        info.update(times)
        section.put_json("metadata", info)

    def on_prepare_begin(self, checkpoint, context, resource, parameters, **kwargs):
        # A cancel stops the quiesce command as its timeout would (no release follows: the
        # window never opened).  The release command is never cut short.
        quiesced = self._run(
            "prepare_begin_command", checkpoint, resource, parameters, context.check_cancelled
        )
        self._write(checkpoint, quiesced_at=quiesced)

    def on_prepare_finish(self, checkpoint, context, resource, parameters, **kwargs):
        released = self._run("prepare_finish_command", checkpoint, resource, parameters)
        self._write(checkpoint, released_at=released)

    def on_abort(self, checkpoint, context, resource, parameters, error=None, **kwargs):
        try:
            info = checkpoint.bank_section.get_json("metadata")
        except ObjectNotFound:
            return
        if info.get("quiesced_at") and not info.get("released_at"):
            released = self._run("prepare_finish_command", checkpoint, resource, parameters)
            self._write(checkpoint, released_at=released)


class GroupProtectionPlugin(ProtectionPlugin):
    config_keys = CONFIG_KEYS

    def __init__(self, config=None):
        super().__init__(config)
        self.inventory = Inventory(config)

    def get_supported_resources_types(self) -> list[str]:
        return [TYPE]

    def get_options_schema(self, resource_type: str) -> dict[str, Any]:
        return OPTIONS_SCHEMA

    def get_saved_info_schema(self, resource_type: str) -> dict[str, Any]:
        return SAVED_INFO_SCHEMA

    def get_protect_operation(self, resource: Resource) -> Operation:
        return ProtectGroup(self.inventory.get(resource.id))
