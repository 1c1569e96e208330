"""Provider configuration files: where they are, how they parse, what a plugin reads.

A provider file is INI.  `[provider]` holds `name`, `id`, `description`, `bank` (one) and
`plugin` (repeated, one line per plugin); every other section belongs to the bank or to a
plugin, which declare the sections they read and their keys (`config_keys`), so that the
provider refuses a misspelt key or section name.  Relative paths are taken relative to the
file's own folder.
"""

from __future__ import annotations

import configparser
import difflib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tutela.errors import ConfigError

DEFAULT_CONFIG_DIR = "/etc/tutela/providers.d"
ENV_CONFIG_DIR = "TUTELA_PROVIDER_CONFIG_DIR"

#: Keys of [provider] that may be repeated; every other key must appear once.
MULTI_KEYS = frozenset({"plugin", "protectable"})
#: The section of the content store's settings (read by tutela.contentstore).
CONTENT_STORE_SECTION = "content_store"
_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}


def config_dir(cli_value: str | None = None) -> Path:
    """The provider config dir: the CLI flag, else $TUTELA_PROVIDER_CONFIG_DIR, else the default."""
    return Path(cli_value or os.environ.get(ENV_CONFIG_DIR) or DEFAULT_CONFIG_DIR)


def provider_files(directory: Path) -> list[Path]:
    """Every `*.conf` file of the directory, sorted; other files are ignored."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix == ".conf" and p.is_file())


class _MultiDict(dict):
    """Option dict for configparser that keeps every value of a repeated key.

    configparser stores a value as a list of lines while reading; a repeated key arrives as a
    second list, which we append instead of replacing.  Values are joined with newlines later.
    """

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, list) and key in self and isinstance(self[key], list):
            self[key].extend([_REPEAT, *value])
        else:
            super().__setitem__(key, value)


_REPEAT = "\x00repeat\x00"


class ProviderConfig:
    """A parsed provider file, as handed to banks and plugins.

    `section(name)` gives a plain dict of a section; typed getters name the file and key when a
    value is wrong.  `ProviderConfig.from_dict` builds one in memory (tests, embedding).
    """

    def __init__(self, parser: configparser.ConfigParser, path: str | Path):
        self._parser = parser
        self.path = str(path)
        self.base_dir = Path(path).parent if Path(path).name else Path.cwd()
        #: How to rebuild this config elsewhere (a distributed worker): ("text", text) or
        #: ("dict", sections).
        self.source: tuple[str, Any] = ("dict", {})

    @classmethod
    def read(cls, path: str | Path) -> ProviderConfig:
        parser = configparser.ConfigParser(
            strict=False, interpolation=None, dict_type=_MultiDict, empty_lines_in_values=False
        )
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(path, f"cannot read: {exc}") from None
        return cls.from_text(text, path)

    @classmethod
    def from_text(cls, text: str, path: str | Path) -> ProviderConfig:
        parser = configparser.ConfigParser(
            strict=False,
            interpolation=None,
            dict_type=_MultiDict,
            empty_lines_in_values=False,
            inline_comment_prefixes=(";",),  # "key = value   ; comment" (a ';' after a space)
        )
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        try:
            parser.read_string(text, source=str(path))
        except configparser.Error as exc:
            raise ConfigError(path, f"cannot parse: {exc.message.splitlines()[0]}") from None
        cfg = cls(parser, path)
        cfg.source = ("text", text)
        return cfg

    def to_wire(self) -> tuple[str, str, Any, str]:
        """Everything needed to rebuild this config in another process."""
        return (self.source[0], self.path, self.source[1], str(self.base_dir))

    @classmethod
    def from_wire(cls, wire: tuple[str, str, Any, str]) -> ProviderConfig:
        kind, path, value, base_dir = wire
        cfg = cls.from_text(value, path) if kind == "text" else cls.from_dict(value, path)
        cfg.base_dir = Path(base_dir)
        return cfg

    @classmethod
    def from_dict(
        cls, sections: dict[str, dict[str, Any]], path: str = "<memory>"
    ) -> ProviderConfig:
        parser = configparser.ConfigParser(interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        for name, values in sections.items():
            parser.add_section(name)
            for key, value in values.items():
                if isinstance(value, list | tuple):
                    value = "\n".join(str(v) for v in value)
                parser.set(name, key, str(value))
        cfg = cls(parser, path)
        cfg.base_dir = Path.cwd()
        cfg.source = ("dict", {k: dict(v) for k, v in sections.items()})
        return cfg

    def sections(self) -> list[str]:
        return self._parser.sections()

    def has_section(self, name: str) -> bool:
        return self._parser.has_section(name)

    def _raw(self, section: str, key: str) -> str | None:
        if not self._parser.has_section(section) or not self._parser.has_option(section, key):
            return None
        return self._parser.get(section, key)

    def get_list(self, section: str, key: str) -> list[str]:
        """Every value of a repeated (or multi-line) key, blank lines dropped."""
        raw = self._raw(section, key)
        if raw is None:
            return []
        return [v.strip() for v in raw.replace(_REPEAT, "\n").splitlines() if v.strip()]

    def is_repeated(self, section: str, key: str) -> bool:
        raw = self._raw(section, key)
        return raw is not None and _REPEAT in raw

    def get(self, section: str, key: str, default: str | None = None) -> str | None:
        raw = self._raw(section, key)
        if raw is None:
            return default
        if _REPEAT in raw:
            raise ConfigError(self.path, "given more than once", f"{section}.{key}")
        return raw.strip()

    def require(self, section: str, key: str) -> str:
        value = self.get(section, key)
        if value is None or value == "":
            raise ConfigError(self.path, "is required", f"{section}.{key}")
        return value

    def get_int(self, section: str, key: str, default: int | None = None) -> int | None:
        value = self.get(section, key)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise ConfigError(
                self.path, f"must be an integer, not {value!r}", f"{section}.{key}"
            ) from None

    def get_float(self, section: str, key: str, default: float | None = None) -> float | None:
        value = self.get(section, key)
        if value is None or value == "":
            return default
        try:
            return float(value)
        except ValueError:
            raise ConfigError(
                self.path, f"must be a number, not {value!r}", f"{section}.{key}"
            ) from None

    def get_bool(self, section: str, key: str, default: bool = False) -> bool:
        value = self.get(section, key)
        if value is None or value == "":
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise ConfigError(self.path, f"must be true or false, not {value!r}", f"{section}.{key}")

    def get_path(self, section: str, key: str, default: str | Path | None = None) -> Path | None:
        """A path value; relative paths are relative to the provider file's folder."""
        value = self.get(section, key)
        if value is None or value == "":
            return Path(default).expanduser() if default is not None else None
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base_dir / path)

    def section(self, name: str) -> dict[str, str]:
        if not self._parser.has_section(name):
            return {}
        return {k: self.get(name, k) or "" for k in self._parser.options(name)}

    def __iter__(self) -> Iterator[str]:
        return iter(self.sections())

    def check_keys(self, section: str, known: Iterable[str]) -> None:
        """Refuse a key of `section` that nothing reads: a typo must not silently fall back
        to a default (a misspelt `encryption` would make a plaintext store)."""
        if not self._parser.has_section(section):
            return
        known = sorted(known)
        for key in self._parser.options(section):
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(known)})"
                raise ConfigError(self.path, f"unknown key{hint}", f"{section}.{key}")

    def check_sections(self, reserved: Iterable[str]) -> None:
        """Refuse a section named like one of `reserved` but not exactly: its keys would be
        ignored without a word (`[contentstore]` for `[content_store]`).  `reserved` is
        Tutela's own sections, and those the provider's bank and plugins declare they read."""
        reserved = list(reserved)
        for name in self.sections():
            if name in reserved:
                continue
            squashed = name.lower().replace("-", "_").replace(" ", "_")
            close = difflib.get_close_matches(squashed, reserved, n=1, cutoff=0.8)
            if close:
                raise ConfigError(self.path, f"unknown section; did you mean [{close[0]}]?", name)

    def error(self, message: str, key: str | None = None) -> ConfigError:
        return ConfigError(self.path, message, key)
