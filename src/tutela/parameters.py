"""Operation parameters: keyed by resource type, overridden per resource by `TYPE#ID`,
validated against the plugin's JSON Schema before anything runs."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

from tutela.errors import ParameterError, TutelaError
from tutela.resource import Resource


def load_parameters(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """Read a parameters file: a JSON object whose keys are `TYPE` or `TYPE#ID`."""
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise TutelaError(f"parameters file {path}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise TutelaError(
            f"parameters file {path}: invalid JSON at line {exc.lineno}: {exc.msg}"
        ) from None
    return check_parameters_shape(data, str(path))


def check_parameters_shape(data: Any, where: str = "parameters") -> dict[str, dict[str, Any]]:
    if not isinstance(data, dict):
        raise TutelaError(f"{where}: must be a JSON object keyed by resource type or TYPE#ID")
    for key, value in data.items():
        if not isinstance(value, dict):
            raise TutelaError(f"{where}: the value of {key!r} must be an object")
    return data


def merged_parameters(
    parameters: Mapping[str, Mapping[str, Any]], resource: Resource
) -> dict[str, Any]:
    """Type-level parameters with the resource's own `TYPE#ID` entry winning key by key."""
    by_type = parameters.get(resource.type)
    by_id = parameters.get(resource.key)
    if by_id is None:
        return by_type if by_type is not None else _EMPTY  # type: ignore[return-value]
    merged = dict(by_type or {})
    merged.update(by_id)
    return merged


_EMPTY: dict[str, Any] = {}


class ParameterValidator:
    """Validates merged parameters per resource; schemas compiled once per resource type and
    type-level parameter sets validated once, so large graphs cost little."""

    def __init__(self, schema_for: Callable[[str], dict[str, Any]], operation: str):
        self.schema_for = schema_for
        self.operation = operation
        self._validators: dict[str, Any] = {}
        self._checked: set[tuple[str, int]] = set()

    def _validator(self, resource_type: str):
        v = self._validators.get(resource_type)
        if v is None:
            schema = self.schema_for(resource_type) or {"type": "object"}
            cls = jsonschema.validators.validator_for(schema)
            try:
                cls.check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise TutelaError(
                    f"the {self.operation} schema of {resource_type} is not a valid JSON Schema: "
                    f"{exc.message}"
                ) from None
            v = self._validators[resource_type] = cls(schema)
        return v

    def validate(
        self, resource: Resource, params: dict[str, Any], target: str | None = None
    ) -> None:
        ident = (resource.type, id(params))
        if ident in self._checked:
            return
        error = best_match(self._validator(resource.type).iter_errors(params))
        if error is not None:
            field = ".".join(str(p) for p in error.absolute_path) or (
                _missing_field(error.message) if error.validator == "required" else "(top level)"
            )
            raise ParameterError(target or resource.type, field, error.message)
        if params is _EMPTY or target is None:
            self._checked.add(ident)


def _missing_field(message: str) -> str:
    # jsonschema says "'name' is a required property".
    return message.split("'")[1] if message.count("'") >= 2 else "(top level)"


def unknown_keys(
    parameters: Mapping[str, Any], known_types: set[str], resources: set[str]
) -> list[str]:
    """Keys of a parameters file that match no type of the graph and no resource in it."""
    bad = []
    for key in parameters:
        if "#" in key:
            if key not in resources:
                bad.append(key)
        elif key not in known_types:
            bad.append(key)
    return bad
