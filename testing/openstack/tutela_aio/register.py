"""Idempotent Keystone setup for scripts/openstack-aio: service project, users, roles, catalogue.

Run with Debian's python3 (keystoneclient comes with the services) after ``keystone-manage
bootstrap`` and once Keystone answers.  Everything is find-or-create, so it can run on every
start (an existing user keeps its password:
change TUTELA_OPENSTACK_SERVICE_PASSWORD only together with ``openstack-aio clean``).

Input comes from a JSON file (argv[1]) written by the script::

    {"auth_url": ..., "admin_password": ..., "region": ...,
     "services": [{"name", "type", "description", "url", "user", "password", "roles"}]}

A service with ``"user": null`` gets a catalogue entry only; one with ``"url": null`` only a user.
That is how a later change can add Swift (``object-store``) without touching this code.
"""

from __future__ import annotations

import json
import sys

from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3
from keystoneclient.v3 import client as ks_client


def _one(items):
    items = list(items)
    return items[0] if items else None


def main(argv: list[str]) -> int:
    with open(argv[1]) as f:
        spec = json.load(f)
    auth = v3.Password(
        auth_url=spec["auth_url"],
        username="admin",
        password=spec["admin_password"],
        project_name="admin",
        user_domain_id="default",
        project_domain_id="default",
    )
    ks = ks_client.Client(session=ks_session.Session(auth=auth), interface="public")
    region = spec["region"]

    domain = ks.domains.get("default")
    project = _one(ks.projects.list(name="service", domain=domain)) or ks.projects.create(
        "service", domain, description="Service users of the Tutela OpenStack all-in-one"
    )
    roles = {r.name: r for r in ks.roles.list()}
    for wanted in ("admin", "member", "reader", "service"):
        if wanted not in roles:
            roles[wanted] = ks.roles.create(wanted)

    services = {(s.type, s.name): s for s in ks.services.list()}
    endpoints = list(ks.endpoints.list())
    changes = 0
    for svc in spec["services"]:
        if svc.get("url"):
            service = services.get((svc["type"], svc["name"]))
            if service is None:
                service = ks.services.create(
                    svc["name"], svc["type"], description=svc.get("description", "")
                )
                changes += 1
            for interface in ("public", "internal", "admin"):
                mine = [
                    e for e in endpoints if e.service_id == service.id and e.interface == interface
                ]
                if any(e.url == svc["url"] for e in mine):
                    continue
                for stale in mine:
                    ks.endpoints.delete(stale)
                ks.endpoints.create(service, svc["url"], interface=interface, region=region)
                changes += 1
        if svc.get("user"):
            user = _one(ks.users.list(name=svc["user"], domain=domain))
            if user is None:
                user = ks.users.create(
                    svc["user"], domain=domain, password=svc["password"], default_project=project
                )
                changes += 1
            for role_name in svc.get("roles", ["admin"]):
                ks.roles.grant(roles[role_name], user=user, project=project)
    print(f"keystone registration done ({changes} new entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
