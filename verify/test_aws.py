"""On the aws target, from inside the instance: the metadata service insists on IMDSv2."""
import pytest

IMDS = "http://169.254.169.254"


@pytest.mark.control("GA-AWS-IMDSV2-ENFORCED")
def test_metadata_service_refuses_requests_without_a_token(host):
    token = host.run(
        f"curl -s --max-time 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' {IMDS}/latest/api/token")
    # A token proves the service is reachable, so the refusal below is a refusal, not silence.
    assert token.rc == 0 and token.stdout.strip(), "the metadata service gave no IMDSv2 token (unreachable?)"
    plain = host.run(f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 {IMDS}/latest/meta-data/")
    code = plain.stdout.strip()
    assert code == "401", f"a request without a token got HTTP {code or 'no answer'}, expected 401 (IMDSv1 must be off)"
