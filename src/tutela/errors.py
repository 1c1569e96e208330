"""The error tree.  Every error a user can see names what is wrong: the file and key,
the resource type and field, the resource and hook.  Messages never carry secrets."""

from __future__ import annotations


class TutelaError(Exception):
    """Base of every error Tutela raises on purpose (the CLI prints these without a traceback)."""


class ConfigError(TutelaError):
    """A provider file is wrong; `path` and `key` ("section" or "section.option") say where."""

    def __init__(self, path: str, message: str, key: str | None = None):
        self.path = str(path)
        self.key = key
        where = self.path
        if key:
            section, _, option = key.partition(".")
            where += f": [{section}]" + (f" {option}" if option else "")
        super().__init__(f"{where}: {message}")


class PluginError(TutelaError):
    """A plugin or bank could not be loaded, or does not honour its contract."""


class MissingPluginError(TutelaError):
    """A resource type in a graph has no plugin in the provider."""

    def __init__(self, resource_type: str, provider: str | None = None):
        self.resource_type = resource_type
        where = f" of provider {provider!r}" if provider else ""
        super().__init__(f"no protection plugin{where} supports resource type {resource_type!r}")


class ParameterError(TutelaError):
    """Parameters do not match a plugin's schema; names the type (or TYPE#ID) and field."""

    def __init__(self, target: str, field: str, message: str):
        self.target = target
        self.field = field
        super().__init__(f"parameters for {target}: field {field!r}: {message}")


class ResourceError(TutelaError):
    """A resource could not be found or described."""


class CycleError(TutelaError):
    """The resource graph has a cycle; `path` lists it, first node repeated at the end."""

    def __init__(self, path: list):
        self.path = path
        shown = " -> ".join(str(r) for r in path)
        super().__init__(f"resource graph has a cycle: {shown}")


class HookError(TutelaError):
    """A hook raised; records the resource, the hook and the original error."""

    def __init__(self, resource, hook: str, error: BaseException):
        self.resource = resource
        self.hook = hook
        self.error = error
        super().__init__(f"{resource}: {hook} failed: {type(error).__name__}: {error}")


class Cancelled(TutelaError):
    """The operation was cancelled (Ctrl-C, SIGTERM): raised inside hooks by
    `context.check_cancelled()` and `context.report_bytes()`, so that a long hook stops at
    its next check instead of running to its end."""

    def __init__(self, message: str = "cancelled by the user"):
        super().__init__(message)


class OperationFailed(TutelaError):
    """An operation ended in error; carries the record id (checkpoint or restore), and
    whether it ended because it was cancelled: the signal that cancelled it (SIGINT,
    SIGTERM), else 0."""

    def __init__(
        self,
        message: str,
        record_id: str | None = None,
        errors: list | None = None,
        cancelled: int = 0,
    ):
        self.record_id = record_id
        self.errors = errors or []
        self.cancelled = cancelled
        super().__init__(message)


class BankError(TutelaError):
    """The bank refused or failed an operation."""


class InvalidKeyError(BankError):
    """A bank key is malformed or would escape its section or root."""


class ObjectNotFound(BankError):
    """The bank has no object under this key."""


class ReadOnlyError(BankError):
    """A write was attempted through a read-only bank section."""


class LeaseError(BankError):
    """A lease is held by someone else, or ours was lost."""


class CheckpointNotFound(TutelaError):
    """No provider's bank holds this checkpoint."""
