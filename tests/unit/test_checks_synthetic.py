"""The OS-specific branches of the checks, proven both ways against hand-written snapshots.

No Amazon Linux 2023 or Ubuntu VM can run here, so their branches (SELinux, grubby, authselect,
dnf, the crypto policy; AppArmor, apport; Ubuntu 22.04's unused filesystem modules) are exercised
against tests/data/facts/*-synthetic.json:
partial snapshots (schema 1, the collector's shapes) holding exactly the facts those branches
read, with the values of a hardened image of that OS. Each value's source is named beside it, in
the snapshot's top-level `_sources` (the loader ignores unknown top-level keys).

For each OS the real verify suite runs offline against the snapshot with a controls.json cut
down to the OS-specific controls (from the catalogue, as a build makes it):
  - untouched, every one of them passes;
  - for each control, the smallest non-compliant change turns exactly that control red, with a
    message that names the problem;
  - a command the check needs that failed (or a fact that was never recorded) fails the check
    with that reason - never a pass.
A compliant variant a check misreads is marked xfail(strict=True) with the defect in its reason.

Speed: the untouched snapshots run through `verify_runner.suite_argv` in subprocesses, exactly
as a build runs the suite; the many small variants run as separate pytest sessions inside a few
worker subprocesses (each session its own snapshot, controls.json and report: the suite keeps no
state between sessions, and each worker re-judges the untouched snapshots last to prove it).
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest

from golden_ami import catalogue, config
from tests.unit.offline_suite import FACTS, judge, judge_many

# The controls whose checks take an OS-specific branch, per OS (all applicable, checked by the suite).
CONTROL_IDS = {
    "al2023": ("1.2.2", "1.4.1", "1.6.1.1", "1.6.1.2", "1.6.1.3", "1.6.1.4", "1.6.1.5", "1.6.1.6", "1.6.1.7", "1.6.1.8",
               "1.8", "1.9",
               "4.2.14", "4.4.2", "4.5.1", "4.5.2", "4.5.3", "4.5.4", "GA-PAM-UNIX", "5.2.1.2", "5.2.1.3", "5.2.3.14",
               "GA-PATCH-AUTO", "GA-PATCH-KERNEL"),
    "ubuntu2404": ("1.6.1.1", "1.6.1.2", "1.6.1.4", "GA-MAC-ALL-ENFORCING", "5.2.3.14", "GA-PROC-APPORT"),
    "ubuntu2204": ("GA-MODULE-FS-UNUSED",),
}

# Values of the synthetic snapshots the variants refer to.
AL_KERNEL = "6.1.119-129.201.amzn2023.x86_64"
AL_NEWER_KERNEL = "6.1.124-134.200.amzn2023.x86_64"
UBUNTU_KERNEL = "6.8.0-49-generic"
JAMMY_KERNEL = "6.8.0-1021-aws"

# --- editing a snapshot --------------------------------------------------------------------
def _files(snapshot: dict) -> dict:
    return snapshot["collected"]["files"]


def _edit(snapshot: dict, path: str, old: str, new: str, occurrence: int = 1) -> None:
    """Replace the occurrence-th `old` in a collected file's content (it must be there)."""
    entry = _files(snapshot)[path]
    entry["content"] = _replace_nth(entry["content"], old, new, occurrence, path)
    entry["stat"]["size"] = len(entry["content"].encode())


def _replace_nth(text: str, old: str, new: str, occurrence: int, where: str) -> str:
    start = -1
    for _ in range(occurrence):
        start = text.find(old, start + 1)
        assert start >= 0, f"{where} has no occurrence {occurrence} of {old!r}: the variant no longer applies"
    return text[:start] + new + text[start + len(old):]


def _command(snapshot: dict, name: str) -> dict:
    return snapshot["collected"]["commands"][name]


def _edit_output(snapshot: dict, name: str, old: str, new: str, occurrence: int = 1) -> None:
    command = _command(snapshot, name)
    command["stdout"] = _replace_nth(command["stdout"], old, new, occurrence, f"`{name}` output")


def _fail_command(snapshot: dict, name: str, rc: Optional[int], stdout: str = "", stderr: str = "",
                  error: str = "") -> None:
    """What the collector records for a command that failed (rc) or did not run (rc None, error)."""
    command = _command(snapshot, name)
    command.update(rc=rc, stdout=stdout, stderr=stderr)
    if rc is None:
        command.pop("seconds", None)  # the collector times only what ran
    if error:
        command["error"] = error


def _add_package(snapshot: dict, line: str) -> None:
    _command(snapshot, "packages")["stdout"] += line + "\n"


def _drop_package(snapshot: dict, name: str) -> None:
    command = _command(snapshot, "packages")
    lines = command["stdout"].splitlines(keepends=True)
    kept = [line for line in lines if line.split("\t")[0] != name]
    assert len(kept) < len(lines), f"package {name} is not in the snapshot: the variant no longer applies"
    command["stdout"] = "".join(kept)


