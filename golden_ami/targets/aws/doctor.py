"""`invoke doctor` for aws: credentials that the STS API accepts (at AWS_ENDPOINT_URL if set)."""
from __future__ import annotations

import os

from ..base import Finding


def credentials_finding() -> Finding:
    try:
        import boto3  # here, not at the top: a failure to import it is itself the finding

        session = boto3.Session()
        credentials = session.get_credentials()
    except Exception as exc:  # noqa: BLE001 - any failure here is the finding
        return Finding("aws", False, f"AWS credentials could not be read: {exc}", "check AWS_PROFILE / ~/.aws/config")
    if credentials is None:
        return Finding("aws", False, "no AWS credentials found",
                       "set AWS_PROFILE, run aws sso login, or use an instance/OIDC role")
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    where = f" (endpoint {endpoint})" if endpoint else ""
    try:
        import botocore.config

        sts = session.client("sts", region_name=session.region_name or "us-east-1",
                             config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=10))
        account = sts.get_caller_identity()["Account"]
    except Exception as exc:  # noqa: BLE001 - the finding says what failed
        return Finding("aws", False, f"AWS credentials from {credentials.method}{where} do not work: {exc}",
                       "check the credentials, AWS_ENDPOINT_URL and the network")
    return Finding("aws", True, f"AWS account {account}, credentials from {credentials.method}{where}")
