"""The interface every target implements. Code above it (render, verify, approve, the
pipeline) talks only to this and never asks which target it has.

    question                       aws                         local
    which source image?            SSM parameter / filter      a cached base disk
    build                          Packer amazon-ebs           Packer qemu
    boot a test instance           run_instances               QEMU on an overlay
    console text (host keys)       get_console_output          the VM's serial log
    where tags live                EC2 image tags              the local image store
    prune older approved images    aws/prune.py: deprecate,    local/prune.py: delete from
                                   deregister (per region)     the store
    reap what crashed runs left    aws/reap.py: instances,     local/reap.py: QEMU/Packer
                                   key pairs, groups, AMIs     processes, runtime dirs
    invoke doctor                  aws/doctor.py: credentials  local/doctor.py: QEMU, KVM,
                                                               base images
"""
from __future__ import annotations

import abc
import contextlib
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from ..config import Resolved, Settings
from ..errors import UserError
from ..progress import Progress
from ..render import SourceImage
from ..sshkeys import KeyPair

if TYPE_CHECKING:  # plans.py uses age_order from here: a runtime import would be a cycle
    from ..plans import PrunePlan, ReapPlan


@dataclass(frozen=True)
class Image:
    id: str
    tags: dict[str, str]
    location: str = ""  # local: the disk's path; aws: the region

    @property
    def status(self) -> str:
        return self.tags.get("Status", "")


def statement_parameter(prefix: str, image_id: str) -> str:
    """aws: the SSM parameter that holds an image's signed approval statement."""
    return f"{prefix.rstrip('/')}/approvals/{image_id}"


def age_order(image_id: str, tags: Mapping[str, str], created: str = "") -> tuple[str, str]:
    """The one meaning of "newer" between two images, for `latest`, `list`, rebuild and prune
    alike: when the image was built (its CreatedAt tag; the registry's own creation time for an
    image without one), then its id, so that equal times sort the same way every time.
    Not ApprovedAt: approving an older image again must not make it the image teams launch, nor
    let prune remove the one `latest` prints. (Both stamps are UTC ISO 8601: text order is
    time order.)"""
    return (tags.get("CreatedAt") or created, image_id)


@dataclass(frozen=True)
class Finding:
    """One line of `invoke doctor`: what this machine has or lacks, with its fix."""

    area: str
    ok: bool
    detail: str
    fix: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def tool_finding(area: str, binary: str, package: str) -> Finding:
    path = shutil.which(binary)
    if path:
        return Finding(area, True, f"{binary}: {path}")
    return Finding(area, False, f"{binary} is not installed", f"apt-get install {package}")


@dataclass(frozen=True)
class Problem:
    """A missing prerequisite, with the command or step that fixes it."""

    what: str
    fix: str


@dataclass
class BuildContext:
    build_id: str
    build_dir: Path  # the rendered directory: Packer runs here; logs and reports stay here
    runtime_dir: Path  # keys, seeds, Packer's output: removed when the build ends
    fingerprint: str
    commit: str
    source: SourceImage
    progress: Progress
    created_at: str = ""


@dataclass
class TestInstance:
    """A freshly booted instance of a candidate, reachable over SSH."""

    ssh_host: str
    ssh_port: int
    login_user: str
    key: KeyPair
    instance_id: str
    console_text: Callable[[], str]
    boot_timeout_seconds: float = 900
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunningInstance:
    """An instance found by its id (`invoke audit --instance-id`): where its SSH answers, what
    it was launched from, and its console (where its host keys are pinned from)."""

    instance_id: str
    address: str
    port: int
    image_id: str
    details: dict[str, Any]
    console_text: Callable[[], str]


