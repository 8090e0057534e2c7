"""On the aws target, from inside the instance: the metadata service insists on IMDSv2.

A dynamic fact (it asks the metadata service now): its own remote command, recorded into the
snapshot like the others.
"""
import pytest


@pytest.mark.control("GA-AWS-IMDSV2-ENFORCED")
def test_metadata_service_refuses_requests_without_a_token(facts):
    lines = dict(line.split(" ", 1) for line in facts.dynamic_output("imds_probe").splitlines() if " " in line)
    # A token proves the service is reachable, so the refusal below is a refusal, not silence.
    assert lines.get("token") == "yes", f"the metadata service gave no IMDSv2 token: {lines.get('token')}"
    assert lines.get("plain") == "401", \
        f"a request without a token got {lines.get('plain')}, expected HTTP 401 (IMDSv1 must be off)"