def _set_unit(snapshot: dict, unit: str, **properties: str) -> None:
    """Change properties (LoadState=..., ActiveState=...) of a unit's `systemctl show` block."""
    show = snapshot["collected"]["units"]["show"]
    blocks = show["stdout"].split("\n\n")
    index = next(i for i, block in enumerate(blocks) if block.startswith(f"Id={unit}\n"))
    for key, value in properties.items():
        blocks[index] = re.sub(rf"^{key}=.*$", f"{key}={value}", blocks[index], count=1, flags=re.M)
    show["stdout"] = "\n\n".join(blocks)


def _grubby_args(snapshot: dict, index: int, old: str, new: str) -> None:
    """Edit the args= of grubby's entry `index` (and its Boot Loader Spec file, as grubby would)."""
    command = _command(snapshot, "grubby_info")
    entries = command["stdout"].split("index=")
    entry = next(e for e in entries if e.startswith(f"{index}\n"))
    kernel = re.search(r'^kernel="/boot/vmlinuz-(.*)"$', entry, re.M).group(1)
    command["stdout"] = command["stdout"].replace(entry, _replace_nth(entry, old, new, 1, f"grubby entry {index}"))
    path = next(p for p in _files(snapshot) if p.startswith("/boot/loader/entries/") and p.endswith(f"-{kernel}.conf"))
    _edit(snapshot, path, old, new)


# --- the cases -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    os: str
    name: str
    change: Callable[[dict], None]  # applied to a copy of the synthetic snapshot
    fails: dict = field(default_factory=dict)  # control id -> regex its failure message must match
    controls: Optional[Callable[[dict], None]] = None  # applied to a copy of the controls document
    xfail: str = ""  # a defect of the check that makes this case come out wrong

    @property
    def key(self) -> str:
        return f"{self.os}:{self.name}"


def _al(name, change, fails=None, **kw) -> Case:
    return Case("al2023", name, change, fails or {}, **kw)


def _ub(name, change, fails=None, **kw) -> Case:
    return Case("ubuntu2404", name, change, fails or {}, **kw)


def _jammy(name, change, fails=None, **kw) -> Case:
    return Case("ubuntu2204", name, change, fails or {}, **kw)


def _drop_file(path: str) -> Callable[[dict], None]:
    return lambda s: _files(s).pop(path)


def _set_mode(path: str, mode: str) -> Callable[[dict], None]:
    return lambda s: _files(s)[path]["stat"].update(mode=mode)


def _set_dynamic(name: str, **fields) -> Callable[[dict], None]:
    return lambda s: s["dynamic"][name].update(fields)


def _unconfined_process(line: str, confined_before: int = 2) -> Callable[[dict], None]:
    """aa-status listing one more process under 'unconfined but have a profile defined'."""
    def change(s):
        total = confined_before + 1
        _edit_output(s, "aa_status", f"{confined_before} processes have profiles defined.",
                     f"{total} processes have profiles defined.")
        _edit_output(s, "aa_status", "0 processes are unconfined but have a profile defined.\n",
                     f"1 processes are unconfined but have a profile defined.\n{line}\n")
    return change


def _chronyd_unconfined(s: dict) -> None:
    # chronyd started before its profile was loaded: aa-status names it by its executable only.
    _edit_output(s, "aa_status", "2 processes are in enforce mode.\n   /usr/sbin/chronyd (702) \n",
                 "1 processes are in enforce mode.\n")
    _edit_output(s, "aa_status", "0 processes are unconfined but have a profile defined.\n",
                 "1 processes are unconfined but have a profile defined.\n   /usr/sbin/chronyd (702) \n")


def _show_failed(snapshot: dict) -> None:
    # A D-Bus timeout the collector tried three times (collector.run_systemctl).
    snapshot["collected"]["units"]["show"].update(rc=1, stdout="", attempt=3,
                                                  stderr="Failed to get properties: Connection timed out\n")


def _edit_params(control_id: str, change: Callable[[dict], None]) -> Callable[[dict], None]:
    """A controls-document edit: change(params) on the entry of control_id."""
    def edit(document: dict) -> None:
        change(next(c for c in document["controls"] if c["id"] == control_id)["params"])
    return edit


def _drop_kept(module: str) -> Callable[[dict], None]:
    return _edit_params("GA-MODULE-FS-UNUSED", lambda params: params["modules_kept"].remove(module))


def _forbid_unconfined_mode_profiles(control_id: str) -> Callable[[dict], None]:
    return _edit_params(control_id, lambda params: params.update(unconfined_mode_profiles_allowed=False))


def _profile_mode(name: str, old: str, new: str) -> Callable[[dict], None]:
    path = "/sys/kernel/security/apparmor/profiles"
    return lambda s: _edit(s, path, f"\n{name} ({old})\n", f"\n{name} ({new})\n")


