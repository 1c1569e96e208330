"""Provider files: bad files never stop the others, and each error names the file and key."""

from __future__ import annotations

import json
import textwrap

from tutela import ProviderRegistry
from tutela.cli import main

GOOD = """
[provider]
name = good
id = good-1
description = fine
bank = filesystem
plugin = directory
plugin = group

[filesystem_bank]
root = {root}
"""


def write(folder, name, text):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def errors_by_file(reg):
    return {e.path.rsplit("/", 1)[-1]: e for e in reg.errors}


def test_bad_files_yield_one_error_each_and_the_rest_load(env_config_dir, tmp_path):
    d = env_config_dir
    bank = tmp_path / "bank"
    write(d, "good.conf", GOOD.format(root=bank))
    write(d, "ignored.txt", "[provider]\nid = nope\n")
    write(d, "no-provider.conf", "[other]\nx = 1\n")
    write(d, "no-id.conf", "[provider]\nname = x\nbank = filesystem\nplugin = directory\n")
    write(d, "twin.conf", GOOD.format(root=bank).replace("name = good", "name = twin"))
    write(d, "no-bank.conf", "[provider]\nid = nb\nplugin = directory\n")
    write(
        d,
        "two-banks.conf",
        "[provider]\nid = tb\nbank = filesystem\nbank = filesystem\nplugin = directory\n",
    )
    write(
        d,
        "unknown-plugin.conf",
        "[provider]\nid = up\nbank = filesystem\nplugin = no-such-plugin\n",
    )
    write(
        d,
        "unimportable.conf",
        "[provider]\nid = ui\nbank = filesystem\nplugin = no_such_module:Plugin\n",
    )
    write(
        d,
        "same-type.conf",
        "[provider]\nid = st\nbank = filesystem\nplugin = directory\nplugin = tutela.plugins.directory:DirectoryProtectionPlugin\n",
    )
    write(
        d,
        "bank-fails.conf",
        "[provider]\nid = bf\nbank = filesystem\nplugin = directory\n[filesystem_bank]\nroot = /proc/nope/bank\n",
    )
    write(
        d,
        "bad-int.conf",
        "[provider]\nid = bi\nbank = filesystem\nplugin = directory\nmax_workers = many\n",
    )
    write(d, "garbage.conf", "this is not ini\n")
    reg = ProviderRegistry.load()
    assert [p.id for p in reg.providers] == ["good-1"]
    errs = errors_by_file(reg)
    assert "ignored.txt" not in errs
    expected = {
        "no-provider.conf": (None, "no [provider] section"),
        "no-id.conf": ("provider.id", "required"),
        "twin.conf": ("provider.id", "already used"),
        "no-bank.conf": ("provider.bank", "required"),
        "two-banks.conf": ("provider.bank", "more than one bank"),
        "unknown-plugin.conf": ("provider.plugin", "no-such-plugin"),
        "unimportable.conf": ("provider.plugin", "no_such_module"),
        "same-type.conf": ("provider.plugin", "claimed by both"),
        "bank-fails.conf": ("provider.bank", "cannot create root"),
        "bad-int.conf": ("provider.max_workers", "integer"),
        "garbage.conf": (None, "cannot parse"),
    }
    assert set(errs) == set(expected)
    for name, (key, text) in expected.items():
        err = errs[name]
        assert err.key == key, (name, err.key, str(err))
        assert text in str(err), (name, str(err))
        assert name in str(err)


