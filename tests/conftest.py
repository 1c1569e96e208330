"""Shared fixtures.  Service fixtures live in their own modules, listed in pytest_plugins."""

from __future__ import annotations

pytest_plugins: list[str] = []
