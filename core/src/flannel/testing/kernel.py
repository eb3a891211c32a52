"""Read and assert kernel state inside a namespace: routes, neighbours, FDB entries.

Uses ``ip -j`` / ``bridge -j`` (iproute2's JSON output), so what a test checks is exactly
what an operator would see.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from typing import Any

__all__ = [
    "assert_fdb",
    "assert_neighbours",
    "assert_routes",
    "fdb",
    "neighbours",
    "routes",
]


def _json(netns: str, argv: list[str]) -> list[dict[str, Any]]:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, check=True
    )
    out = done.stdout.strip()
    return list(json.loads(out)) if out else []


def routes(netns: str, family: int = 4, proto: int | str | None = None) -> list[dict[str, Any]]:
    """Routes of the main table (``proto`` filters, e.g. 75 for flannel's own)."""
    argv = ["ip", "-j", f"-{family}", "route", "show"]
    if proto is not None:
        argv += ["proto", str(proto)]
    return _json(netns, argv)


def neighbours(netns: str, dev: str, family: int = 4) -> list[dict[str, Any]]:
    return _json(netns, ["ip", "-j", f"-{family}", "neigh", "show", "dev", dev])


def fdb(netns: str, dev: str) -> list[dict[str, Any]]:
    """FDB entries of ``dev`` that carry a remote destination (vxlan peers)."""
    return [e for e in _json(netns, ["bridge", "-j", "fdb", "show", "dev", dev]) if "dst" in e]


def _diff(what: str, want: Mapping[str, str | None], have: Mapping[str, str | None]) -> str:
    missing = {k: v for k, v in want.items() if k not in have}
    wrong = {k: (v, have[k]) for k, v in want.items() if k in have and have[k] != v}
    extra = {k: v for k, v in have.items() if k not in want}
    return f"{what}: missing {missing}, wrong (want, have) {wrong}, unexpected {extra}"


def assert_routes(
    netns: str, expected: Mapping[str, str | None], *, family: int = 4, proto: int | str = 75
) -> None:
    """The routes with ``proto`` are exactly ``expected`` (destination -> gateway or None)."""
    have = {r["dst"]: r.get("gateway") for r in routes(netns, family, proto)}
    assert have == dict(expected), _diff(f"routes proto {proto} in {netns}", expected, have)


def assert_neighbours(netns: str, dev: str, expected: Mapping[str, str], family: int = 4) -> None:
    """The permanent neighbours on ``dev`` are exactly ``expected`` (address -> MAC)."""
    have: dict[str, str | None] = {
        n["dst"]: n.get("lladdr")
        for n in neighbours(netns, dev, family)
        if "PERMANENT" in n.get("state", [])
    }
    want: dict[str, str | None] = dict(expected)
    assert have == want, _diff(f"neighbours on {dev} in {netns}", want, have)


def assert_fdb(netns: str, dev: str, expected: Mapping[str, str]) -> None:
    """The FDB entries on ``dev`` are exactly ``expected`` (MAC -> remote address)."""
    have: dict[str, str | None] = {e["mac"]: e.get("dst") for e in fdb(netns, dev)}
    want: dict[str, str | None] = dict(expected)
    assert have == want, _diff(f"fdb on {dev} in {netns}", want, have)
