"""Test-environment code loaded by Debian's OpenStack services started by scripts/openstack-aio."""
