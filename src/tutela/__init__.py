"""Tutela: a pluggable protection provider.

The public API for plugin authors and embedders; everything else is internal.
"""

from tutela.bank import Bank, BankPlugin, BankSection
from tutela.config import ProviderConfig
from tutela.errors import (
    BankError,
    ConfigError,
    CycleError,
    HookError,
    MissingPluginError,
    ObjectNotFound,
    OperationFailed,
    ParameterError,
    PluginError,
    ResourceError,
    TutelaError,
)
from tutela.plugin import HOOKS, Operation, Protectable, ProtectionPlugin
from tutela.provider import Provider, ProviderRegistry
from tutela.resource import Resource

__version__ = "0.1.0"

__all__ = [
    "HOOKS",
    "Bank",
    "BankError",
    "BankPlugin",
    "BankSection",
    "ConfigError",
    "CycleError",
    "HookError",
    "MissingPluginError",
    "ObjectNotFound",
    "Operation",
    "OperationFailed",
    "ParameterError",
    "PluginError",
    "Protectable",
    "ProtectionPlugin",
    "Provider",
    "ProviderConfig",
    "ProviderRegistry",
    "Resource",
    "ResourceError",
    "TutelaError",
    "__version__",
]