def _add_process(exe: str, selinux_type: str, pid: int = 1500) -> Callable[[dict], None]:
    label = f"system_u:system_r:{selinux_type}:s0"
    return lambda s: s["collected"]["process_labels"].append({"pid": pid, "exe": exe, "label": label})


AVC_DENIED = ("type=AVC msg=audit(12/01/2026 09:14:02.311:212) : avc:  denied  { read } for  pid=702 comm=chronyd "
              "name=golden-ami.sources dev=\"nvme0n1p1\" ino=25176 scontext=system_u:system_r:chronyd_t:s0 "
              "tcontext=system_u:object_r:user_tmp_t:s0 tclass=file permissive=0\n")


def _loadable(module: str) -> Callable[[dict], None]:
    """modprobe would load the module: its dry run names its file, not /bin/false."""
    return lambda s: _command(s, f"modprobe_dry_run:{module}").update(
        stdout=f"insmod /lib/modules/{JAMMY_KERNEL}/kernel/fs/{module}/{module}.ko.zst \n")


def _new_filesystem_module(s: dict) -> None:
    # A kernel update brings zonefs: on disk, loadable, in no drop-in.
    s["collected"]["filesystem_modules"]["filesystems"].append("zonefs")
    s["collected"]["commands"]["modprobe_dry_run:zonefs"] = {
        "argv": ["modprobe", "-n", "-v", "--", "zonefs"], "rc": 0, "seconds": 0.01, "stderr": "",
        "stdout": f"insmod /lib/modules/{JAMMY_KERNEL}/kernel/fs/zonefs/zonefs.ko.zst \n"}


SYSTEM_AUTH, PASSWORD_AUTH = "/etc/pam.d/system-auth", "/etc/pam.d/password-auth"
GRUBBY_DID_NOT_RUN = r"`grubby --info=ALL` did not run: timed out after 180 s"
RPM_FAILED = r"`rpm -qa --qf .*` exited 1: error: cannot open Packages database in /var/lib/rpm"
DPKG_FAILED = r"`dpkg-query -W -f .*` exited 2: dpkg-query: error: failed to open package info file"
SHOW_FAILED = r"`systemctl show` failed \(exit 1\): Failed to get properties: Connection timed out"

