"""Signed approval statements: what was approved, on what evidence, signed - and the check of it.

At approval the pipeline writes an in-toto Statement (in_toto_attestation builds and validates
it) in a DSSE envelope (securesystemslib signs and verifies it). Its subject is the image: the
id and, for a local image, its disk's sha256. Its predicate says what the approval rests on:
fingerprint, source image, OS, profile, pipeline commit, build id, approval time, the digests the
verify run sealed (report, snapshot, JUnit, SBOM), the waivers applied and the verdict on every
control. A consumer counts an image as approved only when `problems()` finds nothing: the
signature verifies against the key it pinned, the statement is about this very image (and this
very disk), the image's tags agree with it, and no waiver inside has expired.

    local  an ed25519 key made once in <state>/signing/ed25519.pem (0600, never printed or
           logged); `invoke signing-key` prints its public half for consumers to pin.
    aws    an asymmetric KMS key (aws.signing_kms_key_id, ECC_NIST_P256) signs; the statement is
           an SSM parameter per image (<aws.ssm_parameter_prefix>/approvals/<ami>), and the
           image's tags carry its digest and signature. Consumers pin the public half
           (aws.signing_public_key) or read it from KMS. Without a key an AWS approval is its
           tags alone, and `invoke latest`/`list` say so on every run.
"""
from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any, Optional

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf import json_format
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import STATEMENT_TYPE_URI, Statement
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey

from . import provenance
from .errors import UserError
from .layout import StateDir
from .targets.base import Image
from .verify_runner import SEAL_TAGS

PAYLOAD_TYPE = "application/vnd.in-toto+json"
PREDICATE_TYPE = "urn:golden-ami:approval:v1"
# Tags the statement repeats: a tag that says otherwise was changed after the approval.
AGREEING_TAGS = ("OS", "Fingerprint", "BuildId", "ApprovedAt", "Exceptions", *SEAL_TAGS)


# --- the local key -------------------------------------------------------------------------------
def local_signer(state_dir: Path) -> CryptoSigner:
    """The state dir's signing key, made on first use (0600 in a 0700 directory)."""
    path = StateDir(state_dir).signing_key
    if not path.exists():
        _create_key(path)
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise UserError(f"the signing key {path} cannot be read: {type(exc).__name__}") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise UserError(f"the signing key {path} is not an ed25519 key")
    return CryptoSigner(private)


def _create_key(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pem)
        with contextlib.suppress(FileExistsError):  # a concurrent first use made one: keep that
            os.link(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def public_key_pem(key: SSlibKey) -> str:
    """A verifying key as PEM (what `invoke signing-key` prints and `--public-key` reads)."""
    return key.keyval["public"] if key.keyval["public"].startswith("-----") else (
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(key.keyval["public"]))
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())


def key_from_pem(text: str) -> SSlibKey:
    try:
        public = serialization.load_pem_public_key(text.encode())
    except ValueError:
        raise UserError("the public key is not a PEM public key (invoke signing-key prints one)") from None
    return SSlibKey.from_crypto(public)


# --- the statement ---------------------------------------------------------------------------------
def statement(image: Image, subject_digest: dict[str, str], report: dict[str, Any], approved_at: str) -> bytes:
    """The statement's JSON bytes (the DSSE payload). image carries the tags it will have once
    approved (the seal included); report is the sealed report."""
    rows = report["controls"]

    def ids(outcome: str) -> list[str]:
        return sorted(row["id"] for row in rows if row["outcome"] == outcome)

    verdicts = {"passed": ids("pass"), "waived": ids("waived"), "not_applicable": ids("not-applicable"),
                "disabled": ids("disabled")}
    tags = image.tags
    predicate = {
        "image": {"id": image.id, "target": tags.get("Target", ""), "os": tags.get("OS", "")},
        "fingerprint": tags.get("Fingerprint", ""),
        "source_image": {"id": tags.get(provenance.SOURCE_IMAGE, ""), "name": tags.get(provenance.SOURCE_IMAGE_NAME, "")},
        "profile": report.get("profile", ""),
        "pipeline_commit": tags.get("PipelineCommit", ""),
        "build_id": tags.get("BuildId", ""),
        "approved_at": approved_at,
        "evidence": {tag: tags[tag] for tag in SEAL_TAGS if tags.get(tag)},
        "waivers": [{"control": row["id"], **row.get("waiver", {})} for row in rows if row["outcome"] == "waived"],
        "exceptions": report.get("exceptions", []),
        "controls": {**verdicts, "counts": {name: len(found) for name, found in verdicts.items()}},
    }
    built = Statement([ResourceDescriptor(name=image.id, digest=subject_digest).pb], PREDICATE_TYPE, predicate)
    built.validate()
    return json_format.MessageToJson(built.pb, sort_keys=True, indent=None).encode()


def sign(signer: Signer, payload: bytes) -> dict[str, Any]:
    envelope = Envelope(payload, PAYLOAD_TYPE, {})
    envelope.sign(signer)
    return envelope.to_dict()


