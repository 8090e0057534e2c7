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
# The hardening sections' shared shell library (hardening/lib/golden-ami.sh.j2), rendered once
# beside the other files/ and sourced by every script from where Packer uploads files/.
SHELL_LIBRARY = "files/lib/golden-ami.sh"

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


class _Under:
    """A name under the directory an instance holds: `record = _Under(BUILD_RECORD)` makes
    BuildDir(d).record the path d/build.json."""

    def __init__(self, *parts: str | Path):
        self.parts = parts

    def __get__(self, holder, owner=None):
        return self if holder is None else holder.path.joinpath(*self.parts)


@dataclass(frozen=True)
class BuildDir:
    path: Path

    controls = _Under(CONTROLS_FILE)
    variables = _Under(VARIABLES_FILE)
    record = _Under(BUILD_RECORD)
    packer_manifest = _Under(PACKER_MANIFEST)
    logs = _Under("logs")
    packer_log = _Under("logs", "packer.log")
    packer_init_log = _Under("logs", "packer-init.log")
    build_console_log = _Under("logs", "build-console.log")
    runtime = _Under("runtime")
    verify = _Under("verify")
    report = _Under("verify", REPORT_FILE)


@dataclass(frozen=True)
class StateDir:
    path: Path

    builds = _Under("builds")
    store = _Under("store")
    bases = _Under("base")
    renders = _Under("renders")
    runs = _Under("runs")
    audits = _Under("audits")
    signing_key = _Under(SIGNING_KEY)
    accelerator_cache = _Under("accelerator.json")

    def build(self, build_id: str) -> BuildDir:
        return BuildDir(self.path / "builds" / build_id)

    def base(self, os_name: str, disk_layout: str = "single") -> Path:
        """The cached base disk of one OS and disk layout (the single layout keeps its old place)."""
        return self.path / "base" / (os_name if disk_layout == "single" else f"{os_name}.{disk_layout}")
