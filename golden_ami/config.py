"""Configuration: four layers merged in one place, validated once, then read-only.

    pipeline defaults (golden_ami/defaults.yaml)
      < per-OS data (os/<os>.yaml, its optional ``settings:``)
      < the user's config file (golden-ami.yaml or --config; ``per_os:`` for one OS)
      < command-line flags

Every value that can reach a shell script, a Packer template or a remote command is
checked against a strict pattern here, so a value such as ``$(reboot)`` is refused with
one line naming the key, long before anything is rendered. (Rendering quotes every value
as well: the patterns are the first wall, quoting the second.)
"""
from __future__ import annotations

import copy
import datetime as dt
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StringConstraints, ValidationError,
                      model_validator)

from . import paths, yamlfiles
from .errors import UserError

TARGETS = ("aws", "local")
DEFAULT_TARGET = "local"
USER_CONFIG_NAME = "golden-ami.yaml"

# --- value shapes that are safe to hand to a shell, HCL or a config file ------------------
Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+@:-]{0,127}$")]
UnixUser = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")]
AbsPath = Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9._/+-]{0,255}$")]
Url = Annotated[
    str, StringConstraints(pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/+%-]*)?$")
]
HostName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$")]
Fingerprint = Annotated[str, StringConstraints(pattern=r"^[0-9A-F]{40}$")]
AwsRegion = Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]$")]
SsmName = Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9._/-]{1,1000}$")]
NamePattern = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._/*?+-]{1,128}$")]


class _Strict(BaseModel):
    """Unknown keys are errors: a misspelt setting must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- per-OS data ---------------------------------------------------------------------------
class OsPackages(_Strict):
    firewall: Identifier
    audit: Identifier
    time_sync: Identifier
    auto_updates: Identifier


class OsServices(_Strict):
    ssh: Identifier
    audit: Identifier
    time_sync: Identifier
    firewall: Identifier
    auto_updates_timer: Identifier


class OsPaths(_Strict):
    nftables_conf: AbsPath
    chrony_conf: AbsPath
    chrony_sources_dir: AbsPath


class AgentSpec(_Strict):
    """How one agent gets onto one OS on one target, or why it cannot."""

    install: Optional[Literal["package", "snap", "deb_url"]] = None
    package: Optional[Identifier] = None
    snap: Optional[Identifier] = None
    url: Optional[Url] = None
    signature_url: Optional[Url] = None
    key_url: Optional[Url] = None
    keyserver: Optional[Annotated[str, StringConstraints(pattern=r"^hkps://[A-Za-z0-9.-]+$")]] = None
    key_fingerprint: Optional[Fingerprint] = None
    service: Optional[Identifier] = None
    unavailable: Optional[str] = None

    @property
    def available(self) -> bool:
        return self.unavailable is None


class SourceSpec(_Strict):
    # aws: an SSM public parameter and/or an owner-pinned name filter.
    ssm_parameter: Optional[SsmName] = None
    owners: list[Identifier] = Field(default_factory=list)
    name_pattern: Optional[NamePattern] = None
    architecture: Optional[Literal["x86_64", "arm64"]] = None
    # local: how `invoke base-image` makes a base disk (null: only --from PATH).
    recipe: Optional[Literal["debootstrap"]] = None
    suite: Optional[Identifier] = None
    components: list[Identifier] = Field(default_factory=list)
    packages: list[Identifier] = Field(default_factory=list)


class TargetOsData(_Strict):
    login_user: UnixUser
    source: SourceSpec
    time_servers: list[HostName]
    agents: dict[Literal["ssm", "cloudwatch"], AgentSpec]


class OsSbom(_Strict):
    """How the image's packages are named in its SBOM: package URLs (purl) of this type and
    namespace, with this distro qualifier."""

    purl_type: Literal["deb", "rpm"]
    purl_namespace: Identifier
    distro: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{0,39}$")


class OsData(_Strict):
    name: Identifier
    display_name: str
    family: Literal["debian", "amazon"]
    package_manager: Literal["apt", "dnf"]
    packages: OsPackages
    services: OsServices
    conflicting_firewalls: list[Identifier]
    paths: OsPaths
    sbom: OsSbom
    targets: dict[Literal["aws", "local"], TargetOsData]
    settings: dict[str, Any] = Field(default_factory=dict)
    # How the test suite runs this OS's checks on a booted instance of it; empty when it never
    # does (checks proven only on snapshots). `invoke controls` prints it; a unit test holds it
    # to what tests/e2e builds.
    proven_on_running_system: str = ""


# --- pipeline settings -----------------------------------------------------------------------
class PackerSettings(_Strict):
    binary: Identifier = "packer"
    # Template dialect: "legacy" for Packer 1.6 (builders built in; the version installable
    # here), "plugins" for Packer >= 1.7 (required_plugins + packer init), "auto" = by the
    # installed version.
    syntax: Literal["auto", "legacy", "plugins"] = "auto"
    timeout_minutes: int = Field(90, ge=5, le=24 * 60)


class LocalSettings(_Strict):
    accelerator: Literal["auto", "kvm", "tcg"] = "auto"
    cpus: int = Field(2, ge=1, le=64)
    memory_mb: int = Field(1024, ge=512, le=65536)
    disk_size_mb: int = Field(4096, ge=2048, le=1024 * 1024)
    ssh_timeout_minutes: int = Field(20, ge=1, le=240)
    boot_timeout_seconds: int = Field(900, ge=30, le=7200)
    debian_mirror: Url = "http://deb.debian.org/debian"
    debian_security_mirror: Url = "http://deb.debian.org/debian-security"

    def template_variables(self, source_checksum: str) -> dict[str, Any]:
        """What templates/local.pkr.hcl.j2 reads as var.*, beyond the common ones (render.py)."""
        return {"source_image_checksum": source_checksum, "cpus": self.cpus, "memory_mb": self.memory_mb,
                "disk_size_mb": self.disk_size_mb, "ssh_timeout_minutes": self.ssh_timeout_minutes}


def _cidr(value: str) -> str:
    """A network as ipaddress reads it: 999.999.999.999/99 or 10.0.0.1/8 (host bits set) are
    refused here, not inside an AWS call after the build."""
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a network in CIDR notation ({exc})") from None


Cidr = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F.:]+/[0-9]{1,3}$"), AfterValidator(_cidr)]
AwsId = Annotated[str, StringConstraints(pattern=r"^$|^[a-z]+-[0-9a-f]{8,17}$")]
AccountId = Annotated[str, StringConstraints(pattern=r"^[0-9]{12}$")]
Arn = Annotated[str, StringConstraints(pattern=r"^arn:aws[a-z-]*:[a-z0-9-]+:[a-z0-9-]*:[0-9]*:[A-Za-z0-9/_+=.@-]+$")]
KmsKey = Annotated[str, StringConstraints(pattern=r"^$|^(arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key|alias)/)?[A-Za-z0-9/_-]+$")]
ProfileName = Annotated[str, StringConstraints(pattern=r"^$|^[A-Za-z0-9+=,.@_-]{1,128}$")]


# A launch template as EC2 names it: lt- and 17 hex digits, or a name of 3-128 characters.
def _launch_template_id(value: str) -> str:
    if not re.fullmatch(r"lt-[0-9a-f]{8,17}", value):
        raise ValueError(f"{value!r} is not a launch template id (lt- and 8 to 17 lower-case hex digits)")
    return value


LaunchTemplateId = Annotated[str, StringConstraints(min_length=1), AfterValidator(_launch_template_id)]
LaunchTemplateName = Annotated[str, StringConstraints(min_length=1, pattern=r"^[A-Za-z0-9()./_-]{3,128}$")]


class LaunchTemplateFollow(_Strict):
    """A launch template that gets a new version, with the approved image, after each approval."""

    name: Optional[LaunchTemplateName] = None
    id: Optional[LaunchTemplateId] = None
    # Make the new version the template's default (launches that name no version use it).
    set_default: StrictBool = False

    @model_validator(mode="after")
    def _one_of_name_or_id(self) -> "LaunchTemplateFollow":
        if (self.name is None) == (self.id is None):
            raise ValueError("name one launch template by name or by id (one of the two, not both)")
        return self

    @property
    def label(self) -> str:
        return self.name or self.id or ""


def _distinct_templates(entries: list[LaunchTemplateFollow]) -> list[LaunchTemplateFollow]:
    seen: set[str] = set()
    for entry in entries:
        if entry.label in seen:
            raise ValueError(f"names launch template {entry.label!r} more than once")
        seen.add(entry.label)
    return entries


class AwsSettings(_Strict):
    region: AwsRegion = "us-east-1"
    instance_type: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+\.[a-z0-9]+$")] = "t3.small"
    # Build and test instances: subnet/VPC (empty: the default VPC), instance profiles (none
    # unless set: a verified image needs no AWS permissions to be checked).
    subnet_id: AwsId = ""
    vpc_id: AwsId = ""
    build_instance_profile: ProfileName = ""
    verify_instance_profile: ProfileName = ""
    # Encrypt the image with this KMS key (empty: the account's AWS-managed EBS key).
    kms_key_id: KmsKey = ""
    # Sign approvals with this asymmetric KMS key (ECC_NIST_P256, SIGN_VERIFY; the pipeline needs
    # kms:Sign and kms:GetPublicKey on it). Empty: an approval is its tags alone, which anyone
    # allowed ec2:CreateTags can forge; latest/list warn about it on every run.
    signing_kms_key_id: KmsKey = ""
    # The signing key's public half as a PEM file, pinned by consumers (invoke signing-key
    # --target=aws prints it). Empty: read from KMS each time.
    signing_public_key: str = ""
    # Where SSH to build and test instances may come from. Empty: this runner's own public
    # address (/32), looked up at build time. 0.0.0.0/0 only if you write it here yourself.
    ssh_cidrs: list[Cidr] = Field(default_factory=list)
    ssh_interface: Literal["public_ip", "private_ip"] = "public_ip"
    ssh_port: int = Field(22, ge=1, le=65535)
    spot: bool = False
    # After approval: the SSM parameter that names the newest approved AMI, sharing, copies.
    ssm_parameter_prefix: SsmName = "/golden-ami"
    share_accounts: list[AccountId] = Field(default_factory=list)
    share_organization_arns: list[Arn] = Field(default_factory=list)
    share_ou_arns: list[Arn] = Field(default_factory=list)
    copy_regions: list[AwsRegion] = Field(default_factory=list)
    # Launch templates (in aws.region) that follow approvals: after an approval each gets a new
    # version with the approved image (the team tags each template GoldenAmiFollow=true).
    launch_templates: Annotated[list[LaunchTemplateFollow], AfterValidator(_distinct_templates)] = Field(
        default_factory=list)
    # How long to wait for cloud-init's host-key block in the console output.
    console_timeout_seconds: int = Field(900, ge=60, le=7200)

    def template_variables(self, source_checksum: str) -> dict[str, Any]:
        """What templates/aws.pkr.hcl.j2 reads as var.*, beyond the common ones (render.py)."""
        return {"region": self.region, "instance_type": self.instance_type}


class RebuildSettings(_Strict):
    # The OSes `invoke rebuild --all` considers, and when an unchanged image is still rebuilt.
    os: list[Identifier] = Field(default_factory=lambda: ["al2023", "ubuntu2404", "ubuntu2204", "debian12"])
    max_age_days: int = Field(30, ge=1, le=3650)
    # Boot a fresh instance of the approved image and ask its package manager (slower).
    probe_updates: bool = False
    jobs: int = Field(1, ge=1, le=16)


class VerifySettings(_Strict):
    timeout_minutes: int = Field(30, ge=1, le=600)
    # Only for accounts where console output is unavailable: trust the first host key seen.
    # Off by default, loud when on, and written into the report.
    accept_unpinned_host_key: bool = False


class LifecycleSettings(_Strict):
    """What happens to older approved images (golden_ami/lifecycle.py: invoke prune, and after
    each approval). Never removed: the newest approved image, and on aws any image that a
    launch template version, an instance or the published SSM parameter still uses."""

    # How many of the newest approved images of each OS survive; older ones are deregistered
    # with their snapshots (aws) or deleted from the store (local).
    keep_approved: int = Field(3, ge=1, le=1000)
    # aws: older approved images are deprecated this many days from now (EC2 allows 10 years).
    deprecate_after_days: int = Field(30, ge=1, le=3650)


# An SNS topic in one region and account; a FIFO topic (.fifo) gets a message group id.
SnsTopicArn = Annotated[
    str, StringConstraints(pattern=r"^arn:aws[a-z-]*:sns:[a-z]{2}(-[a-z]+)+-[0-9]:[0-9]{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$")
]


class NotifySettings(_Strict):
    # Where `invoke rebuild` publishes its run summary (None: nowhere; the summary files are
    # written all the same). The topic's region is taken from the ARN.
    sns_topic_arn: Optional[SnsTopicArn] = None
    # Which per-OS outcomes make a run publish: approved (a new image passed the gate),
    # rejected (the gate refused it), failed (the run broke before the gate could decide).
    on: list[Literal["approved", "failed", "rejected"]] = Field(
        default_factory=lambda: ["approved", "failed", "rejected"])

    @model_validator(mode="before")
    @classmethod
    def _unquoted_on(cls, data: Any) -> Any:
        # YAML 1.1 (PyYAML) reads an unquoted `on:` key as the boolean True. Take it as "on",
        # and let it win: it can only come from a layer above the defaults, which quote it.
        if isinstance(data, dict) and True in data:
            data = dict(data)
            data["on"] = data.pop(True)
        return data


ParamValue = Any  # checked against the catalogue's declared defaults in catalogue.py


class ControlException(_Strict):
    """Why a control in force is switched off, until when: a weakening made in the open."""
    justification: str = Field(min_length=10)
    expires: dt.date
    approved_by: Optional[str] = None


class ControlOverride(_Strict):
    enabled: Optional[bool] = None
    params: dict[str, ParamValue] = Field(default_factory=dict)
    # Required with enabled: false for a control the profile has in force.
    exception: Optional[ControlException] = None


class Settings(_Strict):
    profile: Literal["baseline", "cis-level1-server", "cis-level2-server"] = "cis-level2-server"
    state_dir: Optional[str] = None
    # Expiring exceptions for failing controls (golden_ami/waivers.py); relative to the config file.
    waivers_file: Optional[str] = None
    # single: one root filesystem; cis: separate /home, /var, /var/tmp, /var/log, /var/log/audit.
    disk_layout: Literal["single", "cis"] = "single"
    packer: PackerSettings = PackerSettings()
    local: LocalSettings = LocalSettings()
    aws: AwsSettings = AwsSettings()
    verify: VerifySettings = VerifySettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
    rebuild: RebuildSettings = RebuildSettings()
    notify: NotifySettings = NotifySettings()
    controls: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.-]{1,40}$")], ControlOverride] = (
        Field(default_factory=dict)
    )


class Resolved(BaseModel):
    """The whole configuration of one run: which OS, which target, and every setting."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    os: OsData
    target: Literal["aws", "local"]
    settings: Settings
    config_files: tuple[str, ...] = ()

    @property
    def target_os(self) -> TargetOsData:
        return self.os.targets[self.target]

    @property
    def profile(self) -> str:
        return self.settings.profile

    @property
    def waivers_file(self) -> Optional[Path]:
        if not self.settings.waivers_file:
            return None
        path = Path(self.settings.waivers_file).expanduser()
        if not path.is_absolute() and self.config_files:
            path = Path(self.config_files[0]).parent / path
        return path.resolve()

    @property
    def state_dir(self) -> Path:
        if self.settings.state_dir:
            return Path(self.settings.state_dir).expanduser().resolve()
        return paths.default_state_dir()


# --- loading -------------------------------------------------------------------------------
def available_os() -> list[str]:
    return sorted(p.stem for p in paths.OS_DATA_DIR.glob("*.yaml"))


def _read_yaml(path: Path, what: str, cached: bool = False) -> dict[str, Any]:
    """A YAML mapping; cached: a file of the project's own data, parsed once per process."""
    try:
        data = yamlfiles.load_cached(path) if cached else yamlfiles.load(path)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a directory, not a file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{what} {path}{where} is not valid YAML: fix the syntax") from None
    except ValueError as exc:  # a value YAML reads as a date that is none: 2027-13-45
        raise UserError(f"{what} {path}: {exc} (a value there looks like a date but is not one)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} must be a mapping of settings at the top level")
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return base updated by override; mappings merge key by key, everything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def describe_validation_error(exc: ValidationError, source: str) -> str:
    """One line naming the first offending key, what is wrong and where to fix it."""
    err = exc.errors()[0]
    key = ".".join(str(part) for part in err["loc"]) or "(top level)"
    message = err["msg"]
    if err["type"] == "string_pattern_mismatch":
        message = "contains characters that are not allowed here (letters, digits and ._-/ only)"
    elif err["type"] == "extra_forbidden":
        message = "is not a known setting (misspelt?)"
    shown = err.get("input")
    value = f" (got {shown!r})" if isinstance(shown, (str, int, float, bool)) else ""
    more = f" [+{len(exc.errors()) - 1} more]" if len(exc.errors()) > 1 else ""
    return f"{source}: {key} {message}{value}{more}"


def load_os_data(os_name: str) -> OsData:
    names = available_os()
    if os_name not in names:
        raise UserError(f"unknown --os {os_name!r}: choose one of {', '.join(names)}")
    raw = _read_yaml(paths.OS_DATA_DIR / f"{os_name}.yaml", "OS data file", cached=True)
    try:
        data = OsData.model_validate(raw)
    except ValidationError as exc:
        raise UserError(describe_validation_error(exc, f"os/{os_name}.yaml")) from None
    if data.name != os_name:
        raise UserError(f"os/{os_name}.yaml names itself {data.name!r}: make name match the file")
    return data


def find_user_config(explicit: Optional[str]) -> Optional[Path]:
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_dir():
            raise UserError(f"--config {explicit} is a directory: name the config file in it")
        if not path.is_file():
            raise UserError(f"--config {explicit}: no such file")
        return path
    from_env = os.environ.get("GOLDEN_AMI_CONFIG")
    if from_env:
        path = Path(from_env).expanduser()
        if not path.is_file():
            raise UserError(f"GOLDEN_AMI_CONFIG={from_env}: no such file")
        return path
    local = Path.cwd() / USER_CONFIG_NAME
    return local if local.is_file() else None


def resolve(
    os_name: str,
    target: str = DEFAULT_TARGET,
    config_file: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
) -> Resolved:
    """Merge the four layers for one OS and target; raise UserError on any bad value."""
    if target not in TARGETS:
        raise UserError(f"unknown --target {target!r}: choose aws or local")
    os_data = load_os_data(os_name)
    if target not in os_data.targets:
        raise UserError(f"os/{os_name}.yaml has no data for target {target!r}")

    layers: list[tuple[str, dict[str, Any]]] = [
        ("golden_ami/defaults.yaml", _read_yaml(paths.DEFAULTS_FILE, "defaults file", cached=True)),
        (f"os/{os_name}.yaml settings", dict(os_data.settings)),
    ]
    files: list[str] = []
    user_path = find_user_config(config_file)
    if user_path is not None:
        user = _read_yaml(user_path, "config file")
        per_os = user.pop("per_os", {}) or {}
        if not isinstance(per_os, dict):
            raise UserError(f"{user_path}: per_os must map OS names to settings")
        unknown = sorted(set(per_os) - set(available_os()))
        if unknown:
            raise UserError(f"{user_path}: per_os names unknown OS {unknown[0]!r}")
        layers.append((str(user_path), user))
        layers.append((f"{user_path} per_os.{os_name}", per_os.get(os_name) or {}))
        files.append(str(user_path))
    layers.append(("command-line flags", {k: v for k, v in (overrides or {}).items() if v is not None}))

    merged: dict[str, Any] = {}
    for source, layer in layers:
        merged = deep_merge(merged, layer)
        try:  # validate after each layer, so the message names the layer that broke it
            Settings.model_validate(merged)
        except ValidationError as exc:
            raise UserError(describe_validation_error(exc, source)) from None
    settings = Settings.model_validate(merged)
    return Resolved(os=os_data, target=target, settings=settings, config_files=tuple(files))
