"""Protect / restore / delete lifecycles: failures, saved graphs, parameters, leases."""

from __future__ import annotations

import pytest

from recording import TYPE
from tutela import CycleError, MissingPluginError, OperationFailed, ParameterError, Resource
from tutela.plugin import HOOKS

PB, PF, MAIN, COMPLETE = HOOKS


def R(rid: str) -> Resource:
    return Resource(TYPE, rid)


def test_failing_hook_sets_error_and_stops_new_tasks(scenario, make_provider):
    scenario.reset({"p": ["a", "b"], "a": [], "b": []})
    scenario.fail.add(("a", MAIN))
    provider = make_provider(executor="serial")
    with pytest.raises(OperationFailed) as info:
        provider.protect([R("p")])
    assert "Test::Node#a on_main" in str(info.value)
    assert "failed on purpose" in str(info.value)
    cp = provider.checkpoints.get(info.value.record_id)
    assert cp.status == "error"
    assert cp.index["errors"][0]["hook"] == MAIN
    assert cp.index["errors"][0]["resource"]["id"] == "a"
    records = cp.resource_records()
    assert records[f"{TYPE}#a"]["status"] == "error"
    assert records[f"{TYPE}#a"]["error"]["hook"] == MAIN
    ran = {(c["id"], c["hook"]) for c in scenario.calls}
    # The parent's complete never ran, and nothing started after the failure (serial).
    assert ("p", COMPLETE) not in ran
    assert len(ran) < 12
    # Resources whose hooks ran get on_abort, so a quiesced parent is released.
    assert "p" in scenario.aborts


def test_failure_with_threads_lets_inflight_tasks_finish(scenario, make_provider):
    scenario.reset({"p": ["a", "b"]})
    scenario.fail.add(("a", MAIN))
    scenario.sleep[("b", MAIN)] = 0.3
    scenario.sleep[("a", MAIN)] = 0.05
    provider = make_provider(executor="threads", max_workers=4)
    with pytest.raises(OperationFailed):
        provider.protect([R("p")])
    ran = {(c["id"], c["hook"]) for c in scenario.calls}
    assert ("b", MAIN) in ran  # in flight when a failed: finished, not abandoned
    assert ("p", COMPLETE) not in ran


def test_restore_and_delete_walk_the_saved_graph(scenario, make_provider):
    scenario.reset({"p": ["a", "b"]})
    provider = make_provider()
    cp = provider.protect([R("p")])
    # The live graph changes afterwards: b is gone, x appears.
    scenario.graph = {"p": ["a", "x"]}
    scenario.calls.clear()
    provider.restore(cp.id)
    restored = {c["id"] for c in scenario.calls if c["op"] == "restore"}
    assert restored == {"p", "a", "b"}
    scenario.calls.clear()
    provider.delete(cp.id)
    deleted = {c["id"] for c in scenario.calls if c["op"] == "delete"}
    assert deleted == {"p", "a", "b"}
    cp = provider.checkpoints.get(cp.id)
    assert cp.status == "deleted"
    assert cp.data_section().list_objects() == []


def test_restore_record_is_kept(scenario, make_provider):
    scenario.reset({"p": ["a"]})
    provider = make_provider()
    cp = provider.protect([R("p")])
    record = provider.checkpoints.get_restore(provider.restore(cp.id).id)
    assert record.status == "success"
    assert record.index["checkpoint_id"] == cp.id
    statuses = {k: v["status"] for k, v in record.resource_records().items()}
    assert statuses == {f"{TYPE}#p": "restored", f"{TYPE}#a": "restored"}


def test_failed_restore_is_recorded(scenario, make_provider):
    scenario.reset({"p": ["a"]})
    provider = make_provider()
    cp = provider.protect([R("p")])
    scenario.fail.add(("a", MAIN))
    with pytest.raises(OperationFailed) as info:
        provider.restore(cp.id)
    record = provider.checkpoints.get_restore(info.value.record_id)
    assert record.status == "error"
    assert provider.checkpoints.get(cp.id).status == "available"


def test_cycle_is_a_clear_error_before_anything_runs(scenario, make_provider):
    scenario.reset({"a": ["b"], "b": ["c"], "c": ["a"]})
    provider = make_provider()
    with pytest.raises(CycleError) as info:
        provider.protect([R("a")])
    assert "Test::Node#a -> Test::Node#b -> Test::Node#c -> Test::Node#a" in str(info.value)
    assert scenario.calls == []
    assert provider.checkpoints.list() == []