# The smallest non-compliant change per control: exactly that control fails, naming the problem.
MUTATIONS = [
    _al("1.2.2-repo-gpgcheck-0", lambda s: _edit(s, "/etc/yum.repos.d/amazonlinux.repo", "type=rpm\ngpgcheck=1",
                                                   "type=rpm\ngpgcheck=0"),
        {"1.2.2": r"signature checks off: /etc/yum\.repos\.d/amazonlinux\.repo:gpgcheck=0"}),
    _al("1.2.2-dnf-conf-gpgcheck-false", lambda s: _edit(s, "/etc/dnf/dnf.conf", "gpgcheck=True", "gpgcheck=False"),
        {"1.2.2": r"/etc/dnf/dnf\.conf \[main\] gpgcheck is 'False', expected 1"}),
    _al("1.4.1-grub-cfg-world-readable", _set_mode("/boot/grub2/grub.cfg", "0644"),
        {"1.4.1": r"not restricted to root: /boot/grub2/grub\.cfg root:root 0644"}),
    _al("1.6.1.1-libselinux-missing", lambda s: _drop_package(s, "libselinux"),
        {"1.6.1.1": r"selinux packages not installed: libselinux"}),
    _al("1.6.1.2-boot-entry-selinux-0", lambda s: _grubby_args(s, 0, "selinux=1", "selinux=0"),
        {"1.6.1.2": rf"turns SELinux off: .*{re.escape(AL_KERNEL)}\.conf:options .*selinux=0.*"
                    r"; grubby --info=ALL: args=.*selinux=0"}),
    _al("1.6.1.3-policy-mls", lambda s: _edit(s, "/etc/selinux/config", "\nSELINUXTYPE=targeted\n", "\nSELINUXTYPE=mls\n"),
        {"1.6.1.3": r"SELINUXTYPE is 'mls', expected 'targeted'"}),
    _al("1.6.1.4-selinux-disabled", lambda s: _edit(s, "/etc/selinux/config", "\nSELINUX=enforcing\n",
                                                      "\nSELINUX=disabled\n"),
        {"1.6.1.4": r"SELINUX is 'disabled', expected enforcing or permissive",
         "1.6.1.5": r"SELINUX is 'disabled', expected 'enforcing'"}),
    _al("1.6.1.5-configured-permissive", lambda s: _edit(s, "/etc/selinux/config", "\nSELINUX=enforcing\n",
                                                           "\nSELINUX=permissive\n"),
        {"1.6.1.5": r"/etc/selinux/config SELINUX is 'permissive', expected 'enforcing'"}),
    _al("1.6.1.5-running-permissive", lambda s: _files(s)["/sys/fs/selinux/enforce"].update(content="0"),
        {"1.6.1.5": r"SELinux runs in permissive mode \(/sys/fs/selinux/enforce is '0'\), expected enforcing"}),
    _al("1.6.1.5-a-denial-since-boot", lambda s: _command(s, "selinux_denials").update(rc=0, stderr="", stdout=AVC_DENIED),
        {"1.6.1.5": r"1 SELinux denial record\(s\) audited since boot, first: type=AVC .*comm=chronyd "
                    r".*tcontext=system_u:object_r:user_tmp_t:s0"}),
    _al("1.6.1.6-an-unreviewed-unconfined-service", _add_process("/usr/local/bin/inventory-daemon", "unconfined_service_t"),
        {"1.6.1.6": r"services run unconfined and are not on the reviewed list: "
                    r"/usr/local/bin/inventory-daemon \(unconfined_service_t\)$"}),
    _al("1.6.1.6-a-service-in-initrc_t", _add_process("/usr/sbin/legacyd", "initrc_t"),
        {"1.6.1.6": r"not on the reviewed list: /usr/sbin/legacyd \(initrc_t\)"}),
    _al("1.6.1.7-setroubleshoot-installed",
        lambda s: _add_package(s, "setroubleshoot\tinstall ok installed\t0:3.3.32-1.amzn2023.0.1"),
        {"1.6.1.7": r"installed: setroubleshoot, expected not installed"}),
    _al("1.6.1.8-mcstrans-installed", lambda s: _add_package(s, "mcstrans\tinstall ok installed\t0:3.4-1.amzn2023.0.2"),
        {"1.6.1.8": r"installed: mcstrans, expected not installed"}),
    _al("1.8-security-advisory-pending",
        _set_dynamic("pending_updates:dnf",
                     stdout="ALAS2023-2024-707 Important/Sec. openssl-libs-1:3.0.8-1.amzn2023.0.14.x86_64\n"),
        {"1.8": r"security updates not installed: openssl-libs-1:3\.0\.8-1\.amzn2023\.0\.14\.x86_64"}),
    _al("1.9-legacy-policy", lambda s: _edit_output(s, "crypto_policy", "DEFAULT", "LEGACY"),
        {"1.9": r"the system-wide crypto policy is LEGACY, expected anything but LEGACY"}),
    _al("4.2.14-crypto-policy-opt-out", lambda s: _edit(s, "/etc/sysconfig/sshd", "# CRYPTO_POLICY=\n",
                                                          "# CRYPTO_POLICY=\nCRYPTO_POLICY=\n"),
        {"4.2.14": r"/etc/sysconfig/sshd overrides the system crypto policy for sshd: CRYPTO_POLICY="}),
    _al("4.4.2-without-faillock", lambda s: _edit_output(s, "authselect_current", " with-faillock", ""),
        {"4.4.2": r"authselect features are \['without-nullok'\], expected with-faillock"}),
    _al("4.5.1-minlen-8", lambda s: _edit(s, "/etc/security/pwquality.conf.d/60-golden-ami-access.conf", "minlen = 14",
                                            "minlen = 8"),
        {"4.5.1": r"pwquality minlen is 8, expected at least 14"}),
    _al("4.5.2-deny-10", lambda s: _edit(s, "/etc/security/faillock.conf", "\ndeny = 5\n", "\ndeny = 10\n"),
        {"4.5.2": r"faillock\.conf deny is 10, expected 1 to 5"}),
    _al("4.5.3-remember-3", lambda s: _edit(s, SYSTEM_AUTH, "remember=5", "remember=3"),
        {"4.5.3": r"/etc/pam\.d/system-auth remembers 3 passwords, expected at least 5"}),
    _al("4.5.4-yescrypt", lambda s: _edit(s, PASSWORD_AUTH, "pam_unix.so sha512", "pam_unix.so yescrypt"),
        {"4.5.4": r"/etc/pam\.d/password-auth: pam_unix hashes with \['yescrypt'\], expected sha512"}),
    _al("GA-PAM-UNIX-nullok", lambda s: _edit(s, SYSTEM_AUTH, "pam_unix.so\nauth", "pam_unix.so nullok\nauth"),
        {"GA-PAM-UNIX": r"/etc/pam\.d/system-auth: pam_unix auth accepts an empty password \(nullok\)"}),
    _al("4.5.3-pwhistory-without-use_authtok", lambda s: _edit(s, PASSWORD_AUTH, "remember=5 use_authtok", "remember=5"),
        {"4.5.3": r"/etc/pam\.d/password-auth: pam_pwhistory lacks use_authtok"}),
    _al("5.2.1.2-entry-without-audit", lambda s: _grubby_args(s, 1, " audit=1", ""),
        {"5.2.1.2": r"grubby --info=ALL has kernel lines without audit=1: args=.*audit_backlog_limit=8192"}),
    _al("5.2.1.3-backlog-64", lambda s: _grubby_args(s, 1, "audit_backlog_limit=8192", "audit_backlog_limit=64"),
        {"5.2.1.3": r"grubby --info=ALL has a kernel line with audit_backlog_limit=64, expected at least 8192"}),
    _al("5.2.3.14-loaded-rules-lack-a-watch",
        lambda s: _edit_output(s, "auditctl_l", "-w /usr/share/selinux -p wa -k MAC-policy\n", ""),
        {"5.2.3.14": r"audit rules not loaded \(auditctl -l\): -w /usr/share/selinux -p wa -k MAC-policy"}),
    _al("GA-PATCH-AUTO-upgrade-type-default",
        lambda s: _edit(s, "/etc/dnf/automatic.conf", "upgrade_type = security", "upgrade_type = default"),
        {"GA-PATCH-AUTO": r"not limited to security updates \(upgrade_type = default\)"}),
    _al("GA-PATCH-KERNEL-newer-kernel-not-booted", lambda s: _command(s, "kernels").update(
        stdout=_command(s, "kernels")["stdout"] + AL_NEWER_KERNEL + "\n"),
        {"GA-PATCH-KERNEL": rf"running kernel {re.escape(AL_KERNEL)}, newest installed {re.escape(AL_NEWER_KERNEL)}"}),
    _ub("1.6.1.1-apparmor-utils-missing", lambda s: _drop_package(s, "apparmor-utils"),
        {"1.6.1.1": r"apparmor packages not installed: apparmor-utils"}),
    _ub("1.6.1.2-grub-cfg-line-without-apparmor",
        lambda s: _edit(s, "/boot/grub/grub.cfg", " ro apparmor=1 security=apparmor ", " ro ", occurrence=3),
        {"1.6.1.2": rf"/boot/grub/grub\.cfg boots without apparmor=1 security=apparmor: /boot/vmlinuz-{UBUNTU_KERNEL}"}),
    _ub("1.6.1.2-booted-without-security-apparmor",
        lambda s: _edit(s, "/proc/cmdline", " security=apparmor", ""),
        {"1.6.1.2": r"the kernel command line lacks security=apparmor"}),
    _ub("1.6.1.4-process-unconfined-despite-profile", _chronyd_unconfined,
        {"1.6.1.4": r"processes run unconfined although a profile is defined for them: /usr/sbin/chronyd \(702\)"}),
    _ub("1.6.1.4-unconfined-mode-profiles-not-allowed", lambda s: None,
        {"1.6.1.4": r"AppArmor profiles neither enforcing nor complaining: 1password \(unconfined\), Discord "},
        controls=_forbid_unconfined_mode_profiles("1.6.1.4")),
    _ub("GA-MAC-ALL-ENFORCING-a-profile-in-complain-mode", _profile_mode("rsyslogd", "enforce", "complain"),
        {"GA-MAC-ALL-ENFORCING": r"AppArmor profiles not in enforce mode: rsyslogd \(complain\)$"}),
    _ub("GA-MAC-ALL-ENFORCING-unconfined-mode-profiles-not-allowed", lambda s: None,
        {"GA-MAC-ALL-ENFORCING": r"AppArmor profiles not in enforce mode: 1password \(unconfined\), Discord "},
        controls=_forbid_unconfined_mode_profiles("GA-MAC-ALL-ENFORCING")),
    _ub("5.2.3.14-rules-file-lacks-a-watch",
        lambda s: _edit(s, "/etc/audit/rules.d/60-golden-ami-mac-policy.rules", "-w /etc/apparmor.d -p wa -k MAC-policy\n",
                        ""),
        {"5.2.3.14": r"audit rules not in /etc/audit/rules\.d: -w /etc/apparmor\.d -p wa -k MAC-policy"}),
    _ub("GA-PROC-APPORT-apport-enabled",
        lambda s: _set_unit(s, "apport.service", LoadState="loaded", ActiveState="active", SubState="exited",
                            UnitFileState="enabled"),
        {"GA-PROC-APPORT": r"apport\.service is enabled/active, expected masked \(or disabled\) and inactive"}),
    _ub("GA-PROC-APPORT-default-enabled-1", lambda s: _edit(s, "/etc/default/apport", "enabled=0", "enabled=1"),
        {"GA-PROC-APPORT": r"/etc/default/apport enabled=1, expected 0"}),
    _jammy("GA-MODULE-FS-UNUSED-ceph-loadable", _loadable("ceph"),
           {"GA-MODULE-FS-UNUSED": r"1 problem\(s\) with filesystem modules neither in use nor kept: modprobe would "
                                   r"load ceph \(dry run: insmod /lib/modules/.*/ceph\.ko\.zst\), expected "
                                   r"'install /bin/false'$"}),
    _jammy("GA-MODULE-FS-UNUSED-cifs-not-blacklisted",
           lambda s: _edit_output(s, "modprobe_showconfig", "blacklist cifs\n", ""),
           {"GA-MODULE-FS-UNUSED": r"cifs is not blacklisted"}),
    _jammy("GA-MODULE-FS-UNUSED-a-new-kernel-s-new-filesystem", _new_filesystem_module,
           {"GA-MODULE-FS-UNUSED": r"2 problem\(s\) .*modprobe would load zonefs .*; zonefs is not blacklisted"}),
    _jammy("GA-MODULE-FS-UNUSED-kept-list-shortened", lambda s: None,
           {"GA-MODULE-FS-UNUSED": r"modprobe would load nfsv4 .*; nfsv4 is not blacklisted"},
           controls=_drop_kept("nfsv4")),
]

