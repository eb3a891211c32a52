"""Structured log output and secret redaction."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from flannel.logs import setup_logging, v_level, verbosity_level

PASSWORD = "s3cr3t-Pa55"


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)


@dataclass
class Opts:
    etcd_endpoints: str
    etcd_password: str


def _everything_with_a_password(log: logging.Logger) -> None:
    log.info("CLI flags config: %s", Opts("http://127.0.0.1:2379", PASSWORD))
    log.info("plain %s message", PASSWORD)
    log.warning("in a field", extra={"password": PASSWORD, "url": f"http://u:{PASSWORD}@h:1"})
    log.info(f"pre-formatted {PASSWORD}")
    try:
        raise ValueError(f"bad credentials {PASSWORD}")
    except ValueError:
        log.exception("etcd auth failed")
    log.info("stack", stack_info=True, extra={"n": 1})
    logging.getLogger("aetcd.something").warning("library says %r", {"pw": PASSWORD})


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_line_contains_the_password(restore_root: None, fmt: str) -> None:
    out = io.StringIO()
    setup_logging(0, fmt, secrets=[PASSWORD], stream=out)
    _everything_with_a_password(logging.getLogger("flannel.test"))
    text = out.getvalue()
    assert text.count("***") >= 7
    assert PASSWORD not in text
    assert "Traceback" in text and "bad credentials ***" in text
    assert len([line for line in text.splitlines() if "level=" in line or '"level"' in line]) == 7


def test_secret_added_later_and_longest_first(restore_root: None) -> None:
    out = io.StringIO()
    redact = setup_logging(0, "text", stream=out)
    redact.add("pass")
    redact.add("password1")
    redact.add("")
    logging.getLogger("flannel.t").info("pw=password1 and pass")
    assert 'msg="pw=*** and ***"' in out.getvalue()


def test_text_format_is_logfmt(restore_root: None) -> None:
    out = io.StringIO()
    setup_logging(0, "text", stream=out)
    logging.getLogger("flannel.daemon").info(
        "lease acquired", extra={"subnet": "10.244.1.0/24", "ttl": 86400, "note": 'a "b"'}
    )
    line = out.getvalue().strip()
    assert line.startswith("time=20") and line.count("\n") == 0
    assert ' level=info logger=flannel.daemon msg="lease acquired" subnet=10.244.1.0/24' in line
    assert line.endswith('ttl=86400 note="a \\"b\\""')


def test_json_format(restore_root: None) -> None:
    out = io.StringIO()
    setup_logging(2, "json", stream=out)
    log = logging.getLogger("flannel.vxlan")
    log.log(v_level(2), "fdb added", extra={"mac": "aa:bb:cc:dd:ee:ff", "ok": True})
    obj = json.loads(out.getvalue())
    assert obj["level"] == "v2" and obj["logger"] == "flannel.vxlan"
    assert obj["msg"] == "fdb added" and obj["mac"] == "aa:bb:cc:dd:ee:ff" and obj["ok"] is True
    assert obj["time"].endswith("Z")


def test_verbosity_levels(restore_root: None) -> None:
    assert verbosity_level(0) == logging.INFO
    assert verbosity_level(1) == logging.DEBUG
    assert verbosity_level(10) == 1
    with pytest.raises(ValueError, match="-v 11 is out of range"):
        verbosity_level(11)
    out = io.StringIO()
    setup_logging(2, "text", stream=out)
    log = logging.getLogger("flannel.x")
    log.log(v_level(1), "one")
    log.log(v_level(2), "two")
    log.log(v_level(3), "three")
    assert [line.split("msg=")[1] for line in out.getvalue().splitlines()] == ["one", "two"]
    assert "level=debug" in out.getvalue() and "level=v2" in out.getvalue()
    with pytest.raises(ValueError, match="--log-format 'xml' is unknown"):
        setup_logging(0, "xml")


def test_register_secret_on_any_handler(restore_root: None) -> None:
    from flannel.logs import register_secret

    out = io.StringIO()
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(out)  # configured by someone else, no filter
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    register_secret(PASSWORD)
    register_secret("")
    logging.getLogger("flannel.daemon").info("options: %s", {"etcd_password": PASSWORD})
    assert out.getvalue() == "INFO options: {'etcd_password': '***'}\n"


def test_noisy_libraries_quiet_below_v6(restore_root: None) -> None:
    out = io.StringIO()
    setup_logging(1, "text", stream=out)
    logging.getLogger("pyroute2.netlink.core").setLevel(0)  # what pyroute2 does on import
    logging.getLogger("pyroute2.netlink.core").debug("netlink chatter")
    logging.getLogger("pyroute2.netlink.core").warning("netlink warning")
    logging.getLogger("flannel.x").debug("our debug")
    text = out.getvalue()
    assert "netlink chatter" not in text and "netlink warning" in text and "our debug" in text
    out = io.StringIO()
    setup_logging(6, "text", stream=out)
    logging.getLogger("pyroute2.netlink.core").debug("netlink chatter")
    assert "netlink chatter" in out.getvalue()
