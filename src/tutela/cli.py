"""The `tutela` command: argument parsing and one function per command; the work is done by
the provider.  Every command takes `--json`; exit status is 0 on success, 1 when an operation
or lookup fails, 2 for usage errors."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime

from tutela import __version__
from tutela.engine import make_policy
from tutela.errors import OperationFailed, TutelaError
from tutela.output import human_bytes, make_progress, print_json, print_table
from tutela.parameters import load_parameters
from tutela.provider import Provider, ProviderRegistry
from tutela.resource import Resource


class CLIError(TutelaError):
    pass


def _registry(args) -> ProviderRegistry:
    return ProviderRegistry.load(args.config_dir)


def _provider(reg: ProviderRegistry, ref: str | None) -> Provider:
    if ref:
        return reg.get(ref)
    if len(reg.providers) == 1:
        return reg.providers[0]
    if not reg.providers:
        where = reg.directory
        extra = (
            f"; {len(reg.errors)} file(s) had errors (see `tutela providers`)" if reg.errors else ""
        )
        raise CLIError(f"no provider loaded from {where}{extra}")
    names = ", ".join(f"{p.name} ({p.id})" for p in reg.providers)
    raise CLIError(f"several providers are loaded ({names}); choose one with --provider")


def _policy(args, provider: Provider):
    executor = getattr(args, "executor", None)
    workers = getattr(args, "max_workers", None)
    address = getattr(args, "scheduler_address", None)
    if not (executor or workers or address):
        return provider.policy
    name = executor or ("dask" if address else provider.policy.name)
    options = {}
    if name == "dask":
        options["scheduler_address"] = address or getattr(provider.policy, "address", None)
    elif workers is None:
        workers = provider.policy.max_workers
    return make_policy(name, workers, **options)


def _resources(values: list[str]) -> list[Resource]:
    out = []
    for v in values:
        try:
            out.append(Resource.parse(v))
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    return out


# -- commands ------------------------------------------------------------------------------
def cmd_providers(args) -> int:
    reg = _registry(args)
    if args.json:
        print_json(
            {
                "config_dir": str(reg.directory),
                "providers": [
                    {
                        "id": p.id,
                        "name": p.name,
                        "description": p.description,
                        "file": p.config.path,
                        "bank": p.bank.plugin.describe(),
                        "resource_types": p.resource_types,
                    }
                    for p in reg.providers
                ],
                "errors": [{"file": e.path, "key": e.key, "message": str(e)} for e in reg.errors],
            }
        )
    else:
        print(f"Providers from {reg.directory}:")
        if reg.providers:
            print_table(
                [
                    [p.id, p.name, ", ".join(p.resource_types), p.bank.plugin.describe()]
                    for p in reg.providers
                ],
                ["ID", "NAME", "RESOURCE TYPES", "BANK"],
            )
        else:
            print("  (none)")
        if reg.errors:
            print(f"\n{len(reg.errors)} provider file(s) not loaded:")
            for e in reg.errors:
                print(f"  {e}")
    return 1 if reg.errors and not reg.providers else 0


def cmd_provider_show(args) -> int:
    reg = _registry(args)
    desc = reg.get(args.provider).describe()
    if args.json:
        print_json(desc)
        return 0
    print(f"{desc['name']} ({desc['id']})")
    if desc["description"]:
        print(f"  {desc['description']}")
    print(f"  file:      {desc['file']}")
    print(f"  bank:      {desc['bank']}")
    print(f"  executor:  {desc['executor']}")
    print(f"  plugins:   {', '.join(desc['plugins'])}")
    for t, info in desc["resource_types"].items():
        print(
            f"\n  {t}  (plugin {info['plugin']}"
            + (f", protectable {info['protectable']})" if info["protectable"] else ")")
        )
        for label, key in (
            ("protect options", "options_schema"),
            ("restore parameters", "restore_schema"),
            ("saved info", "saved_info_schema"),
        ):
            props = info[key].get("properties", {})
            fields = ", ".join(f"{k}: {v.get('type', 'any')}" for k, v in props.items()) or "(any)"
            print(f"    {label}: {fields}")
    return 0


def cmd_resources(args) -> int:
    reg = _registry(args)
    provider = _provider(reg, args.provider)
    if args.graph:
        sources = _resources(args.resource) if args.resource else provider.list_resources(args.type)
        graph = provider.build_graph(sources)
        if args.json:
            print_json(graph.to_json())
        else:
            print(graph.to_text())
        return 0
    resources = provider.list_resources(args.type)
    if args.json:
        print_json([r.to_dict() for r in resources])
    else:
        print_table([[r.type, r.id, r.name or ""] for r in resources], ["TYPE", "ID", "NAME"])
    return 0


def _dry_run_output(args, flow) -> None:
    if args.json:
        print_json(flow.to_json())
    else:
        print(flow.to_text())


def cmd_protect(args) -> int:
    reg = _registry(args)
    provider = _provider(reg, args.provider)
    if not args.resource:
        raise CLIError("protect needs at least one --resource TYPE=ID")
    resources = _resources(args.resource)
    parameters = load_parameters(args.parameters)
    if args.dry_run:
        flow = provider.build_flow("protect", provider.build_graph(resources), parameters)
        _dry_run_output(args, flow)
        return 0
    progress = make_progress(quiet=args.quiet)
    try:
        checkpoint = provider.protect(
            resources, parameters, policy=_policy(args, provider), progress=progress
        )
    except OperationFailed as exc:
        return _failed(args, exc)
    if args.json:
        print_json(checkpoint.summary())
    else:
        print(checkpoint.id)
    return 0


def _failed(args, exc: OperationFailed) -> int:
    if args.json:
        print_json({"error": str(exc), "id": exc.record_id, "errors": exc.errors})
    print(f"tutela: {exc}", file=sys.stderr)
    return 1


def cmd_checkpoints_list(args) -> int:
    reg = _registry(args)
    providers = [reg.get(args.provider)] if args.provider else reg.providers
    rows = []
    for p in providers:
        for cp in p.checkpoints.list(
            provider_id=p.id, status=args.status, limit=args.limit, include_deleted=args.all
        ):
            s = cp.summary()
            s["stale"] = p.is_stale(cp)
            rows.append(s)
    rows.sort(key=lambda s: s["id"], reverse=True)
    if args.limit:
        rows = rows[: args.limit]
    if args.json:
        print_json(rows)
        return 0
    print_table(
        [
            [
                s["id"],
                s["provider_id"],
                s["status"] + (" (stale)" if s["stale"] else ""),
                s["created_at"],
                ", ".join(f"{r['type']}={r['id']}" for r in s["roots"]),
            ]
            for s in rows
        ],
        ["ID", "PROVIDER", "STATUS", "CREATED", "RESOURCES"],
    )
    return 0


def cmd_checkpoints_show(args) -> int:
    reg = _registry(args)
    provider, cp = reg.find_checkpoint(args.checkpoint, args.provider)
    records = cp.resource_records()
    data = cp.summary()
    data["stale"] = provider.is_stale(cp)
    data["parameters"] = cp.index.get("parameters", {})
    data["errors"] = cp.index.get("errors", [])
    data["resources"] = []
    graph = cp.graph()
    for i, r in enumerate(graph.nodes):
        rec = records.get(r.key, {})
        data["resources"].append(
            {
                "resource": r.to_dict(),
                "depends_on": [graph.nodes[c].key for c in graph.children[i]],
                "status": rec.get("status", "not run"),
                "saved_info": rec.get("saved_info"),
                "error": rec.get("error"),
                "hooks": rec.get("hooks", {}),
            }
        )
    if args.json:
        print_json(data)
        return 0
    print(f"checkpoint {data['id']}")
    print(f"  provider: {data['provider_id']}")
    print(
        f"  status:   {data['status']}" + ("  (stale: its owner is gone)" if data["stale"] else "")
    )
    print(f"  created:  {data['created_at']}")
    for err in data["errors"]:
        where = (
            f"{err['resource']['type']}#{err['resource']['id']} {err.get('hook')}: "
            if "resource" in err
            else ""
        )
        print(f"  error:    {where}{err['message']}")
    print("  resources:")
    for res in data["resources"]:
        r = res["resource"]
        print(f"    {r['type']} {r['id']}: {res['status']}")
        if res["error"]:
            print(f"      error: {res['error']['hook']}: {res['error']['message']}")
        info = res["saved_info"]
        if isinstance(info, dict):
            shown = ", ".join(
                f"{k}={human_bytes(v) if k == 'bytes' and isinstance(v, int) else v}"
                for k, v in info.items()
                if not isinstance(v, list | dict)
            )
            print(f"      saved: {shown}")
    return 0


def cmd_checkpoints_ls(args) -> int:
    reg = _registry(args)
    provider, cp = reg.find_checkpoint(args.checkpoint, args.provider)
    rows = []
    for resource in cp.graph().nodes:
        lister = getattr(provider.type_map.get(resource.type), "list_files", None)
        if lister is None:
            continue
        section = cp.resource_section(resource, writable=False)
        for e in lister(section, resource, args.path, store=provider.content_store()):
            rows.append({"resource": resource.key, **{k: v for k, v in e.items() if k != "ref"}})
    if args.json:
        print_json(rows)
        return 0
    modes = {"dir": "d", "symlink": "l", "file": "-"}
    for r in rows:
        size = r.get("size", 0)
        when = datetime.fromtimestamp(r["mtime_ns"] / 1e9, UTC).strftime("%Y-%m-%d %H:%M")
        target = f" -> {r['target']}" if r["type"] == "symlink" else ""
        print(
            f"{modes.get(r['type'], '?')}{r['mode']:04o} {size:>12} {when}  {r['resource'].split('#', 1)[1]}  {r['path']}{target}"
        )
    return 0


def cmd_verify(args) -> int:
    reg = _registry(args)
    provider, cp = reg.find_checkpoint(args.checkpoint, args.provider)
    report = provider.verify(cp.id, read_data=args.read_data)
    if args.json:
        print_json(report)
    else:
        what = "all data read and checked" if args.read_data else "objects present"
        print(
            f"checkpoint {cp.id}: {'ok' if report['ok'] else 'DAMAGED'} ({what}, {report.get('packs_checked', 0)} packs)"
        )
        for p in report["problems"]:
            where = f"{p['resource']}: " if "resource" in p else ""
            print(f"  {where}{p['message']}")
            for f in p.get("files", [])[:20]:
                print(f"    {f}")
    return 0 if report["ok"] else 1


def cmd_prune(args) -> int:
    from tutela.retention import Policy

    reg = _registry(args)
    provider = _provider(reg, args.provider)
    policy = Policy(args.keep_last, args.keep_daily, args.keep_weekly, args.keep_monthly)
    if policy.empty():
        raise CLIError(
            "prune needs at least one of --keep-last, --keep-daily, --keep-weekly, --keep-monthly"
        )
    progress = make_progress(quiet=args.quiet or args.dry_run)
    result = provider.prune(policy, dry_run=args.dry_run, progress=progress)
    if args.json:
        print_json(result)
        return 1 if result["failed"] else 0
    for group in result["groups"]:
        print(", ".join(group["resources"]))
        for cid, why in sorted(group["keep"].items(), reverse=True):
            print(f"  keep    {cid}  ({', '.join(why)})")
        for cid in group["delete"]:
            print(f"  {'would delete' if args.dry_run else 'delete'}  {cid}")
    for f in result["failed"]:
        print(f"  FAILED {f['id']}: {f['error']}", file=sys.stderr)
    if not args.dry_run:
        print(
            f"{len(result['deleted'])} checkpoint(s) deleted, {human_bytes(result['freed_bytes'])} freed"
        )
    return 1 if result["failed"] else 0


def cmd_restore(args) -> int:
    reg = _registry(args)
    provider, cp = reg.find_checkpoint(args.checkpoint, args.provider)
    parameters = load_parameters(args.parameters)
    if args.path:
        entry = parameters.setdefault("Tutela::Directory", {})
        entry["paths"] = [*entry.get("paths", []), *args.path]
    if args.dry_run:
        _dry_run_output(args, provider.build_flow("restore", cp.graph(), parameters))
        return 0
    progress = make_progress(quiet=args.quiet)
    try:
        record = provider.restore(
            cp.id, parameters, policy=_policy(args, provider), progress=progress
        )
    except OperationFailed as exc:
        return _failed(args, exc)
    if args.json:
        print_json({**record.index, "resources": list(record.resource_records().values())})
    else:
        print(record.id)
    return 0


def cmd_restores_show(args) -> int:
    reg = _registry(args)
    _, record = reg.find_restore(args.restore)
    data = {**record.index, "resources": list(record.resource_records().values())}
    print_json(data) if args.json else print(json.dumps(data, indent=2))
    return 0


def cmd_delete(args) -> int:
    reg = _registry(args)
    provider, cp = reg.find_checkpoint(args.checkpoint, args.provider)
    if args.dry_run:
        _dry_run_output(args, provider.build_flow("delete", cp.graph(), {}))
        return 0
    progress = make_progress(quiet=args.quiet)
    try:
        cp = provider.delete(cp.id, policy=_policy(args, provider), progress=progress)
    except OperationFailed as exc:
        return _failed(args, exc)
    if args.json:
        print_json(cp.summary())
    else:
        print(f"{cp.id} {cp.status}")
    return 0


def cmd_flow(args) -> int:
    reg = _registry(args)
    parameters = load_parameters(args.parameters)
    if args.checkpoint:
        provider, cp = reg.find_checkpoint(args.checkpoint, args.provider)
        operation = args.operation or "restore"
        if operation == "protect":
            raise CLIError("a checkpoint's flow is restore or delete; protect walks the live graph")
        flow = provider.build_flow(
            operation, cp.graph(), parameters if operation == "restore" else {}
        )
    else:
        provider = _provider(reg, args.provider)
        if not args.resource:
            raise CLIError(
                "flow needs --resource TYPE=ID (protect) or --checkpoint ID (restore, delete)"
            )
        if args.operation not in (None, "protect"):
            raise CLIError(f"a {args.operation} flow is built from a checkpoint: give --checkpoint")
        flow = provider.build_flow(
            "protect", provider.build_graph(_resources(args.resource)), parameters
        )
    fmt = "json" if args.json else args.format
    if fmt == "dot":
        sys.stdout.write(flow.to_dot())
    elif fmt == "json":
        print_json(flow.to_json())
    else:
        print(flow.to_text())
    return 0


# -- parser --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    common.add_argument(
        "--config-dir",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="provider config dir (default: $TUTELA_PROVIDER_CONFIG_DIR or /etc/tutela/providers.d)",
    )
    run = argparse.ArgumentParser(add_help=False)
    run.add_argument("--executor", help="executor policy for this run (serial, threads, ...)")
    run.add_argument(
        "--max-workers", type=int, metavar="N", help="parallel hooks (threads executor)"
    )
    run.add_argument(
        "--scheduler-address", metavar="tcp://HOST:PORT", help="Dask scheduler (executor dask)"
    )
    run.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    run.add_argument("--dry-run", action="store_true", help="print the task flow; run nothing")
    run.add_argument(
        "--parameters", metavar="FILE", help="JSON parameters keyed by TYPE or TYPE#ID"
    )

    parser = argparse.ArgumentParser(
        prog="tutela",
        description="Protect, restore and delete graphs of resources.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"tutela {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "providers", parents=[common], help="list providers and provider-file errors"
    )
    p.set_defaults(func=cmd_providers)

    p = sub.add_parser("provider", parents=[common], help="show one provider")
    psub = p.add_subparsers(dest="provider_command", required=True, metavar="show")
    s = psub.add_parser("show", parents=[common], help="bank, plugins, resource types and schemas")
    s.add_argument("provider", metavar="ID|NAME")
    s.set_defaults(func=cmd_provider_show)

    p = sub.add_parser("resources", parents=[common], help="list protectable resources")
    p.add_argument("--provider", metavar="ID|NAME")
    p.add_argument("--type", metavar="TYPE")
    p.add_argument("--graph", action="store_true", help="print the dependency graph")
    p.add_argument(
        "--resource",
        action="append",
        default=[],
        metavar="TYPE=ID",
        help="graph of these resources",
    )
    p.set_defaults(func=cmd_resources)

    p = sub.add_parser(
        "protect", parents=[common, run], help="protect resources into a new checkpoint"
    )
    p.add_argument("--provider", metavar="ID|NAME")
    p.add_argument("--resource", action="append", default=[], metavar="TYPE=ID")
    p.set_defaults(func=cmd_protect)

    p = sub.add_parser("checkpoints", parents=[common], help="list or show checkpoints")
    csub = p.add_subparsers(dest="checkpoints_command", required=True, metavar="list|show")
    s = csub.add_parser("list", parents=[common], help="newest first")
    s.add_argument("--provider", metavar="ID|NAME")
    s.add_argument("--status")
    s.add_argument("--limit", type=int)
    s.add_argument("--all", action="store_true", help="include deleted checkpoints")
    s.set_defaults(func=cmd_checkpoints_list)
    s = csub.add_parser("show", parents=[common])
    s.add_argument("checkpoint", metavar="CHECKPOINT")
    s.add_argument("--provider", metavar="ID|NAME")
    s.set_defaults(func=cmd_checkpoints_show)

    s = csub.add_parser("ls", parents=[common], help="list the files of protected trees")
    s.add_argument("checkpoint", metavar="CHECKPOINT")
    s.add_argument("path", nargs="?", metavar="PATH", help="only under this relative path")
    s.add_argument("--provider", metavar="ID|NAME")
    s.set_defaults(func=cmd_checkpoints_ls)

    p = sub.add_parser("verify", parents=[common], help="check a checkpoint's data")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--read-data", action="store_true", help="read and check every chunk")
    p.add_argument("--provider", metavar="ID|NAME")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("prune", parents=[common], help="delete checkpoints by a retention policy")
    p.add_argument("--provider", metavar="ID|NAME")
    for rule in ("last", "daily", "weekly", "monthly"):
        p.add_argument(f"--keep-{rule}", type=int, default=0, metavar="N")
    p.add_argument("--dry-run", action="store_true", help="show what would be deleted")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("restore", parents=[common, run], help="restore a checkpoint")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument(
        "--path",
        action="append",
        default=[],
        metavar="PATH",
        help="restore only this path of directories (repeatable)",
    )
    p.add_argument("--provider", metavar="ID|NAME")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("restores", parents=[common], help="show a restore record")
    rsub = p.add_subparsers(dest="restores_command", required=True, metavar="show")
    s = rsub.add_parser("show", parents=[common])
    s.add_argument("restore", metavar="RESTORE")
    s.set_defaults(func=cmd_restores_show)

    p = sub.add_parser("delete", parents=[common, run], help="delete a checkpoint and its data")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--provider", metavar="ID|NAME")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("flow", parents=[common], help="export a task flow (dot, json, text)")
    p.add_argument("--provider", metavar="ID|NAME")
    p.add_argument("--resource", action="append", default=[], metavar="TYPE=ID")
    p.add_argument("--checkpoint", metavar="CHECKPOINT")
    p.add_argument("--operation", choices=["protect", "restore", "delete"])
    p.add_argument("--parameters", metavar="FILE")
    p.add_argument("--format", choices=["dot", "json", "text"], default="text")
    p.set_defaults(func=cmd_flow)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.json = getattr(args, "json", False)
    args.config_dir = getattr(args, "config_dir", None)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except TutelaError as exc:
        if args.json:
            print_json({"error": str(exc)})
        print(f"tutela: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tutela: interrupted", file=sys.stderr)
        return 130
