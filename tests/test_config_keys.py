"""The sections the banks and plugins read are checked like Tutela's own: a misspelt key or a
section named nearly like theirs is an error naming the file and the key, never a silent
default.  Each plugin declares its sections and keys (`config_keys`); these tests load real
provider files the way `tutela providers` does."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from tutela import ProviderConfig, ProviderRegistry, Resource
from tutela.bank.filesystem import FilesystemBank
from tutela.bank.s3 import S3Bank
from tutela.bank.swift import SwiftBank
from tutela.cli import main
from tutela.errors import ConfigError
from tutela.plugin import Protectable, ProtectionPlugin
from tutela.plugins import directory, group, mariadb, postgresql, sqlite
from tutela.plugins.openstack import common, image, project, server, volume

REPO = Path(__file__).resolve().parent.parent
SECRET = "hunter2-secret"

#: The keys the Swift and S3 banks share (timeouts, retries, leases), with valid values.
OBJECT_STORE_COMMON = {
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
                **OBJECT_STORE_COMMON,
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
                **OBJECT_STORE_COMMON,
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


# -- the provider refuses what no plugin of it declares -------------------------------------


#: (provider, section, a key, that key misspelt)
TYPOS = [
    ("filesystem", "filesystem_bank", "fsync", "fsnyc"),
    ("swift", "swift_bank", "lease_validity_window", "lease_validity_windw"),
    ("swift", "swift_bank", "key", "kee"),
    ("s3", "s3_bank", "secret_key", "secret_kye"),
    ("directory", "directory", "paths", "path"),
    ("group", "group", "inventory", "inventroy"),
    ("sqlite", "sqlite", "snapshot_dir", "snapshot_dri"),
    ("postgresql", "postgresql", "exclude_databases", "exclude_databses"),
    ("mariadb", "mariadb", "bin_dir", "bindir"),
    ("openstack", "openstack", "password", "pasword"),
]

#: (provider, section, the section's name as misspelt)
NEAR_SECTIONS = [
    ("filesystem", "filesystem_bank", "filesystem-bank"),
    ("filesystem", "filesystem_bank", "Filesystem_Bank"),
    ("swift", "swift_bank", "swift bank"),
    ("s3", "s3_bank", "S3_bank"),
    ("directory", "directory", "Directory"),
    ("group", "group", "groups"),
    ("sqlite", "sqlite", "sqlite3"),
    ("postgresql", "postgresql", "PostgreSQL"),
    ("mariadb", "mariadb", "maria_db"),
    ("openstack", "openstack", "open-stack"),
]


def provider_text(name: str, tmp: Path, sections: dict[str, dict[str, str]] | None = None) -> str:
    bank, plugins, full = FULL[name]
    lines = ["[provider]", f"id = {name}-1", f"bank = {bank}"]
    lines += [f"plugin = {p}" for p in plugins]
    every = {"filesystem_bank": {"root": "{tmp}/bank", "fsync": "false"}}
    every.update(full)
    every.update(sections or {})
    if bank != "filesystem":
        every.pop("filesystem_bank", None)
    for section, values in every.items():
        lines.append(f"\n[{section}]")
        lines += [f"{k} = {v}" for k, v in values.items()]
    return "\n".join(lines).replace("{tmp}", str(tmp)) + "\n"


def load_one(folder: Path, name: str, text: str):
    path = folder / f"{name}.conf"
    path.write_text(text)
    reg = ProviderRegistry.load()
    return path, reg


@pytest.mark.parametrize("name", sorted(FULL))
def test_a_full_file_of_each_plugin_loads(name, env_config_dir, tmp_path, offline_object_stores):
    """Every declared key, with a good value: accepted (and so is an unrelated section)."""
    prepare(tmp_path)
    text = provider_text(name, tmp_path) + "\n[notes]\nowner = ops team\n"
    _, reg = load_one(env_config_dir, name, text)
    assert not reg.errors, reg.errors
    assert [p.id for p in reg.providers] == [f"{name}-1"]
    reg.close()


@pytest.mark.parametrize(("name", "section", "key", "typo"), TYPOS)
def test_a_misspelt_key_of_a_plugin_section_is_refused(
    name, section, key, typo, env_config_dir, tmp_path
):
    prepare(tmp_path)
    values = dict(FULL[name][2][section])
    del values[key]
    values[typo] = SECRET  # a value never shows in the message
    path, reg = load_one(env_config_dir, name, provider_text(name, tmp_path, {section: values}))
    assert not reg.providers
    [err] = reg.errors
    assert err.path == str(path)
    assert err.key == f"{section}.{typo}"
    assert str(err) == f"{path}: [{section}] {typo}: unknown key; did you mean {key!r}?"
    assert SECRET not in str(err)
    # Refused before the bank was built: the filesystem bank did not create its root.
    assert not (tmp_path / "bank").exists()


@pytest.mark.parametrize(("name", "section", "near"), NEAR_SECTIONS)
def test_a_section_named_nearly_like_a_plugin_section_is_refused(
    name, section, near, env_config_dir, tmp_path
):
    prepare(tmp_path)
    text = provider_text(name, tmp_path).replace(f"[{section}]", f"[{near}]")
    path, reg = load_one(env_config_dir, name, text)
    assert not reg.providers
    [err] = reg.errors
    assert err.key == near
    assert str(err) == f"{path}: [{near}]: unknown section; did you mean [{section}]?"


def test_sections_no_loaded_plugin_reads_are_left_alone(env_config_dir, tmp_path):
    """`[notes]` is nobody's; `[postgresql]` is read by no plugin of this provider (a typo in it
    cannot change what this provider does), and `[swift_bank]` by no bank of it."""
    text = provider_text("directory", tmp_path) + textwrap.dedent(
        """
        [notes]
        anything = goes

        [postgresql]
        exclude_databses = scratch

        [swift_bank]
        auth_ulr = http://x
        """
    )
    _, reg = load_one(env_config_dir, "directory", text)
    assert not reg.errors, reg.errors
    assert [p.id for p in reg.providers] == ["directory-1"]


def test_tutela_providers_shows_the_error_and_exits_non_zero(env_config_dir, tmp_path, capsys):
    values = dict(FULL["filesystem"][2]["filesystem_bank"], fsnyc="false")
    del values["fsync"]
    path, _ = load_one(
        env_config_dir,
        "filesystem",
        provider_text("filesystem", tmp_path, {"filesystem_bank": values}),
    )
    assert main(["providers"]) == 1
    out = capsys.readouterr().out
    assert f"{path}: [filesystem_bank] fsnyc: unknown key; did you mean 'fsync'?" in out
    assert main(["providers", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["providers"] == []
    assert data["errors"] == [
        {
            "file": str(path),
            "key": "filesystem_bank.fsnyc",
            "message": f"{path}: [filesystem_bank] fsnyc: unknown key; did you mean 'fsync'?",
        }
    ]
    assert main(["resources"]) == 1
    assert "1 file(s) had errors (see `tutela providers`)" in capsys.readouterr().err


# -- third-party plugins ---------------------------------------------------------------------


class UndeclaredPlugin(ProtectionPlugin):
    """A plugin that declares nothing: the sections it reads are not checked."""

    def get_supported_resources_types(self):
        return ["Acme::Queue"]


class ExtraProtectable(Protectable):
    """Made by `DeclaredPlugin.get_protectables()`: its section is known only then."""

    config_keys = {"acme_extra": frozenset({"depth"})}

    def get_resource_type(self):
        return "Acme::Queue"


class DeclaredPlugin(UndeclaredPlugin):
    config_keys = {"acme": frozenset({"queues", "password"})}

    def get_protectables(self):
        return [ExtraProtectable(self.config)]


class MalformedPlugin(UndeclaredPlugin):
    config_keys = {"acme": "queues"}  # a string, not a set of key names


class GreedyPlugin(UndeclaredPlugin):
    config_keys = {"provider": frozenset({"acme"})}


def third_party(tmp: Path, plugin: str, extra: str) -> str:
    return (
        f"[provider]\nid = acme-1\nbank = filesystem\nplugin = test_config_keys:{plugin}\n"
        f"[filesystem_bank]\nroot = {tmp}/bank\n" + textwrap.dedent(extra)
    )


def test_a_plugin_that_declares_nothing_keeps_working(env_config_dir, tmp_path):
    text = third_party(tmp_path, "UndeclaredPlugin", "[acme]\nqueue = a\n[Acme_Extra]\nx = 1\n")
    _, reg = load_one(env_config_dir, "acme", text)
    assert not reg.errors, reg.errors
    assert reg.providers[0].resource_types == ["Acme::Queue"]


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        ("[acme]\nqueues = a\npasswrd = " + SECRET, "acme.passwrd", "did you mean 'password'?"),
        ("[acme-extra]\ndepth = 3", "acme-extra", "did you mean [acme_extra]?"),
        ("[acme_extra]\ndept = 3", "acme_extra.dept", "did you mean 'depth'?"),
    ],
)
def test_a_third_party_plugin_declaring_its_sections_is_checked(
    extra, key, message, env_config_dir, tmp_path
):
    """Including the section of a protectable that only `get_protectables()` makes."""
    path, reg = load_one(env_config_dir, "acme", third_party(tmp_path, "DeclaredPlugin", extra))
    [err] = reg.errors
    assert err.key == key and str(err).startswith(f"{path}: ") and str(err).endswith(message)
    assert SECRET not in str(err)


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        ("MalformedPlugin", "MalformedPlugin.config_keys must map section names to sets"),
        ("GreedyPlugin", "config_keys declares [provider], which is Tutela's own"),
    ],
)
def test_a_wrong_declaration_is_the_plugin_s_error(plugin, message, env_config_dir, tmp_path):
    _, reg = load_one(env_config_dir, "acme", third_party(tmp_path, plugin, ""))
    [err] = reg.errors
    assert err.key == "provider.plugin" and message in str(err)
    assert f"test_config_keys:{plugin}" in str(err)


# -- the docs name every declared key -------------------------------------------------------


DOCS = {
    "filesystem_bank": "docs/banks.md",
    "swift_bank": "docs/banks.md",
    "s3_bank": "docs/banks.md",
    "directory": "README.md",
    "group": "README.md",
    "sqlite": "docs/databases.md",
    "postgresql": "docs/databases.md",
    "mariadb": "docs/databases.md",
    "openstack": "docs/openstack.md",
}


@pytest.mark.parametrize("name", sorted(FULL))
def test_every_declared_key_is_documented(name):
    for section, keys in DECLARERS[name][0].config_keys.items():
        text = (REPO / DOCS[section]).read_text(encoding="utf-8")
        assert f"[{section}]" in text
        missing = [
            k
            for k in sorted(keys)
            if f"`{k}`" not in text and not re.search(rf"^{k}\s*=", text, re.M)
        ]
        assert not missing, f"{DOCS[section]} does not name {missing} of [{section}]"


@pytest.mark.parametrize(
    ("bank", "typo", "meant"),
    [
        ("filesystem", "fsycn", "fsync"),
        ("swift", "auth_ulr", "auth_url"),
        ("s3", "bukcet", "bucket"),
    ],
)
def test_a_misspelt_keyword_option_of_a_bank_is_refused(bank, typo, meant, tmp_path):
    """Options given in code are checked like the keys of a provider file: an unknown one is
    a TypeError naming it (never its value), with the nearest known option; nothing is built."""
    cls = {"filesystem": FilesystemBank, "swift": SwiftBank, "s3": S3Bank}[bank]
    with pytest.raises(TypeError) as info:
        cls(**{typo: "s3cr3t-value"})
    message = str(info.value)
    assert repr(typo) in message and f"did you mean {meant!r}" in message
    assert "s3cr3t-value" not in message
    # A known option is taken as before.
    assert FilesystemBank(root=tmp_path / "b", fsync=False).root == tmp_path / "b"


@pytest.mark.parametrize(
    ("inventory", "expected"),
    [
        (
            '[groups.app]\nmembers = []\nprepare_being_command = "/bin/freeze"\n',
            "group 'app': unknown key 'prepare_being_command'; "
            "did you mean 'prepare_begin_command'?",
        ),
        ("[group.app]\nmembers = []\n", "unknown key 'group'; did you mean 'groups'?"),
        ('[groups.app]\nmembers = []\ncommand_timeout = "soon"\n', "command_timeout must be"),
        ("[groups.app]\nmembers = []\ncommand_timeout = 0\n", "command_timeout must be"),
        ("[groups.app]\nname = 7\n", "group 'app': name must be a string"),
    ],
)
def test_the_group_inventory_refuses_unknown_keys_and_bad_values(inventory, expected, tmp_path):
    """A misspelt key of the inventory would otherwise be ignored, and the group protected
    without its quiesce window: it is an error naming the provider file, the inventory, the
    group and the key."""
    inv = tmp_path / "inv.toml"
    inv.write_text(inventory)
    config = ProviderConfig.from_dict(
        {"group": {"inventory": str(inv)}}, path=str(tmp_path / "p.conf")
    )
    with pytest.raises(ConfigError) as info:
        group.Inventory(config)
    message = str(info.value)
    assert expected in message and str(inv) in message and "p.conf" in message
    # The keys the module documents are all accepted.
    inv.write_text(
        '[groups.app]\nname = "Shop"\nmembers = ["Tutela::Directory=/srv"]\n'
        'prepare_begin_command = ["/bin/true"]\nprepare_finish_command = "/bin/true"\n'
        "command_timeout = 30\n"
    )
    assert group.Inventory(config).get("app")["name"] == "Shop"