# --- the check -------------------------------------------------------------------------------------
def problems(image: Image, envelope: Optional[dict[str, Any]], keys: list[Key], subject_digest: dict[str, str],
             today: Optional[dt.date] = None) -> tuple[list[str], Optional[dict[str, Any]]]:
    """Why image must not count as approved (empty: it may), and the statement when readable."""
    if image.tags.get("Status") != "approved":
        return [f"its Status tag is {image.tags.get('Status')!r}, not approved"], None
    if envelope is None:
        return ["it has no signed approval statement"], None
    try:
        parsed = Envelope.from_dict(copy.deepcopy(envelope))  # (from_dict takes the dict apart)
    except (KeyError, TypeError, ValueError) as exc:
        return [f"its approval statement is not a DSSE envelope ({type(exc).__name__})"], None
    if parsed.payload_type != PAYLOAD_TYPE:
        return [f"its approval statement has payload type {parsed.payload_type!r}"], None
    if not keys:
        return ["no public key to check its approval statement against (invoke signing-key)"], None
    try:
        parsed.verify(keys, 1)
    except (VerificationError, ValueError):
        return ["its approval statement's signature does not verify against the pinned key"], None
    try:
        document = json.loads(parsed.payload)
        Statement.copy_from_pb(json_format.ParseDict(document, Statement([], "", {}).pb)).validate()
    except (ValueError, json_format.ParseError) as exc:
        return [f"its approval statement is not an in-toto statement ({exc})"], None
    found: list[str] = []
    if document.get("_type") != STATEMENT_TYPE_URI or document.get("predicateType") != PREDICATE_TYPE:
        found.append(f"the statement is a {document.get('predicateType')!r}, not an approval")
    subjects = document.get("subject", [])
    if [s.get("name") for s in subjects] != [image.id]:
        found.append(f"the statement is about {', '.join(str(s.get('name')) for s in subjects)}, not {image.id}")
    elif subjects[0].get("digest") != subject_digest:
        found.append("the image's content is not what was approved (its digest differs from the statement's)")
    predicate = document.get("predicate", {})
    exceptions = len(predicate.get("exceptions", []))
    stated = {"OS": predicate.get("image", {}).get("os"), "Fingerprint": predicate.get("fingerprint"),
              "BuildId": predicate.get("build_id"), "ApprovedAt": predicate.get("approved_at"),
              "Exceptions": str(exceptions) if exceptions else None,
              **{tag: predicate.get("evidence", {}).get(tag) for tag in SEAL_TAGS}}
    for tag in AGREEING_TAGS:
        if (image.tags.get(tag) or None) != (stated.get(tag) or None):
            found.append(f"its {tag} tag ({image.tags.get(tag)!r}) is not what the statement says ({stated.get(tag)!r})")
    today = today or dt.datetime.now(dt.timezone.utc).date()
    for kind, entries in (("waiver of", predicate.get("waivers", [])),
                          ("exception for", predicate.get("exceptions", []))):
        for entry in entries:
            try:
                expired = dt.date.fromisoformat(str(entry.get("expires"))) < today
            except ValueError:
                expired = True
            if expired:
                found.append(f"the {kind} {entry.get('control')} in the statement expired on {entry.get('expires')}")
    return found, document


def check(target: Any, image: Image, keys: Optional[list[Key]] = None) -> tuple[list[str], Optional[dict[str, Any]]]:
    """problems() for an image of target, against keys (default: the target's own)."""
    if not target.signs_approvals:
        return [f"approvals on the {target.name} target are not signed (set aws.signing_kms_key_id): "
                "its tags are all there is"], None
    keys = target.approval_keys() if keys is None else keys
    envelope = target.load_statement(image.id)
    found, document = problems(image, envelope, keys, target.subject_digest(image))
    if envelope and image.tags.get("Status") == "approved":
        found += target.statement_problems(image, envelope)
    return found, document


def approved_images(target: Any, os_name: Optional[str] = None,
                    keys: Optional[list[Key]] = None) -> tuple[list[Image], dict[str, list[str]]]:
    """The target's images that count as approved, oldest first, and why each other image that
    carries Status=approved does not. keys: the pinned public keys (default: the target's own).
    A target that does not sign approvals yet (aws) is taken at its tags."""
    tagged = target.list_images(os_name, "approved")
    if not target.signs_approvals:
        return tagged, {}
    keys = target.approval_keys() if keys is None else keys
    trusted, refused = [], {}
    for image in tagged:
        found, _ = check(target, image, keys)
        if found:
            refused[image.id] = found
        else:
            trusted.append(image)
    return trusted, refused


def counted_approved(target: Any, os_name: Optional[str], warn: Any) -> list[Image]:
    """approved_images, saying (warn: one line each) why each image tagged approved does not
    count, and that a target without signed approvals takes anyone's tags at their word."""
    approved, refused = approved_images(target, os_name)
    if not target.signs_approvals:
        warn(f"warning: approvals on the {target.name} target are not signed (set aws.signing_kms_key_id): "
             "anyone allowed ec2:CreateTags can make an image look approved")
    for image_id, reasons in refused.items():
        warn(f"warning: {image_id} is tagged approved but does not count: {'; '.join(reasons)}"
             f" (invoke attest --image-id={image_id})")
    return approved
