"""One id everywhere: catalogue <-> verify checks <-> rendered remediation."""
import ast
import re

import pytest

from golden_ami import catalogue, config, paths
from golden_ami.targets.aws import checks as aws_checks
from golden_ami.errors import UserError


def _verify_markers() -> dict[str, list[str]]:
    """control id -> the verify/ test functions marked with it (read from source, not imported):
    marked as a whole, or one parameter each (pytest.param(..., marks=pytest.mark.control(id)))."""
    found: dict[str, list[str]] = {}
    for path in sorted(paths.VERIFY_DIR.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                for call in (c for deco in node.decorator_list for c in ast.walk(deco)):
                    if (isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "control"
                            and call.args and isinstance(call.args[0], ast.Constant)):
                        found.setdefault(call.args[0].value, []).append(f"{path.name}::{node.name}")
    return found


def test_every_control_has_a_check_and_every_check_a_control():
    specs = catalogue.load_catalogue()
    suite_ids = {spec.id for spec in specs if spec.check == "suite"}
    api_ids = {spec.id for spec in specs if spec.check == "aws-api"}
    markers = _verify_markers()
    assert suite_ids - set(markers) == set(), "controls without a verify check"
    assert set(markers) - suite_ids == set(), "verify checks naming controls that are not suite controls in the catalogue"
    assert api_ids == set(aws_checks.TITLES), "aws-api controls and golden_ami/targets/aws/checks.py disagree"


def test_every_control_names_an_existing_remediation_section():
    for spec in catalogue.load_catalogue():
        if spec.remediation == "00-packer-template":
            assert spec.applies.targets, f"{spec.id}: template-remediated controls name their target"
            continue
        assert (paths.HARDENING_DIR / f"{spec.remediation}.sh.j2").is_file(), spec.id


def test_local_agents_are_not_applicable_with_the_datas_reason(state_dir):
    chosen = catalogue.controls_for(config.resolve("debian12", "local")).by_id()
    ssm = chosen["GA-AGENT-SSM"]
    assert not ssm.applicable
    assert "metadata" in ssm.reason
    aws = catalogue.controls_for(config.resolve("debian12", "aws")).by_id()
    assert aws["GA-AGENT-SSM"].applicable and aws["GA-AGENT-CWAGENT"].applicable


def test_param_overrides_are_checked(state_dir, tmp_path):
    user = tmp_path / "c.yaml"
    user.write_text("controls:\n  '4.2.16':\n    params:\n      max_auth_tries: 3\n")
    chosen = catalogue.controls_for(config.resolve("debian12", "local", str(user)))
    assert chosen.params("4.2.16")["max_auth_tries"] == 3
    for bad, message in [
        ("controls:\n  '4.2.16':\n    params:\n      max_auth_tries: 9\n", "at most 4"),
        ("controls:\n  'GA-SSH-CIPHERS':\n    params:\n      ciphers: ['aes128-ctr;reboot']\n", "not allowed"),
        ("controls:\n  '9.9.9':\n    enabled: false\n", "unknown control"),
        ("controls:\n  '4.2.16':\n    params:\n      tries: 3\n", "not a parameter"),
    ]:
        user.write_text(bad)
        with pytest.raises(UserError, match=message):
            catalogue.controls_for(config.resolve("debian12", "local", str(user)))


def test_mount_points_and_options_are_pinned_to_the_recommendations_own(state_dir, tmp_path):
    """A config cannot point a filesystem check at another mount point, nor swap its option for a
    weaker one (it would pass while the recommendation is not met)."""
    user = tmp_path / "c.yaml"
    for control_id, name, value in (("1.1.4.2", "option", "exec"), ("1.1.4.1", "mount_point", "/"),
                                    ("1.1.7.2", "mount_point", "/srv"), ("1.1.2.3", "option", "dev"),
                                    ("1.1.8.4", "option", "suid")):
        user.write_text(f"disk_layout: cis\ncontrols:\n  '{control_id}':\n    params:\n      {name}: {value}\n")
        with pytest.raises(UserError, match=f"{name} is not in the form this control needs"):
            catalogue.controls_for(config.resolve("debian12", "local", str(user)))
    chosen = catalogue.controls_for(config.resolve("debian12", "local", overrides={"disk_layout": "cis"}))
    assert chosen.params("1.1.4.2") == {"mount_point": "/var/tmp", "option": "noexec"}


def test_the_boot_password_is_a_grub_hash_or_locked_and_a_bad_value_is_never_echoed(state_dir, tmp_path):
    grub_hash = "grub.pbkdf2.sha512.10000." + "A1" * 64 + "." + "b2" * 64  # 282 characters, as the tool writes
    chosen = catalogue.controls_for(config.resolve("debian12", "local")).by_id()["GA-BOOT-PASSWORD"]
    assert chosen.applicable and chosen.params["password_hash"] == "locked"
    user = tmp_path / "c.yaml"
    user.write_text(f"controls:\n  GA-BOOT-PASSWORD:\n    params:\n      password_hash: {grub_hash}\n")
    assert catalogue.controls_for(config.resolve("debian12", "local", str(user))).params("GA-BOOT-PASSWORD")[
        "password_hash"] == grub_hash
    for bad in ("correct-horse-battery", "s3cret pass!", grub_hash.replace(".10000.", ".1000."),
                grub_hash.replace("sha512", "sha256"), grub_hash + ";reboot"):
        user.write_text(f"controls:\n  GA-BOOT-PASSWORD:\n    params:\n      password_hash: '{bad}'\n")
        with pytest.raises(UserError, match="password_hash is not in the form this control needs") as raised:
            catalogue.controls_for(config.resolve("debian12", "local", str(user)))
        assert bad not in str(raised.value)
    # The hardening makes the hash file's directory root-only: never a shared one such as /tmp.
    user.write_text("controls:\n  GA-BOOT-PASSWORD:\n    params:\n      hash_file: /tmp/grub.pbkdf2\n")
    with pytest.raises(UserError, match="hash_file is not in the form"):
        catalogue.controls_for(config.resolve("debian12", "local", str(user)))
    assert not catalogue.controls_for(config.resolve("al2023", "aws")).by_id()["GA-BOOT-PASSWORD"].applicable


def test_a_per_target_value_applies_to_its_target_only_and_the_config_still_decides(state_dir, tmp_path, monkeypatch):
    real = catalogue.load_catalogue()
    ipv6 = next(spec for spec in real if spec.id == "3.1.1")
    decided = ipv6.model_copy(update={"params_by_target": {"aws": {"ipv6": "disabled"}}})
    monkeypatch.setattr(catalogue, "_shared_catalogue", lambda: [decided if s.id == "3.1.1" else s for s in real])
    assert catalogue.controls_for(config.resolve("debian12", "aws")).params("3.1.1")["ipv6"] == "disabled"
    assert catalogue.controls_for(config.resolve("debian12", "local")).params("3.1.1")["ipv6"] == "enabled"
    user = tmp_path / "c.yaml"
    user.write_text("controls:\n  '3.1.1':\n    params:\n      ipv6: enabled\n")
    assert catalogue.controls_for(config.resolve("debian12", "aws", str(user))).params("3.1.1")["ipv6"] == "enabled"
    wrong = ipv6.model_copy(update={"params_by_target": {"local": {"ipv4": "disabled"}}})
    monkeypatch.setattr(catalogue, "_shared_catalogue", lambda: [wrong if s.id == "3.1.1" else s for s in real])
    with pytest.raises(UserError, match="params_by_target.local.ipv4 is not one of its params"):
        catalogue.controls_for(config.resolve("debian12", "local"))


def test_a_control_is_switched_off_only_by_an_exception_that_says_why_and_until_when(state_dir, tmp_path):
    user = tmp_path / "c.yaml"
    user.write_text("controls:\n  '4.2.12':\n    enabled: false\n")
    with pytest.raises(UserError, match=r"controls.4.2.12: enabled: false switches off .* exception: \{justification"):
        catalogue.controls_for(config.resolve("debian12", "local", str(user)))
    user.write_text("controls:\n  '4.2.12':\n    enabled: false\n    exception:\n"
                    "      justification: the bastion's jump hosts need it\n      expires: 2020-01-31\n")
    with pytest.raises(UserError, match="controls.4.2.12.exception expired on 2020-01-31"):
        catalogue.controls_for(config.resolve("debian12", "local", str(user)))
    user.write_text("controls:\n  '4.2.12':\n    enabled: false\n    exception:\n"
                    "      justification: the bastion's jump hosts need it\n      expires: 2999-01-31\n")
    chosen = catalogue.controls_for(config.resolve("debian12", "local", str(user)))
    assert "4.2.12" not in chosen.by_id()
    assert chosen.as_dict()["exceptions"] == [{"control": "4.2.12", "kind": "disabled", "expires": "2999-01-31",
                                               "justification": "the bastion's jump hosts need it"}]
    # Switching off what the profile does not have in force (1.1.1.3, cramfs, is CIS only)
    # weakens nothing and needs no exception.
    user.write_text("controls:\n  '1.1.1.3':\n    enabled: false\n")
    baseline = config.resolve("debian12", "local", str(user), overrides={"profile": "baseline"})
    assert catalogue.controls_for(baseline).exceptions == ()


EXCEPTION = "    exception: {justification: the legacy fleet still needs this, expires: 2999-01-31}\n"


@pytest.mark.parametrize("control, param, value, bound", [
    ("6.1.6", "mode", "'0777'", "grants bits 0137 beyond the benchmark's 0640"),
    ("6.1.6", "groups", "[shadow, root, users]", "adds ['users']"),
    ("4.6.5", "umask", "'000'", "masks fewer bits than the benchmark's 027"),
    ("GA-SSH-CIPHERS", "ciphers", "[aes256-ctr, 3des-cbc]", "adds ['3des-cbc']"),
    ("GA-FW-INBOUND", "allowed_tcp_ports", "[22, 23, 3389]", "adds [23, 3389]"),
    ("1.3.1", "not_watched", "[/etc/ssh/ssh_host_, /boot/grub/grubenv, /etc/sudoers.d]", "adds ['/etc/sudoers.d']"),
    ("1.3.1", "instance_files", "[/etc/machine-id, /etc/sudoers]", "adds ['/etc/sudoers']"),
    ("1.3.1", "watch_paths", "[/boot, /etc]", "leaves out ['/usr/bin'"),
    ("1.3.3", "attributes", "[p, u, g, sha256]", "leaves out ['i'"),
    ("GA-MAC-ALL-ENFORCING", "unconfined_mode_profiles_allowed", "true", "allows what the benchmark's value does not"),
    ("1.6.1.4", "unconfined_mode_profiles_allowed", "true", "allows what the benchmark's value does not"),
])
def test_a_param_weaker_than_the_benchmark_needs_an_exception(state_dir, tmp_path, control, param, value, bound):
    user = tmp_path / "c.yaml"
    user.write_text(f"controls:\n  '{control}':\n    params:\n      {param}: {value}\n")
    with pytest.raises(UserError) as refused:
        catalogue.controls_for(config.resolve("debian12", "local", str(user)))
    assert f"controls.{control}.params.{param}" in str(refused.value) and bound in str(refused.value)
    assert "exception: {justification" in str(refused.value)
    user.write_text(user.read_text() + EXCEPTION)
    chosen = catalogue.controls_for(config.resolve("debian12", "local", str(user)))
    [exception] = chosen.exceptions
    assert exception["kind"] == "weakened" and exception["control"] == control and exception["param"] == param


@pytest.mark.parametrize("control, param, value, bound", [
    ("1.6.1.6", "unconfined_programs_allowed", "[/usr/bin/amazon-ssm-agent, /opt/app/bin/server]",
     "adds ['/opt/app/bin/server']"),
    ("1.6.1.6", "domains", "[unconfined_service_t]", "leaves out ['initrc_t']"),
    ("1.6.1.5", "relabel_fstypes", "[xfs]", "leaves out ['ext4', 'btrfs']"),
    ("GA-MODULE-FS-UNUSED", "modules_kept", "[ext4, xfs, vfat, cifs]", "adds ['cifs']"),
])
def test_the_reviewed_lists_may_only_get_stricter_without_an_exception(state_dir, tmp_path, control, param, value,
                                                                        bound):
    # Controls of one OS each: AL2023's SELinux, Ubuntu 22.04's unused filesystem modules.
    os_name = "ubuntu2204" if control == "GA-MODULE-FS-UNUSED" else "al2023"
    user = tmp_path / "c.yaml"
    user.write_text(f"controls:\n  '{control}':\n    params:\n      {param}: {value}\n")
    with pytest.raises(UserError, match=re.escape(bound)):
        catalogue.controls_for(config.resolve(os_name, "local", str(user)))
    user.write_text(user.read_text() + EXCEPTION)
    [exception] = catalogue.controls_for(config.resolve(os_name, "local", str(user))).exceptions
    assert (exception["control"], exception["param"]) == (control, param)


def test_a_shorter_reviewed_list_of_unconfined_programs_needs_no_exception(state_dir, tmp_path):
    user = tmp_path / "c.yaml"
    user.write_text("controls:\n  '1.6.1.6':\n    params:\n      unconfined_programs_allowed: [/usr/bin/amazon-ssm-agent]\n")
    assert catalogue.controls_for(config.resolve("al2023", "local", str(user))).exceptions == ()


@pytest.mark.parametrize("control, param, value", [
    ("6.1.6", "mode", "'0600'"), ("4.6.5", "umask", "'077'"), ("GA-SSH-CIPHERS", "ciphers", "[aes256-ctr]"),
    ("GA-FW-INBOUND", "allowed_tcp_ports", "[22]"),
    ("1.3.1", "instance_files", "[/etc/machine-id]"),
    ("1.3.1", "watch_paths", "[/boot, /etc, /usr/bin, /usr/sbin, /usr/lib, /usr/local/bin, /usr/local/sbin, /opt]"),
    ("GA-MAC-ALL-ENFORCING", "unconfined_mode_profiles_allowed", "false"),
])
def test_a_param_as_strict_or_stricter_needs_none(state_dir, tmp_path, control, param, value):
    user = tmp_path / "c.yaml"
    user.write_text(f"controls:\n  '{control}':\n    params:\n      {param}: {value}\n")
    assert catalogue.controls_for(config.resolve("debian12", "local", str(user))).exceptions == ()


def test_benchmark_numbers_per_os(state_dir):
    debian = catalogue.controls_for(config.resolve("debian12", "local")).by_id()
    al2023 = catalogue.controls_for(config.resolve("al2023", "local")).by_id()
    assert debian["4.2.7"].os_id == "5.1.20"
    assert al2023["4.2.7"].os_id == "4.2.7"
    assert al2023["GA-HYG-HISTORY"].os_id == ""


def test_every_assert_in_verify_says_what_is_wrong():
    """The report row shows the assertion's message; verify/ runs with --assert=plain, so an
    assert without a message would leave the row saying nothing."""
    bare = []
    for path in sorted(paths.VERIFY_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assert) and node.msg is None:
                bare.append(f"{path.name}:{node.lineno}")
    assert not bare, f"asserts without a message: {', '.join(bare)}"