class Target(abc.ABC):
    name: str
    # Whether instances can be named by id (`invoke audit --instance-id`): see find_instance.
    finds_instances_by_id: bool = False

    def __init__(self, settings: Settings, state_dir: Path):
        self.settings = settings
        self.state_dir = state_dir

    # --- prerequisites and sources ---
    @abc.abstractmethod
    def problems(self, cfg: Optional[Resolved] = None) -> list[Problem]:
        """What is missing to build (cfg given) or to use the target at all."""

    @abc.abstractmethod
    def resolve_source(self, cfg: Resolved, pinned: Optional[str] = None) -> SourceImage:
        """The image a build of cfg starts from (pinned: a specific id the user chose)."""

    # --- build ---
    @abc.abstractmethod
    def packer_variables(self, cfg: Resolved, ctx: BuildContext) -> dict[str, Any]:
        """Build-time values for the template (written to a var file outside the fingerprint)."""

    def packer_environment(self, cfg: Resolved) -> dict[str, str]:
        return {}

    @abc.abstractmethod
    def register_candidate(self, cfg: Resolved, ctx: BuildContext, manifest: dict[str, Any]) -> Image:
        """Take Packer's result into the registry, tagged Status=candidate with provenance."""

    # --- verify ---
    @abc.abstractmethod
    def boot_test_instance(
        self, cfg: Resolved, image: Image, key: KeyPair, work_dir: Path, progress: Progress
    ) -> contextlib.AbstractContextManager[TestInstance]:
        """Boot a fresh instance of image; tear everything down on exit, whatever happened."""

    def outside_checks(self, cfg: Resolved, image: Image, instance: TestInstance) -> list[dict[str, Any]]:
        """Report rows for controls checked from outside the instance (the AWS API, say)."""
        return []

    # --- registry ---
    @abc.abstractmethod
    def get_image(self, image_id: str) -> Image: ...

    @abc.abstractmethod
    def list_images(self, os_name: Optional[str] = None, status: Optional[str] = None) -> list[Image]: ...

    @abc.abstractmethod
    def set_tags(self, image_id: str, tags: dict[str, Optional[str]]) -> Image:
        """Change tags, then read them back; raise if the change did not land."""

    # --- lifecycle (golden_ami/lifecycle.py: invoke prune; golden_ami/reaper.py: invoke reap) ---
    @abc.abstractmethod
    def prune_plans(self, os_names: list[str], refused: Mapping[str, Mapping[str, list[str]]],
                    now: Optional[datetime] = None) -> list[PrunePlan]:
        """What to do with the older approved images of each OS (only reads). refused[os]: the
        images tagged approved whose signed approval does not verify (never counted)."""

    @abc.abstractmethod
    def reap_plan(self, older_than_hours: float, candidates_older_than_hours: float,
                  now: Optional[datetime] = None) -> ReapPlan:
        """What crashed or killed runs left behind (only reads)."""

    # --- invoke doctor ---
    def find_instance(self, cfg: Resolved, instance_id: str) -> RunningInstance:
        """A running instance by its id (an application's server, not one the pipeline booted)."""
        raise UserError(f"the {self.name} target cannot find instances by id: audit it with --host")

    def doctor_findings(self, probe_kvm: bool = True) -> list[Finding]:
        """What this machine has and lacks for this target (tools, accelerators, credentials)."""
        return []

    # --- approval statements (golden_ami/attest.py) ---
    signs_approvals = False  # True: an image counts as approved only with a statement that verifies

    def approval_signer(self) -> Any:
        """The securesystemslib Signer approvals are signed with; None: this target does not
        sign approvals (yet)."""
        return None

    def approval_keys(self) -> list[Any]:
        """The public keys (securesystemslib Keys) an approval statement must verify against."""
        return []

    def subject_digest(self, image: Image) -> dict[str, str]:
        """The digest that names the image's content in its statement."""
        return {}

    def save_statement(self, image_id: str, envelope: Optional[dict[str, Any]]) -> None:
        """Keep an image's signed approval statement beside it (None: remove it)."""
        if envelope is not None:
            raise NotImplementedError(f"the {self.name} target does not keep approval statements")

    def load_statement(self, image_id: str) -> Optional[dict[str, Any]]:
        return None

    def statement_problems(self, image: Image, envelope: dict[str, Any]) -> list[str]:
        """What the target itself sees wrong between an image and its statement (aws: the tags
        that name the statement)."""
        return []

    def publish(self, cfg: Resolved, image: Image, progress: Progress) -> dict[str, str]:
        """After approval: make the image findable (aws: the SSM pointer). Returns what it did."""
        return {}
