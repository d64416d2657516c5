"""hvd_ps.addresses: free ports, open ports, the address to advertise."""

from __future__ import annotations

import socket

import pytest

from hvd_ps import addresses
from hvd_ps.errors import TierError


def test_free_port_can_be_bound_and_port_open_sees_a_listener() -> None:
    port = addresses.free_port("127.0.0.1")
    assert 0 < port < 65536
    assert addresses.port_open("127.0.0.1", port) is False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))
        s.listen(1)
        assert addresses.port_open("127.0.0.1", port) is True
    assert addresses.port_open("127.0.0.1", port) is False


@pytest.mark.parametrize("remote", ["127.0.0.1", "127.3.4.5", "localhost"])
def test_route_to_loopback_is_loopback(remote: str) -> None:
    assert addresses.route_address(remote) == "127.0.0.1"


def test_no_route_is_a_tier_error_naming_the_host() -> None:
    with pytest.raises(TierError, match=r"^no route to the PS scheduler host nohost\.invalid: "):
        addresses.route_address("nohost.invalid")  # .invalid never resolves


def _resolving_to(monkeypatch, *addrs: str) -> None:
    infos = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0)) for a in addrs]
    monkeypatch.setattr(addresses.socket, "getaddrinfo", lambda *args, **kw: infos)


def test_host_address_skips_loopback(monkeypatch) -> None:
    _resolving_to(monkeypatch, "127.0.1.1", "10.1.2.3", "10.9.9.9")
    assert addresses.host_address() == "10.1.2.3"


def test_host_address_without_a_non_loopback_address_says_what_to_set(monkeypatch) -> None:
    _resolving_to(monkeypatch, "127.0.1.1")
    with pytest.raises(TierError, match="set DMLC_NODE_HOST"):
        addresses.host_address()

    def unresolvable(*args, **kw):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(addresses.socket, "getaddrinfo", unresolvable)
    with pytest.raises(TierError, match="does not resolve to a non-loopback address"):
        addresses.host_address()
