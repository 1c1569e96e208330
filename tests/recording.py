"""A protection plugin for tests: a scripted resource graph whose hooks record when they ran.

Tests set `SCENARIO` (module state, in-process) and build providers whose plugins are
`recording:RecordingPlugin` / `recording:RecordingProtectable`.  No mocks: the hooks are real
code that the real engine calls.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from tutela import Operation, Protectable, ProtectionPlugin, Resource
from tutela.plugin import HOOKS

TYPE = "Test::Node"


class Scenario:
    def __init__(self) -> None:
        self.reset()

    def reset(self, graph: dict[str, list[str]] | None = None) -> None:
        self.graph: dict[str, list[str]] = graph or {}
        self.hooks: dict[str, set[str]] = {}  # resource id -> hooks implemented (default: all)
        self.sleep: dict[tuple[str, str], float] = {}
        self.fail: set[tuple[str, str]] = set()
        self.calls: list[dict[str, Any]] = []
        self.aborts: list[str] = []
        self.lock = threading.Lock()
        self.schema: dict[str, Any] = {"type": "object"}
        self.restore_schema: dict[str, Any] = {"type": "object"}
        self.seen_params: dict[tuple[str, str], dict[str, Any]] = {}
        self.hosts: dict[str, str] = {}  # resource id -> host its hooks must run on

    def times(self) -> dict[tuple[str, str], tuple[float, float]]:
        return {(c["id"], c["hook"]): (c["start"], c["end"]) for c in self.calls}


SCENARIO = Scenario()
if os.environ.get("TUTELA_TEST_GRAPH"):  # a graph for a subprocess (crash tests)
    import json

    SCENARIO.graph = json.loads(os.environ["TUTELA_TEST_GRAPH"])


def _make_hook(name: str):
    def hook(self, checkpoint, context, resource, parameters, **kwargs):
        start = time.perf_counter()
        SCENARIO.seen_params[(resource.id, name)] = dict(parameters)
        delay = SCENARIO.sleep.get((resource.id, name)) or SCENARIO.sleep.get(("*", name), 0)
        if delay:
            time.sleep(delay)
        if (resource.id, name) in SCENARIO.fail:
            raise RuntimeError(f"{name} of {resource.id} failed on purpose")
        if parameters.get("kill_in") == name:  # crash tests: die here, as a power cut would
            os.kill(os.getpid(), 9)
        if name == "on_main":
            # For tests that run hooks in other processes (the dask executor), where
            # SCENARIO is not shared: behaviour through parameters, facts into the bank.
            marker = parameters.get("marker")
            first_attempt = marker is not None and not os.path.exists(marker)
            if marker is not None:
                with open(marker, "a") as fh:
                    fh.write(os.environ.get("TUTELA_TEST_WORKER", "local") + "\n")
            if parameters.get("report_bytes"):
                context.report_bytes(parameters["report_bytes"])
            if parameters.get("warn"):  # the resource is protected incompletely
                context.warn(resource, parameters["warn"], parameters.get("warn_counts"))
            if parameters.get("sleep") and (first_attempt or not parameters.get("once")):
                time.sleep(parameters["sleep"])
            if parameters.get("wait_cancel"):  # a long hook that checks (test_cancel.py)
                deadline = time.monotonic() + parameters["wait_cancel"]
                while time.monotonic() < deadline:
                    context.check_cancelled()
                    time.sleep(0.01)
        if name == "on_main" and context.operation == "protect":
            checkpoint.bank_section.put_json(
                "metadata",
                {"node": resource.id, "worker": os.environ.get("TUTELA_TEST_WORKER", "local")},
            )
        end = time.perf_counter()
        with SCENARIO.lock:
            SCENARIO.calls.append(
                {
                    "id": resource.id,
                    "hook": name,
                    "start": start,
                    "end": end,
                    "op": context.operation,
                }
            )

    hook.__name__ = name
    return hook


_classes: dict[frozenset[str], type] = {}


def operation_class(hooks: frozenset[str]) -> type:
    cls = _classes.get(hooks)
    if cls is None:
        ns: dict[str, Any] = {name: _make_hook(name) for name in hooks}

        def on_abort(self, checkpoint, context, resource, parameters, error=None, **kwargs):
            # Cleanup is never cut short by a cancel: these must not raise then.
            context.check_cancelled()
            context.report_bytes(0)
            with SCENARIO.lock:
                SCENARIO.aborts.append(resource.id)

        ns["on_abort"] = on_abort
        cls = _classes[hooks] = type("RecordingOperation", (Operation,), ns)
    return cls


def _op(resource: Resource) -> Operation:
    hooks = SCENARIO.hooks.get(resource.id, set(HOOKS))
    op = operation_class(frozenset(hooks))()
    if resource.id.startswith("idem"):
        op.idempotent_hooks = frozenset({"on_main"})
    return op


class RecordingPlugin(ProtectionPlugin):
    def get_supported_resources_types(self):
        return [TYPE]

    def get_options_schema(self, resource_type):
        return SCENARIO.schema

    def get_restore_schema(self, resource_type):
        return SCENARIO.restore_schema

    def get_saved_info_schema(self, resource_type):
        return {
            "type": "object",
            "properties": {"node": {"type": "string"}, "worker": {"type": "string"}},
        }

    def get_protect_operation(self, resource):
        return _op(resource)

    def get_restore_operation(self, resource):
        return _op(resource)

    def get_delete_operation(self, resource):
        return _op(resource)


class RecordingProtectable(Protectable):
    def get_resource_type(self):
        return TYPE

    def get_parent_resource_types(self):
        return [TYPE]

    def list_resources(self, context, parameters=None):
        return [Resource(TYPE, rid) for rid in SCENARIO.graph]

    def show_resource(self, context, resource_id):
        host = SCENARIO.hosts.get(resource_id)
        return Resource(TYPE, resource_id, extra_info={"host": host} if host else None)

    def get_dependent_resources(self, context, parent_resource):
        out = []
        for child in SCENARIO.graph.get(parent_resource.id, []):
            if "=" in child:  # another type: "TYPE=ID", resolved by its own protectable
                type_, _, id_ = child.partition("=")
                out.append(context.show_resource(type_, id_))
            else:
                out.append(self.show_resource(context, child))
        return out


class ContractOnlyPlugin:
    """Implements exactly the contract of the issue, inheriting nothing from Tutela."""

    def __init__(self, config):
        self.config = config

    def get_supported_resources_types(self):
        return ["Test::Plain"]

    def get_options_schema(self, resource_type):
        return {"type": "object"}

    def get_restore_schema(self, resource_type):
        return {"type": "object"}

    def get_saved_info_schema(self, resource_type):
        return {"type": "object"}

    def get_saved_info(self, metadata_store, resource):
        return {"seen": True}

    def get_protect_operation(self, resource):
        return PlainOperation()

    def get_restore_operation(self, resource):
        return PlainOperation()

    def get_delete_operation(self, resource):
        return PlainOperation()


PLAIN_CALLS: list[tuple[str, str]] = []


class PlainOperation:
    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        PLAIN_CALLS.append((resource.id, context.operation))
