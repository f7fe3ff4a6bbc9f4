"""Deployment tests: HAProxy in front of real replicas, and the Kubernetes manifests."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "haproxy: drives real replicas through HAProxy (Debian's "
                                       "haproxy, installed with apt-get as root when missing)")


@pytest.fixture(scope="session")
def haproxy_binary() -> str:
    """Debian's haproxy; installed here when missing and we may (scripts/test.sh installs it
    first, so CI never skips)."""
    found = shutil.which("haproxy")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=600,
                       capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "haproxy"], env=env, check=False,
                       timeout=600, capture_output=True)
        found = shutil.which("haproxy")
    if found is None:
        pytest.skip("haproxy is not installed and cannot be installed here (apt-get as root)")
    return found
