"""Where the pipeline's own files go: the state dir and each build directory, every name once.

    <state dir>/                 GOLDEN_AMI_STATE_DIR, else $XDG_DATA_HOME/golden-ami
      base/<os>/                 cached base images of the local target
      builds/<build id>/         one build (BuildDir, below)
      store/<image id>/          the local target's images
      renders/                   what `invoke render` writes when told no other place
      runs/<run id>/             rebuild runs: their summaries; build-<os>-<time>.log
      audits/<host>-<time>/      `invoke audit` reports
      signing/ed25519.pem        the local target's approval signing key
      accelerator.json           the QEMU accelerator probed on this machine

    <build dir>/
      template.pkr.hcl, scripts/, files/, controls.json, render.json    rendered, fingerprinted
      variables.pkrvars.json     build-time values (not fingerprinted)
      build.json                 step timings and sizes (bench/ reads these)
      manifest.json              Packer's manifest of what it built
      logs/                      packer.log, packer-init.log, build-console.log
      runtime/                   Packer's runtime and temporary files
      verify/                    the verification: report.json, report.md, report.html, ...

Nothing here touches the disk: these are names. Imports nothing from the package, so any
module may use it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# --- a build directory's files ------------------------------------------------------------------
TEMPLATE_FILE = "template.pkr.hcl"
VARIABLES_FILE = "variables.pkrvars.json"  # build-time values, kept out of the fingerprint
CONTROLS_FILE = "controls.json"
RENDER_MANIFEST = "render.json"
BUILD_RECORD = "build.json"  # step timings and sizes; bench/ reads these
PACKER_MANIFEST = "manifest.json"

# --- a verification's files (in a build's verify/, or an audit's directory) ---------------------
REPORT_FILE = "report.json"
MARKDOWN_FILE = "report.md"
HTML_FILE = "report.html"  # the same report as one self-contained page (no external assets)
JUNIT_FILE = "junit.xml"
FACTS_FILE = "facts.json"  # the raw snapshot the verdicts were made on (written by verify/)
SBOM_FILE = "sbom.cdx.json"  # CycloneDX, from that snapshot's package list (written by verify/)
KNOWN_HOSTS_FILE = "known_hosts"

# --- the state dir's own files ------------------------------------------------------------------
SIGNING_KEY = Path("signing") / "ed25519.pem"

# --- a rebuild run's files ------------------------------------------------------------------
SUMMARY_JSON = "rebuild-summary.json"
SUMMARY_MARKDOWN = "rebuild-summary.md"


@dataclass(frozen=True)
class BuildDir:
    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def controls(self) -> Path:
        return self.path / CONTROLS_FILE

    @property
    def variables(self) -> Path:
        return self.path / VARIABLES_FILE

    @property
    def record(self) -> Path:
        return self.path / BUILD_RECORD

    @property
    def packer_manifest(self) -> Path:
        return self.path / PACKER_MANIFEST

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def packer_log(self) -> Path:
        return self.logs / "packer.log"

    @property
    def packer_init_log(self) -> Path:
        return self.logs / "packer-init.log"

    @property
    def build_console_log(self) -> Path:
        return self.logs / "build-console.log"

    @property
    def runtime(self) -> Path:
        return self.path / "runtime"

    @property
    def verify(self) -> Path:
        return self.path / "verify"

    @property
    def report(self) -> Path:
        return self.verify / REPORT_FILE


@dataclass(frozen=True)
class StateDir:
    path: Path

    @property
    def builds(self) -> Path:
        return self.path / "builds"

    def build(self, build_id: str) -> BuildDir:
        return BuildDir(self.builds / build_id)

    @property
    def store(self) -> Path:
        return self.path / "store"

    def base(self, os_name: str) -> Path:
        return self.path / "base" / os_name

    @property
    def bases(self) -> Path:
        return self.path / "base"

    @property
    def renders(self) -> Path:
        return self.path / "renders"

    @property
    def runs(self) -> Path:
        return self.path / "runs"

    @property
    def audits(self) -> Path:
        return self.path / "audits"

    @property
    def signing_key(self) -> Path:
        return self.path / SIGNING_KEY

    @property
    def accelerator_cache(self) -> Path:
        return self.path / "accelerator.json"