def test_type_without_plugin_is_refused_before_anything_runs(scenario, make_provider, tmp_path):
    inventory = tmp_path / "inv.toml"
    inventory.write_text('[groups.g]\nmembers = ["Test::Node=a", "Nobody::Knows=x"]\n')
    scenario.reset({"a": []})
    provider = make_provider(extra={"group": {"inventory": str(inventory)}})
    with pytest.raises(MissingPluginError) as info:
        provider.protect([Resource("Tutela::Group", "g")])
    assert "Nobody::Knows" in str(info.value)
    assert scenario.calls == []
    assert provider.checkpoints.list() == []


def test_parameters_are_validated_against_the_schema(scenario, make_provider):
    scenario.reset({"p": ["a"]})
    scenario.schema = {
        "type": "object",
        "properties": {
            "level": {"type": "integer", "minimum": 1},
            "mode": {"enum": ["fast", "safe"]},
        },
        "required": ["mode"],
        "additionalProperties": False,
    }
    provider = make_provider()
    with pytest.raises(ParameterError) as info:
        provider.protect([R("p")], {TYPE: {"mode": "fast", "level": 0}})
    assert info.value.target == TYPE and info.value.field == "level"
    with pytest.raises(ParameterError) as info:
        provider.protect([R("p")], {TYPE: {"level": 2}})
    assert info.value.field == "mode"
    # The per-resource entry is validated as merged, and names the resource.
    with pytest.raises(ParameterError) as info:
        provider.protect([R("p")], {TYPE: {"mode": "fast"}, f"{TYPE}#a": {"mode": "slow"}})
    assert info.value.target == f"{TYPE}#a" and info.value.field == "mode"
    with pytest.raises(ParameterError) as info:
        provider.protect([R("p")], {"Unknown::Type": {}})
    assert scenario.calls == []
    assert provider.checkpoints.list() == []


def test_per_resource_parameters_win(scenario, make_provider):
    scenario.reset({"p": ["a"]})
    provider = make_provider()
    provider.protect([R("p")], {TYPE: {"x": 1, "y": 1}, f"{TYPE}#a": {"y": 2}})
    assert scenario.seen_params[("p", MAIN)] == {"x": 1, "y": 1}
    assert scenario.seen_params[("a", MAIN)] == {"x": 1, "y": 2}


def test_saved_info_and_hook_times_are_recorded(scenario, make_provider):
    scenario.reset({"p": ["a"]})
    provider = make_provider()
    cp = provider.protect([R("p")])
    rec = cp.resource_records()[f"{TYPE}#a"]
    assert rec["status"] == "available"
    assert rec["saved_info"] == {"node": "a", "worker": "local"}
    assert set(rec["hooks"]) == set(HOOKS)
    start, end = rec["hooks"][MAIN]
    assert start <= end


def test_lost_lease_never_reports_available(scenario, make_provider):
    scenario.reset({"p": []})
    scenario.sleep[("p", MAIN)] = 1.5
    # Renewal every 30 s but validity of 1 s: the lease is stale when the final write comes.
    provider = make_provider(
        lease_expire_window="60", lease_renew_window="30", lease_validity_window="1"
    )
    with pytest.raises(OperationFailed) as info:
        provider.protect([R("p")])
    assert "lease" in str(info.value)
    assert provider.checkpoints.get(info.value.record_id).status == "error"


def test_checkpoints_list_newest_first_with_filters(scenario, make_provider):
    scenario.reset({"p": []})
    provider = make_provider()
    ids = [provider.protect([R("p")]).id for _ in range(3)]
    scenario.fail.add(("p", MAIN))
    with pytest.raises(OperationFailed):
        provider.protect([R("p")])
    listed = provider.checkpoints.list()
    assert [c.id for c in listed][1:] == ids[::-1]
    assert [c.id for c in provider.checkpoints.list(status="available")] == ids[::-1]
    assert len(provider.checkpoints.list(status="error")) == 1
    assert provider.checkpoints.list(provider_id="other") == []
    assert len(provider.checkpoints.list(limit=2)) == 2


def test_contract_only_plugin_loads_and_runs(tmp_path):
    import recording
    from tutela import Provider, ProviderConfig

    recording.PLAIN_CALLS.clear()
    provider = Provider.from_config(
        ProviderConfig.from_dict(
            {
                "provider": {
                    "id": "plain",
                    "bank": "filesystem",
                    "plugin": "recording:ContractOnlyPlugin",
                },
                "filesystem_bank": {"root": str(tmp_path / "bank")},
            }
        )
    )
    cp = provider.protect([Resource("Test::Plain", "one")])
    assert cp.status == "available"
    assert cp.resource_records()["Test::Plain#one"]["saved_info"] == {"seen": True}
    provider.restore(cp.id)
    provider.delete(cp.id)
    assert recording.PLAIN_CALLS == [("one", "protect"), ("one", "restore"), ("one", "delete")]


