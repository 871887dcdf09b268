"""Tests for the SSRF address guard (pure stdlib, no Django, no sockets)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scans.addresses import parse_networks, why_blocked

LOOPBACK_ONLY = [ipaddress.ip_network("127.0.0.1/32")]

# Independent copy of the IPv4 block list; the sweep checks the module against it.
BLOCKED_V4 = [
    ipaddress.IPv4Network(cidr)
    for cidr in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "255.255.255.255/32",
    )
]

# (address, phrase the reason must contain); first, middle and last of each range.
BLOCKED_CASES = [
    ("0.0.0.0", "unspecified"),
    ("0.128.0.1", "unspecified"),
    ("0.255.255.255", "unspecified"),
    ("10.0.0.0", "private"),
    ("10.128.0.1", "private"),
    ("10.255.255.255", "private"),
    ("100.64.0.0", "shared (CGNAT)"),
    ("100.100.100.100", "shared (CGNAT)"),
    ("100.127.255.255", "shared (CGNAT)"),
    ("127.0.0.0", "loopback"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.255", "loopback"),
    ("169.254.0.0", "link-local"),
    ("169.254.169.254", "link-local"),
    ("169.254.255.255", "link-local"),
    ("172.16.0.0", "private"),
    ("172.20.1.1", "private"),
    ("172.31.255.255", "private"),
    ("192.0.0.0", "IETF protocol assignment"),
    ("192.0.0.170", "IETF protocol assignment"),
    ("192.0.0.255", "IETF protocol assignment"),
    ("192.0.2.0", "documentation"),
    ("192.0.2.128", "documentation"),
    ("192.0.2.255", "documentation"),
    ("192.88.99.0", "6to4 relay anycast"),
    ("192.88.99.1", "6to4 relay anycast"),
    ("192.88.99.255", "6to4 relay anycast"),
    ("192.168.0.0", "private"),
    ("192.168.1.1", "private"),
    ("192.168.255.255", "private"),
    ("198.18.0.0", "benchmarking"),
    ("198.19.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("198.51.100.0", "documentation"),
    ("198.51.100.77", "documentation"),
    ("198.51.100.255", "documentation"),
    ("203.0.113.0", "documentation"),
    ("203.0.113.99", "documentation"),
    ("203.0.113.255", "documentation"),
    ("224.0.0.0", "multicast"),
    ("232.1.2.3", "multicast"),
    ("239.255.255.255", "multicast"),
    ("240.0.0.0", "reserved"),
    ("250.1.2.3", "reserved"),
    ("255.255.255.254", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::2", "IPv4-compatible"),
    ("::8.8.8.8", "deprecated IPv4-compatible"),
    ("::ffff:ffff", "IPv4-compatible"),
    ("100::", "discard-only"),
    ("100::1234", "discard-only"),
    ("100::ffff:ffff:ffff:ffff", "discard-only"),
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", "Teredo"),
    ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", "Teredo"),
    ("2001:1::1", "IETF protocol assignment"),
    ("2001:100::", "IETF protocol assignment"),
    ("2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", "IETF protocol assignment"),
    ("2001:db8::", "documentation"),
    ("2001:db8:1234::1", "documentation"),
    ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "documentation"),
    ("3fff::", "documentation"),
    ("3fff:800::1", "documentation"),
    ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", "documentation"),
    ("5f00::", "SRv6"),
    ("5f00:1234::1", "SRv6"),
    ("5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "SRv6"),
    ("fc00::", "unique-local"),
    ("fd00::1", "unique-local"),
    ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "unique-local"),
    ("fe80::", "link-local"),
    ("fe80::1", "link-local"),
    ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "link-local"),
    ("fec0::", "site-local"),
    ("fed0::1", "site-local"),
    ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "site-local"),
    ("ff00::", "multicast"),
    ("ff02::1", "multicast"),
    ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "multicast"),
    # Python 3.11 calls these global; they are outside 2000::/3.
    ("4000::1", "2000::/3"),
    ("1000::1", "2000::/3"),
    ("::1:0:0:0", "2000::/3"),
    ("::ffff:0:a00:1", "2000::/3"),
    ("64:ff9a:ffff:ffff:ffff:ffff:ffff:ffff", "2000::/3"),
    # Unwrapped IPv4 must itself pass.
    ("::ffff:10.0.0.1", "maps to 10.0.0.1, a private address"),
    ("::ffff:127.0.0.1", "maps to 127.0.0.1, a loopback address"),
    ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:100.64.0.1", "shared (CGNAT)"),
    ("::10.0.0.1", "maps to 10.0.0.1 (IPv4-compatible), a private address"),
    ("64:ff9b::a00:1", "maps to 10.0.0.1 via NAT64, a private address"),
    ("64:ff9b::7f00:1", "loopback"),
    ("64:ff9b:1::a9fe:a9fe", "maps to 169.254.169.254 via NAT64"),
    ("64:ff9b:1:abcd::c0a8:101", "192.168.1.1 via NAT64"),
    ("2002:0a00:0001::1", "maps to 10.0.0.1 via 6to4, a private address"),
    ("2002:c0a8:0101::1", "192.168.1.1 via 6to4"),
    ("2002:7f00:1::1", "loopback"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "maps to 10.0.0.1 via Teredo"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.45 via Teredo, a documentation"),
]

ALLOWED_CASES = [
    "8.8.8.8",
    "1.1.1.1",
    "1.0.0.0",
    "9.255.255.255",
    "11.0.0.0",
    "100.63.255.255",
    "100.128.0.0",
    "126.255.255.255",
    "128.0.0.0",
    "169.253.255.255",
    "169.255.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "192.0.1.255",
    "192.0.3.0",
    "192.88.98.255",
    "192.88.100.0",
    "192.167.255.255",
    "192.169.0.0",
    "198.17.255.255",
    "198.20.0.0",
    "198.51.99.255",
    "198.51.101.0",
    "203.0.112.255",
    "203.0.114.0",
    "223.255.255.255",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "2001:200::1",
    "2002:0808:0808::1",
    "::ffff:8.8.8.8",
    "::ffff:1.1.1.1",
    "64:ff9b::808:808",
    "64:ff9b:1::101:101",
    "2606:4700:4700::1111%eth0",
]

JUNK = [
    "",
    "x",
    "localhost",
    "example.com",
    "8.8.8",
    "8.8.8.8.8",
    "256.1.1.1",
    "010.0.0.1",
    "127.1",
    "0x7f000001",
    "2130706433",
    " 8.8.8.8",
    "8.8.8.8 ",
    "1.1.1.1\n",
    "\uff11.\uff11.\uff11.\uff11",
    "[::1]",
    "::1/128",
    "8.8.8.0/24",
    ":::1",
    "::ffff:010.0.0.1",
    "8.8.8.8%eth0",
    "fe80::1%",
    "2606:4700:4700::1111%a%b",
    "%eth0",
]


def v4_is_blocked(address: ipaddress.IPv4Address) -> bool:
    """Expected verdict from the test's own table."""
    return any(address in network for network in BLOCKED_V4)