def test_cli_providers_lists_providers_and_errors(env_config_dir, tmp_path, capsys):
    write(env_config_dir, "good.conf", GOOD.format(root=tmp_path / "bank"))
    write(env_config_dir, "bad.conf", "[provider]\nid = bad\nbank = filesystem\nplugin = nope\n")
    # The good one is listed, and the bad one makes the exit status 1.
    assert main(["providers"]) == 1
    out = capsys.readouterr().out
    assert "good-1" in out and "bad.conf" in out and "nope" in out
    assert main(["providers", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [p["id"] for p in data["providers"]] == ["good-1"]
    assert data["errors"][0]["key"] == "provider.plugin"
    (env_config_dir / "bad.conf").unlink()
    assert main(["providers"]) == 0


def test_config_dir_flag_beats_environment(env_config_dir, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    write(other, "x.conf", GOOD.format(root=tmp_path / "bank2").replace("good-1", "from-flag"))
    write(env_config_dir, "good.conf", GOOD.format(root=tmp_path / "bank"))
    assert main(["--config-dir", str(other), "providers", "--json"]) == 0
    assert [p["id"] for p in json.loads(capsys.readouterr().out)["providers"]] == ["from-flag"]


def test_secret_values_never_appear_in_errors(env_config_dir, tmp_path):
    write(
        env_config_dir,
        "s.conf",
        "[provider]\nid = s\nbank = filesystem\nplugin = directory\nmax_workers = x\n[swift_bank]\nkey = hunter2-secret\n",
    )
    reg = ProviderRegistry.load()
    assert reg.errors and "hunter2" not in str(reg.errors[0])


def test_inline_comments_as_in_the_readme(env_config_dir, tmp_path):
    write(
        env_config_dir,
        "c.conf",
        f"[provider]\nid = c1   ; unique\nbank = filesystem      ; where to\nplugin = directory\n"
        f"executor = threads ; how\n[filesystem_bank]\nroot = {tmp_path / 'b'}  ; relative paths: to this file\n",
    )
    reg = ProviderRegistry.load()
    assert not reg.errors, reg.errors
    assert reg.providers[0].id == "c1" and reg.providers[0].policy.name == "threads"


def test_typos_in_tutela_own_sections_are_refused_not_ignored(env_config_dir, tmp_path, capsys):
    """A misspelt key or section must not fall back to a default: `encrypton` would have
    made a plaintext store without a word."""
    d = env_config_dir
    bank = tmp_path / "bank"
    write(d, "key.conf", GOOD.format(root=bank) + "\n[content_store]\nencrypton = aes-256-gcm\n")
    write(
        d,
        "section.conf",
        GOOD.format(root=bank).replace("id = good-1", "id = s-1")
        + "\n[contentstore]\nencryption = aes-256-gcm\n",
    )
    write(
        d,
        "provider-key.conf",
        GOOD.format(root=bank).replace("id = good-1", "id = p-1\nmax_worker = 4"),
    )
    reg = ProviderRegistry.load()
    errors = errors_by_file(reg)
    assert not reg.providers
    assert str(errors["key.conf"]).endswith(
        "key.conf: [content_store] encrypton: unknown key; did you mean 'encryption'?"
    )
    assert "section.conf: [contentstore]: unknown section; did you mean [content_store]?" in str(
        errors["section.conf"]
    )
    assert "[provider] max_worker: unknown key; did you mean 'max_workers'?" in str(
        errors["provider-key.conf"]
    )
    # Nothing was created in the bank by the refused files.
    assert not (bank / "objects" / "content").exists()


def test_content_store_settings_are_checked_when_the_provider_loads(env_config_dir, tmp_path):
    """A wrong [content_store] value shows in `tutela providers`, before any checkpoint."""
    d = env_config_dir
    bank = tmp_path / "bank"
    cases = {
        "lz4.conf": ("compression = lz4", "[content_store] compression: must be 'zstd' or 'none'"),
        "max.conf": ("chunk_max = 2G", "[content_store] chunk_max: chunk_max must be between"),
        "order.conf": (
            "chunk_min = 1M\nchunk_avg = 512K",
            "[content_store] chunk_min: chunk sizes must satisfy",
        ),
        "pack.conf": ("pack_size = 0", "[content_store] pack_size: must be between 1M and 1G"),
    }
    for i, (name, (line, _)) in enumerate(cases.items()):
        text = GOOD.format(root=bank).replace("id = good-1", f"id = c-{i}")
        write(d, name, text + f"\n[content_store]\n{line}\n")
    errors = errors_by_file(ProviderRegistry.load())
    for name, (_, expected) in cases.items():
        assert expected in str(errors[name]), (name, str(errors[name]))
