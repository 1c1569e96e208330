"""Readiness and status checks for scripts/openstack-aio (runs with Debian's python3).

    python3 -m tutela_aio.health wait-http TIMEOUT URL...     until every URL answers
    python3 -m tutela_aio.health ready TIMEOUT NOVA_CONF [SINCE BINARY...]
                                                              until workers are up (the BINARYs
                                                              with a heartbeat after SINCE), compute
                                                              is discovered and Neutron warmed up
    python3 -m tutela_aio.health workers                      print "binary state" lines

Admin credentials come from the OS_* environment (scripts/openstack-aio env).
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

NOVA_WORKERS = ("nova-conductor", "nova-scheduler", "nova-compute")
CINDER_WORKERS = ("cinder-scheduler", "cinder-volume", "cinder-backup")


def http_answers(url: str) -> bool:
    """True when the URL gives any HTTP answer below 500 (401 and 300 included)."""
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status < 500
    except urllib.error.HTTPError as e:
        return e.code < 500
    except Exception:
        return False


def wait_http(timeout: float, urls: list[str]) -> int:
    deadline = time.monotonic() + timeout
    pending = list(urls)
    while pending:
        pending = [u for u in pending if not http_answers(u)]
        if not pending:
            break
        if time.monotonic() > deadline:
            print(f"not answering after {timeout:.0f} s: {' '.join(pending)}", file=sys.stderr)
            return 1
        time.sleep(0.5)
    return 0


def _session():
    from keystoneauth1 import session
    from keystoneauth1.identity import v3

    auth = v3.Password(
        auth_url=os.environ["OS_AUTH_URL"],
        username=os.environ["OS_USERNAME"],
        password=os.environ["OS_PASSWORD"],
        project_name=os.environ["OS_PROJECT_NAME"],
        user_domain_name=os.environ.get("OS_USER_DOMAIN_NAME", "Default"),
        project_domain_name=os.environ.get("OS_PROJECT_DOMAIN_NAME", "Default"),
    )
    return session.Session(auth=auth)


def _get(sess, service_type: str, path: str, **kw):
    return sess.get(
        path,
        endpoint_filter={"service_type": service_type, "interface": "public"},
        raise_exc=False,
        timeout=20,
        **kw,
    )


def worker_states(
    sess, fresh_since: float | None = None, fresh: tuple[str, ...] = ()
) -> dict[str, str]:
    """binary -> "up" or another state.  Binaries in ``fresh`` count as up only once they have
    reported after ``fresh_since`` (epoch seconds): a process that was just restarted must not
    pass on its predecessor's last heartbeat."""
    states = {}
    for service_type in ("compute", "volumev3"):
        r = _get(sess, service_type, "/os-services")
        if r.status_code != 200:
            continue
        for s in r.json()["services"]:
            up = s["state"] == "up" and s["status"] == "enabled"
            if up and s["binary"] in fresh and fresh_since is not None:
                updated = (s.get("updated_at") or "").replace("Z", "")
                if not updated:  # a record created by this very process, no heartbeat yet
                    states[s["binary"]] = "up"
                    continue
                try:
                    stamp = datetime.datetime.fromisoformat(updated).replace(tzinfo=datetime.UTC)
                    up = stamp.timestamp() >= fresh_since - 1
                except ValueError:
                    up = False
                if not up:
                    states[s["binary"]] = "restarting"
                    continue
            states[s["binary"]] = "up" if up else s["state"]
    return states


def ready(
    timeout: float, nova_conf: str, fresh_since: float | None = None, fresh: tuple[str, ...] = ()
) -> int:
    deadline = time.monotonic() + timeout
    sess = _session()
    wanted = NOVA_WORKERS + CINDER_WORKERS
    while True:
        try:
            states = worker_states(sess, fresh_since, fresh)
        except Exception as e:  # keystone or an API restarting
            states = {"error": str(e)}
        down = [w for w in wanted if states.get(w) != "up"]
        if not down:
            break
        if time.monotonic() > deadline:
            print(f"services not up after {timeout:.0f} s: {', '.join(down)}", file=sys.stderr)
            return 1
        time.sleep(1)
    # Map the compute host into cell1 and wait until it is a hypervisor with a resource provider.
    while True:
        subprocess.run(
            ["nova-manage", "--config-file", nova_conf, "cell_v2", "discover_hosts"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        hyp = _get(sess, "compute", "/os-hypervisors")
        rps = _get(sess, "placement", "/resource_providers")
        if (
            hyp.status_code == 200
            and hyp.json().get("hypervisors")
            and rps.status_code == 200
            and rps.json().get("resource_providers")
        ):
            break
        if time.monotonic() > deadline:
            print(f"compute host not discovered after {timeout:.0f} s", file=sys.stderr)
            return 1
        time.sleep(2)
    # Neutron: the first database query of an API worker must not be GET /v2.0/ports, or it fails
    # with "type object 'Port' has no attribute 'port_forwardings'".  List networks first.
    for path in ("/v2.0/networks", "/v2.0/security-groups", "/v2.0/ports"):
        r = _get(sess, "network", path)
        if r.status_code != 200:
            print(f"neutron warm-up: GET {path} answered {r.status_code}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "wait-http":
        return wait_http(float(argv[2]), argv[3:])
    if cmd == "ready":  # ready TIMEOUT NOVA_CONF [SINCE_EPOCH BINARY...]
        since = float(argv[4]) if len(argv) > 4 else None
        return ready(float(argv[2]), argv[3], since, tuple(argv[5:]))
    if cmd == "workers":
        try:
            states = worker_states(_session())
        except Exception:
            return 1
        for binary, state in sorted(states.items()):
            print(binary, state)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