def six_forms(address: ipaddress.IPv4Address) -> list[str]:
    """IPv6 forms whose verdict must equal the IPv4's."""
    value = int(address)
    return [
        f"::ffff:{address}",
        str(ipaddress.IPv6Address((0x2002 << 112) | (value << 80) | 1)),
        str(ipaddress.IPv6Address("64:ff9b::") + value),
        str(ipaddress.IPv6Address("64:ff9b:1::") + value),
    ]


@pytest.mark.parametrize(("address", "phrase"), BLOCKED_CASES)
def test_it_blocks_special_ranges_with_a_reason(address: str, phrase: str) -> None:
    reason = why_blocked(address)
    assert reason is not None
    assert phrase in reason
    assert reason.startswith(f"{address} ")


@pytest.mark.parametrize("address", ALLOWED_CASES)
def test_it_allows_public_unicast(address: str) -> None:
    assert why_blocked(address) is None


def test_it_words_reasons_readably() -> None:
    assert why_blocked("127.0.0.2") == "127.0.0.2 is a loopback address"
    assert why_blocked("169.254.169.254") == "169.254.169.254 is a link-local address"
    assert why_blocked("100.64.0.1") == "100.64.0.1 is a shared (CGNAT) address"
    assert why_blocked("fd00::1") == "fd00::1 is a unique-local address"
    assert why_blocked("::ffff:10.0.0.1") == "::ffff:10.0.0.1 maps to 10.0.0.1, a private address"


