"""boto3 clients with the pipeline's conventions.

Credentials come from the standard chain (environment, AWS_PROFILE, SSO, instance or OIDC
role); AWS_ENDPOINT_URL (honoured by boto3 itself) points everything at an EC2-compatible
endpoint such as moto's server. Retries use botocore's "standard" mode.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import boto3
import botocore.config
import botocore.exceptions
import botocore.loaders
import botocore.session

from ...errors import UserError
from . import recorder

RETRY_CONFIG = botocore.config.Config(retries={"mode": "standard", "max_attempts": 8}, connect_timeout=10,
                                      read_timeout=60)
# One loader for every session: it caches the service models it has read (EC2's alone is
# megabytes of JSON, which a fresh session would parse again for each client).
_LOADER = botocore.loaders.create_loader()


def endpoint_url() -> Optional[str]:
    return os.environ.get("AWS_ENDPOINT_URL") or None


def client(service: str, region: str) -> Any:
    recorder.install_from_environment()  # the test suite's IAM check: a no-op unless asked for
    try:
        core = botocore.session.get_session()
        core.register_component("data_loader", _LOADER)
        session = boto3.Session(botocore_session=core, region_name=region)
        if session.get_credentials() is None:
            raise UserError("no AWS credentials found: set AWS_PROFILE, run aws sso login, or use an instance role "
                            "(invoke doctor --target=aws)")
        return session.client(service, config=RETRY_CONFIG)
    except botocore.exceptions.ProfileNotFound as exc:
        raise UserError(f"{exc}: check AWS_PROFILE") from None


def error_code(exc: Exception) -> str:
    """The API's error code of a ClientError ("InvalidAMIID.NotFound"), else ""."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return exc.response.get("Error", {}).get("Code", "")
    return ""


def error_text(exc: Exception) -> str:
    """An AWS failure in one short line: "Code: Message" when the API answered, else the
    exception's type and text (no answer, or one that is not the API's)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return f"{error_code(exc) or 'Error'}: {exc.response.get('Error', {}).get('Message', '')}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def describe_error(exc: Exception, action: str) -> UserError:
    """One actionable line for an AWS API failure (wrong endpoint, denied, expired token)."""
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        where = endpoint_url() or "the AWS endpoint"
        return UserError(f"cannot reach {where} to {action}: check AWS_ENDPOINT_URL / the network")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return UserError(f"no AWS credentials to {action}: set AWS_PROFILE or run aws sso login")
    if isinstance(exc, botocore.exceptions.ClientError):
        return UserError(f"AWS refused to {action}: {error_text(exc)}")
    return UserError(f"AWS call failed to {action}: {exc}")
