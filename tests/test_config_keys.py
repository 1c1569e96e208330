"""Each bank and plugin declares the sections of the provider file it reads and their keys
(`config_keys`), and reads exactly what it declares."""

from __future__ import annotations

from pathlib import Path

import pytest

from tutela import ProviderConfig, Resource
from tutela.bank.filesystem import FilesystemBank
from tutela.bank.s3 import S3Bank
from tutela.bank.swift import SwiftBank
from tutela.errors import ConfigError
from tutela.plugin import Protectable, ProtectionPlugin
from tutela.plugins import directory, group, mariadb, postgresql, sqlite
from tutela.plugins.openstack import common, image, project, server, volume

SECRET = "hunter2-secret"

#: Provider name -> (bank, plugins, {section: every key it declares, with a good value}).
#: `{tmp}` is the test's folder.
FULL: dict[str, tuple[str, list[str], dict[str, dict[str, str]]]] = {
    "filesystem": (
        "filesystem",
        ["directory"],
        {
            "filesystem_bank": {
                "root": "{tmp}/bank",
                "fsync": "false",
                "lease_expire_window": "120",
                "lease_renew_window": "30",
                "lease_validity_window": "100",
            }
        },
    ),
    "swift": (
        "swift",
        ["directory"],
        {
            "swift_bank": {
                "auth_url": "http://127.0.0.1:1/auth/v1.0",
                "user": "admin:admin",
                "key": SECRET,
                "auth_version": "1",
                "project_name": "backup",
                "tenant_name": "backup",
                "project_id": "p1",
                "tenant_id": "p1",
                "user_domain_name": "Default",
                "project_domain_name": "Default",
                "user_domain_id": "default",
                "project_domain_id": "default",
                "region_name": "RegionOne",
                "region": "RegionOne",
                "interface": "public",
                "endpoint_type": "public",
                "cacert": "{tmp}/ca.pem",
                "insecure": "false",
                "container": "tutela",
                "segment_size": "256M",
                "max_segments": "1000",
                "spool_memory": "4M",
                "spool_dir": "{tmp}",
                "timeout": "2",
                "retry_attempts": "1",
                "retry_initial_wait": "0.1",
                "retry_max_wait": "0.1",
                "retry_deadline": "2",
                "lease_expire_window": "120",
                "lease_renew_window": "30",
                "lease_validity_window": "100",
                "lease_settle_time": "1.0",
            }
        },
    ),
    "s3": (
        "s3",
        ["directory"],
        {
            "s3_bank": {
                "bucket": "tutela",
                "prefix": "prod",
                "endpoint_url": "http://127.0.0.1:1",
                "region": "us-east-1",
                "addressing_style": "path",
                "access_key": "admin:admin",
                "secret_key": SECRET,
                "session_token": SECRET,
                "part_size": "64M",
                "spool_memory": "4M",
                "spool_dir": "{tmp}",
                "timeout": "2",
                "retry_attempts": "1",
                "retry_initial_wait": "0.1",
                "retry_max_wait": "0.1",
                "retry_deadline": "2",
                "lease_expire_window": "120",
                "lease_renew_window": "30",
                "lease_validity_window": "100",
                "lease_settle_time": "1.0",
                "conditional_writes": "auto",
            }
        },
    ),
    "directory": ("filesystem", ["directory"], {"directory": {"paths": "{tmp}"}}),
    "group": ("filesystem", ["directory", "group"], {"group": {"inventory": "{tmp}/inv.toml"}}),
    "sqlite": (
        "filesystem",
        ["directory", "sqlite"],
        {"sqlite": {"paths": "{tmp}/app.db", "snapshot_dir": "{tmp}"}},
    ),
    "postgresql": (
        "filesystem",
        ["postgresql"],
        {
            "postgresql": {
                "servers": "host=127.0.0.1 port=5432 user=postgres",
                "password_file": "{tmp}/pgpass",
                "pg_bin_dir": "/usr/lib/postgresql/16/bin",
                "include_databases": "app*",
                "exclude_databases": "scratch",
            }
        },
    ),
    "mariadb": (
        "filesystem",
        ["mariadb"],
        {
            "mariadb": {
                "servers": "host=127.0.0.1 port=3306 user=root",
                "password_file": "{tmp}/mariadb.pw",
                "bin_dir": "/usr/bin",
                "include_databases": "app*",
                "exclude_databases": "scratch",
            }
        },
    ),
    "openstack": (
        "filesystem",
        ["openstack-project", "openstack-server", "openstack-volume", "openstack-image"],
        {
            "openstack": {
                "auth_url": "http://127.0.0.1:5000/v3",
                "username": "admin",
                "user_id": "u1",
                "password": SECRET,
                "password_file": "{tmp}/os.pw",
                "project_name": "admin",
                "project_id": "p1",
                "user_domain_name": "Default",
                "user_domain_id": "default",
                "project_domain_name": "Default",
                "project_domain_id": "default",
                "region_name": "RegionOne",
                "cloud": "tutela-aio",
                "clouds_file": "{tmp}/clouds.yaml",
                "timeout": "900",
                "poll_interval": "1",
                "verify": "true",
                "cacert": "{tmp}/ca.pem",
            }
        },
    ),
}

