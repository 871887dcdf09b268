"""Test settings: the project's own, with loopback allowed as a scan target."""

from scans.addresses import parse_networks
from scraperproj.settings import *  # noqa: F403

SCANS_ALLOWED_NETWORKS = parse_networks("127.0.0.1/32")
SCANS_ALLOWED_PORTS = None
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