# Compliant variants in a real format the checks must read as compliant (everything passes).
VARIANTS = [
    # dnf reads booleans case-insensitively (libdnf OptionBool): 'True' is on.
    _al("GA-PATCH-AUTO-apply-updates-True",
        lambda s: _edit(s, "/etc/dnf/automatic.conf", "apply_updates = yes", "apply_updates = True")),
    # aa-status also counts a process under a profile in unconfined mode as "unconfined but
    # has a profile": allowed where unconfined_mode_profiles_allowed is (ubuntu2404).
    _ub("1.6.1.4-process-in-allowed-unconfined-mode-profile",
        _unconfined_process("   /usr/bin/podman (1207) podman")),
    # A filesystem module loaded on the instance is in use (it mounts it), whether kept or not.
    _jammy("GA-MODULE-FS-UNUSED-a-loaded-module-is-in-use",
           lambda s: (_loadable("nls_utf8")(s), _files(s)["/proc/modules"].update(
               content=_files(s)["/proc/modules"]["content"] + "nls_utf8 12288 1 - Live 0x0000000000000000\n"))),
]

# A command the check needs failed, or a fact was never recorded: the check fails with the reason.
FAILURES = [
    _jammy("modules-dep-unreadable", lambda s: s["collected"].update(filesystem_modules={
           "error": f"/lib/modules/{JAMMY_KERNEL}/modules.dep: No such file or directory"}),
           {"GA-MODULE-FS-UNUSED": r"the kernel's module list could not be read: /lib/modules/.*/modules\.dep: No such "
                                   r"file"}),
    _jammy("filesystem-modules-not-collected", lambda s: s["collected"].pop("filesystem_modules"),
           {"GA-MODULE-FS-UNUSED": r"the snapshot has no filesystem modules \(not collected\)"}),
    _jammy("a-dry-run-timed-out", lambda s: _fail_command(s, "modprobe_dry_run:udf", None, error="timed out after 60 s"),
           {"GA-MODULE-FS-UNUSED": r"`modprobe -n -v -- udf` did not run: timed out after 60 s"}),
    _al("grubby-timed-out", lambda s: _fail_command(s, "grubby_info", None, error="timed out after 180 s"),
        {"1.6.1.2": GRUBBY_DID_NOT_RUN, "5.2.1.2": GRUBBY_DID_NOT_RUN, "5.2.1.3": GRUBBY_DID_NOT_RUN}),
    _al("authselect-has-no-configuration",
        lambda s: _fail_command(s, "authselect_current", 2, stdout="No existing configuration detected.\n"),
        {"4.4.2": r"authselect has no configuration: No existing configuration detected\."}),
    _al("authselect-check-invalid",
        lambda s: _fail_command(s, "authselect_check", 1, stdout="Current configuration is not valid. It was probably "
                                                                 "modified outside authselect.\n"),
        {"4.4.2": r"authselect check: Current configuration is not valid"}),
    _al("update-crypto-policies-not-installed",
        lambda s: _fail_command(s, "crypto_policy", None, error="update-crypto-policies: command not found"),
        {"1.9": r"`update-crypto-policies --show` did not run: update-crypto-policies: command not found"}),
    _al("rpm-database-unreadable",
        lambda s: _fail_command(s, "packages", 1, stderr="error: cannot open Packages database in /var/lib/rpm\n"),
        {"1.6.1.1": RPM_FAILED, "1.6.1.3": RPM_FAILED, "1.6.1.7": RPM_FAILED, "1.6.1.8": RPM_FAILED,
         "4.5.1": RPM_FAILED, "GA-PATCH-AUTO": RPM_FAILED}),
    _al("rpm-kernel-query-failed",
        lambda s: _fail_command(s, "kernels", 1, stdout="package kernel is not installed\n"),
        {"GA-PATCH-KERNEL": r"`rpm -q kernel --qf .*` exited 1: no message"}),
    _al("dnf-updateinfo-failed", _set_dynamic(
        "pending_updates:dnf", rc=1, stderr="Error: Failed to download metadata for repo 'amazonlinux': Cannot download "
                                            "repomd.xml: Cannot download repodata/repomd.xml: All mirrors were tried\n"),
        {"1.8": r"exited 1: Error: Failed to download metadata for repo 'amazonlinux'"}),
    _al("pending-updates-never-recorded", lambda s: s["dynamic"].pop("pending_updates:dnf"),
        {"1.8": r"the snapshot has no result of `pending_updates:dnf` \(recorded snapshots only replay it\)"}),
    _al("selinux-config-not-collected", _drop_file("/etc/selinux/config"),
        {"1.6.1.3": r"the snapshot has nothing on /etc/selinux/config \(not collected\)",
         "1.6.1.4": r"the snapshot has nothing on /etc/selinux/config \(not collected\)",
         "1.6.1.5": r"the snapshot has nothing on /etc/selinux/config \(not collected\)"}),
    _al("ausearch-cannot-read-the-log", lambda s: _fail_command(
        s, "selinux_denials", 1, stderr="Error opening /var/log/audit/audit.log (Permission denied)\n"),
        {"1.6.1.5": r"`ausearch --message AVC,USER_AVC,SELINUX_ERR --start boot --interpret` exited 1: "
                    r"Error opening /var/log/audit/audit\.log \(Permission denied\)"}),
    _al("process-labels-not-collected", lambda s: s["collected"].pop("process_labels"),
        {"1.6.1.6": r"the snapshot has no process labels \(not collected\)"}),
    # SELinux disabled: /proc/PID/attr/current cannot be read (EINVAL), the collector says None.
    _al("no-process-context-readable", lambda s: [p.update(label=None) for p in s["collected"]["process_labels"]],
        {"1.6.1.6": r"processes without a SELinux context \(is SELinux enabled\?\): /usr/bin/amazon-ssm-agent \(none\)"}),
    _al("no-process-listed", lambda s: s["collected"].update(process_labels=[]),
        {"1.6.1.6": r"no process and its SELinux context was read"}),
    _ub("aa-status-without-privilege",
        lambda s: _fail_command(s, "aa_status", 4, stdout="apparmor module is loaded.\n",
                                stderr="You do not have enough privilege to read the profile set.\n"),
        {"1.6.1.4": r"`aa-status` exited 4: You do not have enough privilege to read the profile set\."}),
    _ub("systemctl-show-failed", _show_failed,
        {"1.6.1.4": SHOW_FAILED, "GA-PROC-APPORT": SHOW_FAILED}),
    _ub("dpkg-query-failed",
        lambda s: _fail_command(s, "packages", 2, stderr="dpkg-query: error: failed to open package info file "
                                                         "'/var/lib/dpkg/status' for reading: No such file or directory\n"),
        {"1.6.1.1": DPKG_FAILED, "GA-PROC-APPORT": DPKG_FAILED}),
]


