"""Shared fixtures.  Service fixtures live in their own modules, listed in pytest_plugins."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import recording
from tutela import Provider, ProviderConfig

# Service fixtures (each module starts a real service once per session when a test needs it).
pytest_plugins: list[str] = [
    name
    for name in ("swift_service", "openstack_service")
    if (Path(__file__).parent / f"{name}.py").exists()
]


@pytest.fixture
def scenario():
    recording.SCENARIO.reset()
    yield recording.SCENARIO
    recording.SCENARIO.reset()


@pytest.fixture
def make_provider(tmp_path):
    """Build a provider in memory: recording plugin + directory/group, on a tmp filesystem bank."""
    made: list[Provider] = []

    def make(executor: str = "threads", max_workers: int = 8, extra: dict | None = None, **bank):
        sections = {
            "provider": {
                "name": "test",
                "id": "test-provider",
                "bank": "filesystem",
                "plugin": ["recording:RecordingPlugin", "directory", "group"],
                "protectable": ["recording:RecordingProtectable"],
                "executor": executor,
                "max_workers": max_workers,
            },
            "filesystem_bank": {"root": str(tmp_path / "bank"), "fsync": "false", **bank},
        }
        for name, values in (extra or {}).items():
            sections.setdefault(name, {}).update(values)
        provider = Provider.from_config(
            ProviderConfig.from_dict(sections, path=str(tmp_path / "t.conf"))
        )
        made.append(provider)
        return provider

    yield make
    for p in made:
        p.close()


@pytest.fixture
def delete_after_listing(monkeypatch):
    """`delete_after_listing(rel)`: the directory walk deletes `rel` right after listing it,
    so the file is gone before it is read; `delete_after_listing(None)` undoes it."""
    from tutela.plugins import directory

    real_walk = directory._walk

    def arm(victim: str | None) -> None:
        def walk_then_delete(root, exclude):
            for rel, st in real_walk(root, exclude):
                if rel == victim:
                    os.unlink(os.path.join(root, rel))  # listed, and gone before it is read
                yield rel, st

        monkeypatch.setattr(directory, "_walk", real_walk if victim is None else walk_then_delete)

    return arm


@pytest.fixture
def env_config_dir(tmp_path, monkeypatch):
    folder = tmp_path / "providers.d"
    folder.mkdir()
    monkeypatch.setenv("TUTELA_PROVIDER_CONFIG_DIR", str(folder))
    return folder


def pytest_configure(config):
    os.environ.setdefault("TUTELA_TEST", "1")
