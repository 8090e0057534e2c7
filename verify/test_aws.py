"""On the aws target, from inside the instance: the metadata service insists on IMDSv2."""
import shlex

import pytest

# Python is on every cloud image (cloud-init runs on it); curl is not.
PROBE = r"""
import sys, urllib.error, urllib.request
base = "http://169.254.169.254"
try:
    request = urllib.request.Request(base + "/latest/api/token", method="PUT",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    token = urllib.request.urlopen(request, timeout=5).read()
    print("token", "yes" if token else "empty")
except Exception as exc:
    print("token", "error:", exc)
    sys.exit(0)
try:
    urllib.request.urlopen(base + "/latest/meta-data/", timeout=5)
    print("plain", 200)
except urllib.error.HTTPError as exc:
    print("plain", exc.code)
except Exception as exc:
    print("plain", "error:", exc)
"""


@pytest.mark.control("GA-AWS-IMDSV2-ENFORCED")
def test_metadata_service_refuses_requests_without_a_token(host):
    lines = dict(line.split(" ", 1) for line in host.check_output(f"python3 -c {shlex.quote(PROBE)}").splitlines()
                 if " " in line)
    # A token proves the service is reachable, so the refusal below is a refusal, not silence.
    assert lines.get("token") == "yes", f"the metadata service gave no IMDSv2 token: {lines.get('token')}"
    assert lines.get("plain") == "401", \
        f"a request without a token got {lines.get('plain')}, expected HTTP 401 (IMDSv1 must be off)"