ALL_CASES = MUTATIONS + VARIANTS + FAILURES


def _param(case: Case):
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.key, marks=marks)


# --- running the suite ---------------------------------------------------------------------
def _load(os_name: str) -> dict:
    return json.loads((FACTS / f"{os_name}-synthetic.json").read_text())


def _controls_document(os_name: str) -> dict:
    """The catalogue's controls for os_name (target local), cut down to its OS-specific ones."""
    document = catalogue.controls_for(config.resolve(os_name, "local")).as_dict()
    wanted = set(CONTROL_IDS[os_name])
    document["controls"] = [c for c in document["controls"] if c["id"] in wanted]
    found = {c["id"]: c for c in document["controls"]}
    assert set(found) == wanted, f"{os_name}: the catalogue lacks {sorted(wanted - set(found))}"
    unchecked = [i for i, c in found.items() if not c["applicable"] or c.get("check", "suite") != "suite"]
    assert not unchecked, f"{os_name}: not applicable, or not checked by the suite: {unchecked}"
    return document


@dataclass
class Judged:
    untouched: dict  # os -> rows by control id (each suite run in a subprocess of its own)
    replayed: dict  # "untouched N:os" -> rows of the untouched snapshot, judged last in the workers
    cases: dict  # case key -> rows


@pytest.fixture(scope="module")
def judged(tmp_path_factory) -> Judged:
    work = tmp_path_factory.mktemp("synthetic")
    with pytest.MonkeyPatch.context() as patch:
        # The state dir only matters for config resolution; nothing is written there.
        patch.setenv("GOLDEN_AMI_STATE_DIR", str(work / "state"))
        patch.delenv("GOLDEN_AMI_CONFIG", raising=False)
        documents = {os_name: _controls_document(os_name) for os_name in CONTROL_IDS}
    snapshots = {os_name: _load(os_name) for os_name in CONTROL_IDS}
    untouched = {os_name: judge(work, snapshots[os_name], documents[os_name], name=f"untouched-{os_name}")
                 for os_name in CONTROL_IDS}
    runs = {}
    for case in ALL_CASES:
        snapshot, document = copy.deepcopy(snapshots[case.os]), copy.deepcopy(documents[case.os])
        case.change(snapshot)
        if case.controls is not None:
            case.controls(document)
        runs[case.key] = (snapshot, document)
    replays = [f"untouched {n}:{os_name}" for n in range(4) for os_name in CONTROL_IDS]
    for name in replays:  # last in every worker: no state carries over between sessions
        os_name = name.rsplit(":", 1)[1]
        runs[name] = (snapshots[os_name], documents[os_name])
    rows = judge_many(work, runs)
    return Judged(untouched=untouched, replayed={name: rows[name] for name in replays},
                  cases={case.key: rows[case.key] for case in ALL_CASES})


