"""Approval signing on the aws target: an asymmetric KMS key signs; the private half never leaves KMS.

The key is ECC_NIST_P256 with key usage SIGN_VERIFY (aws.signing_kms_key_id). The pipeline's role
needs kms:Sign on it, and kms:GetPublicKey to learn its public half; nothing else. securesystemslib
builds and checks the DSSE envelope; this module only gives it a Signer whose signature comes
from KMS.

KMS signs a message of at most 4 KiB as it is, and a statement's DSSE pre-authentication encoding
is longer, so the SHA-256 is computed here and sent with MessageType=DIGEST. The result is the
same ECDSA P-256/SHA-256 signature (DER) that `openssl dgst -sha256 -verify` or `aws kms verify
--message-type DIGEST` checks against the whole message's digest.
"""
from __future__ import annotations

import hashlib
from typing import Any

import botocore.exceptions
from cryptography.hazmat.primitives import serialization
from securesystemslib.signer import Key, SecretsHandler, Signature, Signer, SSlibKey

from ...errors import UserError
from . import clients

KEY_SPEC = "ECC_NIST_P256"
SIGNING_ALGORITHM = "ECDSA_SHA_256"


def kms_public_key(kms: Any, key_id: str) -> SSlibKey:
    """The public half of the signing key, refused unless it is a P-256 signing key."""
    try:
        response = kms.get_public_key(KeyId=key_id)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise clients.describe_error(exc, f"read the public key of aws.signing_kms_key_id {key_id}") from None
    spec = response.get("KeySpec") or response.get("CustomerMasterKeySpec")
    if spec != KEY_SPEC or SIGNING_ALGORITHM not in response.get("SigningAlgorithms", []):
        raise UserError(f"aws.signing_kms_key_id {key_id} is a {spec} key: approvals need an {KEY_SPEC} "
                        "key with key usage SIGN_VERIFY")
    return SSlibKey.from_crypto(serialization.load_der_public_key(response["PublicKey"]))


class KmsSigner(Signer):
    """Signs with a KMS key through the pipeline's own client (its endpoint, retries, recorder)."""

    def __init__(self, kms: Any, key_id: str, public_key: SSlibKey):
        self._kms = kms
        self._key_id = key_id
        self._public_key = public_key

    @classmethod
    def from_priv_key_uri(cls, priv_key_uri: str, public_key: Key,
                          secrets_handler: SecretsHandler | None = None) -> KmsSigner:
        raise ValueError("a KmsSigner is made by the aws target from aws.signing_kms_key_id, not from a URI")

    @property
    def public_key(self) -> SSlibKey:
        return self._public_key

    def sign(self, payload: bytes) -> Signature:
        try:
            response = self._kms.sign(KeyId=self._key_id, Message=hashlib.sha256(payload).digest(),
                                      MessageType="DIGEST", SigningAlgorithm=SIGNING_ALGORITHM)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise clients.describe_error(exc, f"sign the approval with {self._key_id}") from None
        return Signature(self._public_key.keyid, response["Signature"].hex())
