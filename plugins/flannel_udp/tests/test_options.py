from __future__ import annotations

import pytest

from flannel.backend import BackendConfigError
from flannel_udp.options import DEFAULT_PORT, parse_options


def test_default_port() -> None:
    assert parse_options({"Type": "udp"}).port == DEFAULT_PORT == 8285


def test_port_key_is_case_insensitive() -> None:
    assert parse_options({"Type": "udp", "port": 9000}).port == 9000


@pytest.mark.parametrize("bad", ["8285", 0.5, True, 70000, -1])
def test_bad_port_is_named(bad: object) -> None:
    with pytest.raises(BackendConfigError, match="Port="):
        parse_options({"Port": bad})