def _wrong(os_name: str, rows: dict[str, dict], fails: dict[str, str]) -> dict[str, str]:
    """What differs from: the controls in `fails` fail with a matching message, the others pass."""
    wrong = {}
    for control_id in CONTROL_IDS[os_name]:
        row = rows.get(control_id)
        expected = fails.get(control_id)
        if row is None:
            wrong[control_id] = "no row in the report"
        elif expected is None and row["outcome"] != "pass":
            wrong[control_id] = f"expected pass, got {row['outcome']}: {row['message']}"
        elif expected is not None and (row["outcome"] != "fail" or not re.search(expected, row["message"])):
            wrong[control_id] = f"expected a failure matching {expected!r}, got {row['outcome']}: {row['message']}"
    return wrong


# --- the tests -----------------------------------------------------------------------------
@pytest.mark.parametrize("os_name", sorted(CONTROL_IDS))
def test_every_os_specific_control_passes_on_the_synthetic_snapshot(judged, os_name):
    wrong = _wrong(os_name, judged.untouched[os_name], {})
    assert not wrong, json.dumps(wrong, indent=1)
    for worker, rows in judged.replayed.items():
        if worker.endswith(f":{os_name}"):
            assert not _wrong(os_name, rows, {}), f"{worker}: a session saw state left by an earlier one"