def test_hook_with_wrong_signature_is_refused_at_flow_build(tmp_path):
    from tutela import Operation, PluginError
    from tutela.plugin import implemented_hooks

    class Bad(Operation):
        def on_main(self, resource):  # no checkpoint/context/parameters
            pass

    with pytest.raises(PluginError) as info:
        implemented_hooks(Bad())
    assert "on_main" in str(info.value) and "checkpoint" in str(info.value)


# -- warnings: a resource protected incompletely ------------------------------------------
def test_a_warning_is_recorded_and_the_checkpoint_stays_available(scenario, make_provider):
    scenario.reset({"p": ["a", "b"]})
    provider = make_provider()
    params = {f"{TYPE}#a": {"warn": "2 rows\nskipped", "warn_counts": {"rows": 2}}}
    cp = provider.protect([R("p")], params)
    assert cp.status == "available"
    expected = {"resource": {"type": TYPE, "id": "a"}, "message": "2 rows skipped"}
    assert cp.warnings == [{**expected, "counts": {"rows": 2}}]
    assert cp.summary()["warnings"] == cp.warnings
    # Read back from the bank by another provider object: the index and the record keep it.
    again = make_provider().checkpoints.get(cp.id)
    assert again.status == "available" and again.warnings == cp.warnings
    records = again.resource_records()
    assert records[f"{TYPE}#a"]["warnings"] == [
        {"message": "2 rows skipped", "counts": {"rows": 2}}
    ]
    assert "warnings" not in records[f"{TYPE}#b"]
    assert "warnings" not in records[f"{TYPE}#p"]


def test_a_clean_protect_has_no_warnings(scenario, make_provider):
    scenario.reset({"p": ["a"]})
    provider = make_provider()
    cp = provider.protect([R("p")])
    assert cp.warnings == [] and "warnings" not in cp.summary()
    assert "warnings" not in provider.checkpoints.get(cp.id).index


def test_a_failed_protect_keeps_its_warnings(scenario, make_provider):
    scenario.reset({"p": ["a", "b"]})
    scenario.fail.add(("p", COMPLETE))
    provider = make_provider(executor="serial")
    with pytest.raises(OperationFailed) as info:
        provider.protect([R("p")], {f"{TYPE}#a": {"warn": "left out"}})
    cp = provider.checkpoints.get(info.value.record_id)
    assert cp.status == "error"
    assert [w["message"] for w in cp.warnings] == ["left out"]


@pytest.mark.parametrize(
    ("warn", "counts", "why"),
    [
        ("   \n", None, "non-empty string"),
        ("x", {"files": -1}, "integers >= 0"),
        ("x", {"files": 1.5}, "integers >= 0"),
        ("x", {"files": True}, "integers >= 0"),
        ("x", [1], "must be a dict"),
    ],
)
def test_a_malformed_warning_fails_the_hook_that_made_it(
    scenario, make_provider, warn, counts, why
):
    scenario.reset({"a": []})
    provider = make_provider(executor="serial")
    with pytest.raises(OperationFailed) as info:
        provider.protect([R("a")], {TYPE: {"warn": warn, "warn_counts": counts}})
    assert "Test::Node#a on_main" in str(info.value) and why in str(info.value)


def test_make_warning_keeps_one_short_line():
    from tutela.operations import WARNING_MESSAGE_MAX, make_warning

    w = make_warning(R("a"), "  three\tfiles\n left  out ", {"files": 3})
    assert w == {
        "resource": {"type": TYPE, "id": "a"},
        "message": "three files left out",
        "counts": {"files": 3},
    }
    long = make_warning(R("a"), "x" * 1000)
    assert len(long["message"]) == WARNING_MESSAGE_MAX and long["message"].endswith("...")
    assert "counts" not in make_warning(R("a"), "m", {})
    with pytest.raises(TypeError):
        make_warning("Test::Node#a", "m")  # type: ignore[arg-type]


def test_restore_warnings_go_to_the_restore_record_not_the_checkpoint(scenario, make_provider):
    scenario.reset({"a": []})
    provider = make_provider()
    cp = provider.protect([R("a")])
    record = provider.restore(cp.id, {TYPE: {"warn": "1 row not restored"}})
    assert record.status == "success"
    assert [w["message"] for w in provider.checkpoints.get_restore(record.id).warnings] == [
        "1 row not restored"
    ]
    assert provider.checkpoints.get(cp.id).warnings == []