@pytest.mark.parametrize("junk", JUNK)
def test_it_fails_closed_on_junk(junk: str) -> None:
    assert why_blocked(junk) == f"{junk!r} is not an IP address"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("fe80::1%eth0", "fe80::1 is a link-local address"),
        ("ff02::1%2", "ff02::1 is a multicast address"),
        ("fd00::1%wlan0", "fd00::1 is a unique-local address"),
    ],
)
def test_it_strips_zones_and_leaves_them_out_of_reasons(address: str, reason: str) -> None:
    assert why_blocked(address) == reason


@pytest.mark.parametrize(
    ("address", "allowed", "verdict"),
    [
        ("127.0.0.1", "127.0.0.1/32", None),
        ("127.0.0.2", "127.0.0.1/32", "loopback"),
        ("::ffff:127.0.0.1", "127.0.0.1/32", None),
        ("::ffff:127.0.0.2", "127.0.0.1/32", "loopback"),
        ("::1", "127.0.0.1/32", "loopback"),
        ("::1", "::1/128", None),
        ("::1", "127.0.0.1/32, ::1/128", None),
        ("127.0.0.1", "::1/128", "loopback"),
        ("64:ff9b::7f00:1", "127.0.0.1/32", "loopback"),
        ("2002:7f00:1::1", "127.0.0.1/32", "loopback"),
        ("64:ff9b::7f00:1", "64:ff9b::7f00:1/128", None),
        ("fe80::1%eth0", "fe80::/10", None),
        ("10.1.2.3", "10.0.0.0/8", None),
        ("10.1.2.3", "", "private"),
    ],
)
def test_it_honours_allowed_networks(address: str, allowed: str, verdict: str | None) -> None:
    reason = why_blocked(address, parse_networks(allowed))
    if verdict is None:
        assert reason is None
    else:
        assert reason is not None and verdict in reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        (" , ,", []),
        ("127.0.0.1/32", ["127.0.0.1/32"]),
        ("127.0.0.1", ["127.0.0.1/32"]),
        (" 10.0.0.0/8,, ::1/128 ,", ["10.0.0.0/8", "::1/128"]),
    ],
)
def test_it_parses_networks(text: str, expected: list[str]) -> None:
    assert parse_networks(text) == [ipaddress.ip_network(cidr) for cidr in expected]


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("10.0.0.0/8, nope", "'nope'"),
        ("10.0.0.1/8", "'10.0.0.1/8'"),
        ("10.0.0.0/33", "'10.0.0.0/33'"),
        ("::1/128,::1/129", "'::1/129'"),
        ("localhost", "'localhost'"),
    ],
)
def test_it_names_the_bad_network_item(text: str, bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        parse_networks(text)


def v4_addresses() -> st.SearchStrategy[ipaddress.IPv4Address]:
    """Uniform IPv4 plus addresses drawn from inside each blocked network."""
    inside = st.sampled_from(BLOCKED_V4).flatmap(
        lambda net: st.integers(int(net.network_address), int(net.broadcast_address))
    )
    return st.one_of(st.integers(0, 2**32 - 1), inside).map(ipaddress.IPv4Address)


@given(v4_addresses())
def test_it_blocks_exactly_the_v4_table(address: ipaddress.IPv4Address) -> None:
    reason = why_blocked(str(address))
    assert (reason is not None) == v4_is_blocked(address)
    if reason is not None:
        assert reason.startswith(f"{address} is ")


@given(v4_addresses())
def test_it_gives_v6_wrappers_the_v4_verdict(address: ipaddress.IPv4Address) -> None:
    expected_blocked = why_blocked(str(address)) is not None
    for form in six_forms(address):
        reason = why_blocked(form)
        assert (reason is not None) == expected_blocked, form
        if reason is not None:
            assert f"maps to {address}" in reason


@given(st.integers(0, 2**128 - 1))
def test_it_never_allows_v6_outside_global_unicast_unless_wrapping(value: int) -> None:
    address = ipaddress.IPv6Address(value)
    wrappers = ("::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48")
    wrapped = any(address in ipaddress.ip_network(cidr) for cidr in wrappers)
    if why_blocked(str(address)) is None:
        assert wrapped or address in ipaddress.ip_network("2000::/3")


@given(st.text())
def test_it_never_raises_on_arbitrary_text(text: str) -> None:
    reason = why_blocked(text)
    assert reason is None or isinstance(reason, str)
