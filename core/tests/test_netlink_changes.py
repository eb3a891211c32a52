"""flannel.netlink.changes against the real kernel, inside throwaway network namespaces:
which kernel changes mark the watch dirty, and which leave it quiet."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from ipaddress import ip_network

import pytest

from flannel.netlink.changes import KernelChangeWatch
from flannel.testing.netns import Netns

pytestmark = pytest.mark.netns

SCOPE = [ip_network("10.244.0.0/16"), ip_network("fd00:10:244::/56")]


@pytest.fixture
def ns(netns_factory: Callable[[str], Netns]) -> Iterator[Netns]:
    """A namespace with our vxlan device ``own0`` and an unrelated veth ``other0``."""
    ns = netns_factory("changes")
    ns.sh(
        "ip link add other0 type veth peer name other1 && ip link set other0 up"
        " && ip link set other1 up && ip addr add 198.18.0.1/24 dev other0"
        " && ip link add own0 type vxlan id 1 dstport 8472 nolearning local 198.18.0.1"
        " dev other0 && ip link set own0 up && ip addr add 10.244.1.0/32 dev own0"
    )
    yield ns


def index(ns: Netns, name: str) -> int:
    return int(ns.sh(f"cat /sys/class/net/{name}/ifindex"))


@pytest.fixture
def watch(ns: Netns) -> Iterator[KernelChangeWatch]:
    with KernelChangeWatch([index(ns, "own0")], scope=SCOPE, netns=ns.name) as w:
        yield w


def settled(watch: KernelChangeWatch) -> KernelChangeWatch:
    assert watch.take()  # a new watch starts dirty: nothing is known yet
    assert not watch.dirty
    return watch


@pytest.mark.parametrize(
    "change",
    [
        "ip neigh add 10.244.2.0 lladdr 0a:00:00:00:00:02 dev own0 nud permanent",
        "bridge fdb add 0a:00:00:00:00:02 dev own0 dst 198.18.0.2 self permanent",
        "ip route add 10.244.7.0/24 via 198.18.0.2 dev other0",  # in scope, another device
        "ip route add 198.19.0.0/24 dev own0",  # outside scope, our device
        "ip -6 route add fd00:10:244:5::/64 dev other0",
        "ip link set own0 down",
    ],
)
def test_changes_that_concern_us_mark_dirty(
    ns: Netns, watch: KernelChangeWatch, change: str
) -> None:
    settled(watch)
    ns.sh(change)
    assert watch.dirty and watch.reasons
    assert watch.dirty  # sticky until cleared
    watch.clear()
    assert not watch.dirty


def test_unrelated_changes_leave_it_quiet(ns: Netns, watch: KernelChangeWatch) -> None:
    settled(watch)
    ns.sh(
        "ip neigh add 198.18.0.9 lladdr 0a:00:00:00:00:09 dev other0 nud permanent"
        " && ip route add 198.19.5.0/24 via 198.18.0.9 dev other0"
        " && ip link add third0 type veth peer name third1 && ip link set third0 up"
        " && ip neigh del 198.18.0.9 dev other0"
    )
    assert not watch.dirty, watch.reasons


def test_deletes_by_hand_mark_dirty(ns: Netns, watch: KernelChangeWatch) -> None:
    ns.sh(
        "ip neigh add 10.244.2.0 lladdr 0a:00:00:00:00:02 dev own0 nud permanent"
        " && bridge fdb add 0a:00:00:00:00:02 dev own0 dst 198.18.0.2 self permanent"
        " && ip route add 10.244.2.0/24 via 10.244.2.0 dev own0 onlink"
    )
    watch.take()
    for delete in (
        "ip neigh del 10.244.2.0 dev own0",
        "bridge fdb del 0a:00:00:00:00:02 dev own0 dst 198.18.0.2 self",
        "ip route del 10.244.2.0/24",
    ):
        assert not watch.dirty
        ns.sh(delete)
        assert watch.take(), delete


def test_link_messages_of_extra_devices(ns: Netns) -> None:
    other = index(ns, "other0")
    with KernelChangeWatch([index(ns, "own0")], links=[other], scope=SCOPE, netns=ns.name) as w:
        settled(w)
        ns.sh("ip neigh add 198.18.0.9 lladdr 0a:00:00:00:00:09 dev other0 nud permanent")
        assert not w.dirty, w.reasons  # only its link state matters, not its neighbours
        ns.sh("ip link set other0 down")
        assert w.dirty


def test_without_scope_our_protocol_counts(ns: Netns) -> None:
    with KernelChangeWatch([index(ns, "own0")], netns=ns.name) as w:
        settled(w)
        ns.sh("ip route add 10.9.0.0/24 via 198.18.0.2 dev other0")
        assert not w.dirty, w.reasons
        ns.sh("ip route add 10.9.1.0/24 via 198.18.0.2 dev other0 proto 75")
        assert w.dirty


def test_overrun_marks_dirty(ns: Netns, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Unrelated messages that overflow a small queue still count: some may have been ours."""
    batch = tmp_path_factory.mktemp("batch") / "routes"
    batch.write_text(
        "".join(f"route add 198.19.{i // 256}.{i % 256}/32 dev other0\n" for i in range(2000))
    )
    with KernelChangeWatch([index(ns, "own0")], scope=SCOPE, netns=ns.name, rcvbuf=4096) as w:
        settled(w)
        ns.sh(f"ip -batch {batch}")
        assert w.dirty
        assert any("ENOBUFS" in r for r in w.reasons)


def test_closed_watch_is_always_dirty(ns: Netns) -> None:
    w = KernelChangeWatch([index(ns, "own0")], scope=SCOPE, netns=ns.name)
    settled(w)
    w.close()
    w.clear()
    assert w.dirty and w.fileno() == -1
