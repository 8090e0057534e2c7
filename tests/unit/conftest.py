"""Fixtures for the unit tests of the aws target: moto in-process with seeded AMIs."""
from __future__ import annotations

import datetime as dt

import pytest
from moto import mock_aws

from tests.conftest import seed_moto_amis

REGION = "us-east-1"
DEBIAN_OWNER = "136693071363"
CANONICAL_OWNER = "099720109477"


def moto_ami(ami_id: str, name: str, owner: str, created: str) -> dict:
    """An AMI record in the shape moto loads (MOTO_AMIS_PATH)."""
    return {"ami_id": ami_id, "name": name, "owner_id": owner, "state": "available", "public": True,
            "architecture": "x86_64", "root_device_type": "ebs", "root_device_name": "/dev/xvda",
            "virtualization_type": "hvm", "creation_date": created, "description": name, "hypervisor": "xen",
            "image_location": name, "image_type": "machine", "platform": None, "sriov": "simple"}


def add_moto_ami(ami_id: str, name: str, owner: str, created: dt.datetime) -> None:
    """Publish one more image "from outside" while moto runs (a vendor's new release)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.amis import Ami

    backend = ec2_backends[DEFAULT_ACCOUNT_ID][REGION]
    record = moto_ami(ami_id, name, owner, created.strftime("%Y-%m-%dT%H:%M:%S.000Z"))
    record["creation_date"] = created
    backend.amis[ami_id] = Ami(backend, **record)


@pytest.fixture
def aws_env(state_dir, monkeypatch, tmp_path):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    # moto's built-in list holds Amazon's own images only: add Debian's and Canonical's.
    amis = [moto_ami(f"ami-0deb1{n:012x}", f"debian-12-amd64-2026110{n}-1", DEBIAN_OWNER,
                     f"2026-11-0{n}T00:00:00.000Z") for n in (1, 2)]
    amis.append(moto_ami("ami-0ca0000000000000a", "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20261101",
                         CANONICAL_OWNER, "2026-11-01T00:00:00.000Z"))
    seed_moto_amis(monkeypatch, tmp_path, amis)
    with mock_aws():
        yield