@pytest.mark.parametrize("case", [_param(c) for c in MUTATIONS])
def test_the_smallest_non_compliant_change_fails_exactly_that_control(judged, case):
    wrong = _wrong(case.os, judged.cases[case.key], case.fails)
    assert not wrong, json.dumps(wrong, indent=1)


@pytest.mark.parametrize("case", [_param(c) for c in VARIANTS])
def test_a_compliant_variant_in_a_real_format_passes(judged, case):
    wrong = _wrong(case.os, judged.cases[case.key], case.fails)
    assert not wrong, json.dumps(wrong, indent=1)


@pytest.mark.parametrize("case", [_param(c) for c in FAILURES])
def test_a_failed_command_or_missing_fact_fails_the_check_with_its_reason(judged, case):
    wrong = _wrong(case.os, judged.cases[case.key], case.fails)
    assert not wrong, json.dumps(wrong, indent=1)


# Controls whose every failure is a failure of a stricter control in force beside them: their
# mutations fail that one too. SELinux disabled (1.6.1.4) is not enforcing either (1.6.1.5).
STRICTER = {"al2023": {"1.6.1.4": "1.6.1.5"}}


def test_every_control_has_a_mutation_that_fails_it_alone():
    for os_name, ids in CONTROL_IDS.items():
        stricter = STRICTER.get(os_name, {})
        alone = {cid for c in MUTATIONS if c.os == os_name for cid in c.fails
                 if set(c.fails) - {cid} <= {stricter.get(cid)}}
        assert alone == set(ids), f"{os_name}: no single-control mutation for {sorted(set(ids) - alone)}"


# --- the snapshots themselves -----------------------------------------------------------------
def _facts_in(snapshot: dict) -> set[str]:
    """Every fact the snapshot records, named as its `_sources` keys name them."""
    collected = snapshot["collected"]
    names = {"context", "collected.collected_at"} | {f"dynamic.{name}" for name in snapshot.get("dynamic", {})}
    for section in ("commands", "files", "globs"):
        names |= {f"collected.{section}.{key}" for key in collected.get(section, {})}
    for section in ("units", "process_labels", "filesystem_modules"):
        if section in collected:
            names.add(f"collected.{section}")
    return names


@pytest.mark.parametrize("os_name", sorted(CONTROL_IDS))
def test_every_value_of_the_synthetic_snapshot_names_its_source(os_name):
    snapshot = _load(os_name)
    assert snapshot["schema"] == 1 and snapshot["context"]["os"] == os_name
    sources = snapshot["_sources"]
    facts = _facts_in(snapshot)
    assert not facts - set(sources), f"values without a source: {sorted(facts - set(sources))}"
    assert not set(sources) - facts, f"sources of values the snapshot does not have: {sorted(set(sources) - facts)}"
    blank = [key for key, text in sources.items() if not text.strip()]
    assert not blank, f"empty sources: {blank}"