#: The classes of each provider above that declare its sections.
DECLARERS: dict[str, list[type]] = {
    "filesystem": [FilesystemBank],
    "swift": [SwiftBank],
    "s3": [S3Bank],
    "directory": [directory.DirectoryProtectionPlugin, directory.DirectoryProtectable],
    "group": [group.GroupProtectionPlugin, group.GroupProtectable],
    "sqlite": [sqlite.SQLiteProtectionPlugin, sqlite.SQLiteProtectable],
    "postgresql": [
        postgresql.PostgreSQLProtectionPlugin,
        postgresql.PostgreSQLServerProtectable,
        postgresql.PostgreSQLDatabaseProtectable,
    ],
    "mariadb": [
        mariadb.MariaDBProtectionPlugin,
        mariadb.MariaDBServerProtectable,
        mariadb.MariaDBDatabaseProtectable,
    ],
    "openstack": [
        project.ProjectPlugin,
        project.ProjectProtectable,
        server.ServerPlugin,
        server.ServerProtectable,
        volume.VolumePlugin,
        volume.VolumeProtectable,
        image.ImagePlugin,
        image.ImageProtectable,
    ],
}


def prepare(tmp: Path) -> None:
    """The files that the full sections name and a plugin reads when it starts."""
    (tmp / "inv.toml").write_text("[groups.app]\nmembers = []\n")


@pytest.fixture
def offline_object_stores(monkeypatch):
    """The Swift and S3 banks create their container or bucket when they are built, the only
    thing their constructors send; skip just that, so that a full file of each loads here."""
    monkeypatch.setattr(SwiftBank, "_call", lambda self, *args, **kwargs: None)
    monkeypatch.setattr(S3Bank, "_ensure_bucket", lambda self: None)


# -- what each plugin declares is what it reads --------------------------------------------


def test_every_shipped_plugin_declares_its_sections():
    for name, classes in DECLARERS.items():
        full = FULL[name][2]
        for cls in classes:
            assert cls.config_keys == {s: frozenset(v) for s, v in full.items()}, cls


class RecordingConfig(ProviderConfig):
    """A provider config that notes every (section, key) a plugin reads."""

    def __init__(self, parser, path):
        super().__init__(parser, path)
        self.reads: set[tuple[str, str]] = set()

    def _raw(self, section, key):
        self.reads.add((section, key))
        return super()._raw(section, key)


def _read_by(name: str, tmp: Path, monkeypatch) -> set[tuple[str, str]]:
    """Build the plugin (or bank) of `name` from a nearly empty section and walk every path
    that reads the provider file."""
    prepare(tmp)
    sections: dict[str, dict[str, str]] = {
        "filesystem": {"filesystem_bank": {"root": str(tmp / "bank")}},
        "swift": {"swift_bank": {"auth_url": "http://127.0.0.1:1/auth/v1.0"}},
        "group": {"group": {"inventory": str(tmp / "inv.toml")}},
    }.get(name, {})
    config = RecordingConfig.from_dict(sections, path=str(tmp / "p.conf"))
    if name in ("filesystem", "swift", "s3"):
        {"filesystem": FilesystemBank, "swift": SwiftBank, "s3": S3Bank}[name](config)
    elif name == "openstack":
        import openstack

        for cls in DECLARERS[name]:
            cls(config)
        pw = tmp / "os.pw"
        pw.write_text("pw\n")
        monkeypatch.setattr(openstack, "connect", lambda **kwargs: None)
        auth = RecordingConfig.from_dict(
            {"openstack": {"auth_url": "http://127.0.0.1:1/v3", "password_file": str(pw)}}
        )
        common.Clients(auth)._connect()
        cloud = RecordingConfig.from_dict(
            {"openstack": {"cloud": "nope", "clouds_file": str(tmp / "none.yaml")}}
        )
        with pytest.raises(ConfigError, match="cloud 'nope'"):
            common.Clients(cloud)._connect()
        return config.reads | auth.reads | cloud.reads
    else:
        for cls in DECLARERS[name]:
            obj = cls(config)
            if isinstance(obj, Protectable):
                obj.list_resources(None)
            if isinstance(obj, ProtectionPlugin):
                types = obj.get_supported_resources_types()
                rid = "app" if name == "group" else str(tmp / "x")
                obj.get_protect_operation(Resource(types[0], rid))
    return config.reads


@pytest.mark.parametrize("name", sorted(FULL))
def test_a_plugin_reads_exactly_the_keys_it_declares(
    name, tmp_path, monkeypatch, offline_object_stores
):
    declared = {(s, k) for s, keys in DECLARERS[name][0].config_keys.items() for k in keys}
    assert _read_by(name, tmp_path, monkeypatch) == declared
