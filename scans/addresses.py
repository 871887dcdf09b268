"""SSRF guard: decide whether the scraper may open a TCP connection to an IP.

Call ``why_blocked`` with the literal address a socket is about to connect to
(after DNS resolution, so a hostname cannot be re-resolved to something else).
It returns ``None`` when the connection may proceed, otherwise a short reason.

Policy:

* Only globally routable unicast destinations are allowed. Special-purpose
  ranges are blocked from an explicit table rather than trusting
  ``ipaddress.is_global`` alone, because Python 3.11 gets several of them
  wrong (e.g. it calls ``4000::1`` and the SIIT range ``::ffff:0:0:0/96``
  global, and ``64:ff9b::/96`` global regardless of the embedded IPv4).
  ``is_global`` is still applied afterwards as a last line of defence.
* IPv6 forms that carry an IPv4 address (IPv4-mapped, IPv4-compatible, 6to4,
  Teredo, NAT64) are unwrapped and the embedded IPv4 must pass too.
  IPv4-mapped, 6to4 and NAT64 then take the IPv4 verdict; IPv4-compatible
  (``::/96``) and Teredo (all of ``2001::/23``) are blocked in any case.
* ``allowed`` networks (e.g. ``127.0.0.1/32`` in tests) override the block.
  They match the address as given, plus the IPv4 behind an IPv4-mapped
  address, since ``::ffff:127.0.0.1`` on a dual-stack socket *is* a
  connection to ``127.0.0.1``. They deliberately do not match the IPv4 inside
  6to4, Teredo or NAT64 addresses: those reach the IPv4 host through a relay
  or translator, not directly. To allow such a form, list it explicitly
  (e.g. ``64:ff9b::a00:1/128``).
* Anything unparseable is blocked (fail closed).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

__all__ = ["Network", "parse_networks", "why_blocked"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Table = tuple[tuple[Network, str], ...]


def _table(*rows: tuple[str, str]) -> _Table:
    """Build a (network, reason phrase) table from CIDR strings."""
    return tuple((ipaddress.ip_network(cidr), phrase) for cidr, phrase in rows)


# First match wins, so more specific networks come before ones containing them.
_V4_BLOCKED = _table(
    ("0.0.0.0/8", "an unspecified ('this network') address"),
    ("10.0.0.0/8", "a private address"),
    ("100.64.0.0/10", "a shared (CGNAT) address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address"),
    ("172.16.0.0/12", "a private address"),
    ("192.0.0.0/24", "an IETF protocol assignment address"),
    ("192.0.2.0/24", "a documentation address"),
    ("192.88.99.0/24", "a 6to4 relay anycast address"),
    ("192.168.0.0/16", "a private address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("224.0.0.0/4", "a multicast address"),
    ("255.255.255.255/32", "the broadcast address"),
    ("240.0.0.0/4", "a reserved address"),
)

_V6_BLOCKED = _table(
    ("::/128", "the unspecified address"),
    ("::1/128", "the loopback address"),
    ("::/96", "a deprecated IPv4-compatible address"),
    ("100::/64", "a discard-only address"),
    ("2001::/32", "a Teredo address"),
    ("2001::/23", "an IETF protocol assignment address"),
    ("2001:db8::/32", "a documentation address"),
    ("3fff::/20", "a documentation address"),
    ("5f00::/16", "an SRv6 SID address"),
    ("fc00::/7", "a unique-local address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("ff00::/8", "a multicast address"),
)

# Everything outside 2000::/3 is reserved unless handled above or unwrapped.
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")

# IPv6 prefixes whose last 32 bits are an IPv4 address, and how to describe them.
_LOW32_EMBEDDINGS: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_V4_MAPPED, ""),
    (ipaddress.IPv6Network("64:ff9b::/96"), " via NAT64"),
    (ipaddress.IPv6Network("64:ff9b:1::/48"), " via NAT64"),
    (_V4_COMPATIBLE, " (IPv4-compatible)"),
)

# Forms whose real destination is the embedded IPv4, so its verdict is final.
_TRANSPARENT = (
    _V4_MAPPED,
    ipaddress.IPv6Network("2002::/16"),
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
)


def parse_networks(text: str) -> list[Network]:
    """Comma-separated CIDRs (blank items ignored, whitespace stripped) -> networks.

    Raises ValueError naming the bad item. Host bits must be clear
    ("10.0.0.1/8" is rejected) since it is almost certainly a typo.
    """
    items = (item.strip() for item in text.split(","))
    return [_parse_network(item) for item in items if item]


def _parse_network(item: str) -> Network:
    """Parse one CIDR, naming it in the error."""
    try:
        return ipaddress.ip_network(item, strict=True)
    except ValueError as exc:
        raise ValueError(f"{item!r} is not a valid network: {exc}") from exc


def why_blocked(address: str, allowed: Sequence[Network] = ()) -> str | None:
    """Return None if ``address`` may be connected to, else a short reason."""
    parsed, text = _parse_address(address)
    if parsed is None:
        return f"{address!r} is not an IP address"
    if _in_any(parsed, allowed):
        return None
    if isinstance(parsed, ipaddress.IPv4Address):
        problem = _v4_problem(parsed)
        return None if problem is None else f"{text} is {problem}"
    return _why_v6(parsed, text, allowed)


def _parse_address(address: str) -> tuple[Address | None, str]:
    """Parse ``address``, dropping an IPv6 zone; return (address, text without zone)."""
    text, percent, zone = address.partition("%")
    try:
        parsed = ipaddress.ip_address(text)
    except ValueError:
        return None, text
    # A zone is only meaningful on IPv6; empty or nested ones are malformed.
    if percent and (not zone or "%" in zone or parsed.version != 6):
        return None, text
    return parsed, text


def _in_any(address: Address, networks: Sequence[Network]) -> bool:
    """True if ``address`` lies in any of ``networks`` (other family never matches)."""
    return any(address in network for network in networks)


def _lookup(address: Address, table: _Table) -> str | None:
    """Reason phrase of the first table network containing ``address``."""
    return next((phrase for network, phrase in table if address in network), None)


def _v4_problem(address: ipaddress.IPv4Address) -> str | None:
    """Reason phrase why an IPv4 destination is blocked, or None."""
    problem = _lookup(address, _V4_BLOCKED)
    if problem is None and not address.is_global:
        problem = "not a globally routable address"
    return problem


def _why_v6(address: ipaddress.IPv6Address, text: str, allowed: Sequence[Network]) -> str | None:
    """Full verdict for an IPv6 destination not directly in ``allowed``."""
    embedded = _embedded_v4(address)
    if embedded is not None:
        v4, via = embedded
        if address in _V4_MAPPED and _in_any(v4, allowed):
            return None
        problem = _v4_problem(v4)
        if problem is not None:
            return f"{text} maps to {v4}{via}, {problem}"
        if any(address in network for network in _TRANSPARENT):
            return None
    problem = _v6_problem(address)
    return None if problem is None else f"{text} is {problem}"


def _embedded_v4(
    address: ipaddress.IPv6Address,
) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 carried inside ``address`` and a description of how, if any."""
    if address.sixtofour is not None:
        return address.sixtofour, " via 6to4"
    if address.teredo is not None:
        return address.teredo[1], " via Teredo"
    # :: and ::1 sit inside ::/96 but are not IPv4-compatible addresses.
    if int(address) <= 1:
        return None
    for network, via in _LOW32_EMBEDDINGS:
        if address in network:
            return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF), via
    return None


def _v6_problem(address: ipaddress.IPv6Address) -> str | None:
    """Reason phrase why a (non-transparent) IPv6 destination is blocked, or None."""
    problem = _lookup(address, _V6_BLOCKED)
    if problem is None and address not in _V6_GLOBAL_UNICAST:
        problem = "outside the global unicast range 2000::/3"
    if problem is None and not address.is_global:
        problem = "not a globally routable address"
    return problem
