"""The checks added for the independent audit (issue 12 item 6), proven both ways offline.

The recorded hardened snapshot (tests/data/facts/debian12-hardened.json, re-recorded from an
approved build with this hardening) shows what it leaves on a host - the kernel values of the
sysctl.d drop-in, the FireWire modules refused, sshd's forwarding off and MaxSessions 4,
pam_unix's and login.defs' hashing cost, logrotate's narrowed create modes, IPv6 on and
filtered, dpkg --verify's clean list - and every applicable control passes on it. Then the
smallest non-compliant change to it fails the check that reads it, and the alternative
compliant forms a check accepts pass. The unhardened base snapshot fails each of them for the
right reason, not merely for a fact it lacks (or passes, where the stock image complies).
"""
from __future__ import annotations

import copy
import json
import re
from typing import Callable

import pytest

from tests.unit.offline_suite import FACTS, controls_document, judge_many
from tests.unit.test_check_mutations import _policy_accept, collected, command, file, nft, sub

HARDENED = FACTS / "debian12-hardened.json"
BASE = FACTS / "debian12-base.json"

KERNEL_VALUES = {"kernel.kptr_restrict": "2", "kernel.sysrq": "0", "dev.tty.ldisc_autoload": "0",
                 "fs.protected_fifos": "2", "fs.protected_regular": "2", "net.core.bpf_jit_harden": "2"}
FIREWIRE = ("firewire-core", "firewire-ohci", "firewire-sbp2")
SSHD_FORWARDING_OFF = {"disableforwarding": "yes", "allowtcpforwarding": "no", "allowagentforwarding": "no",
                       "allowstreamlocalforwarding": "no", "maxsessions": "4"}
NEW_IDS = ("GA-KERNEL-KPTR", "GA-KERNEL-SYSRQ", "GA-KERNEL-LDISC", "GA-KERNEL-PROTECTED-FILES",
           "GA-KERNEL-BPF-JIT-HARDEN", "GA-KERNEL-FIREWIRE", "4.2.13", "4.2.18", "GA-PAM-HASH-COST", "3.1.1", "GA-PATCH-VERIFIED")


def _modprobe(snapshot: dict, module: str, rc: int, stdout: str = "", stderr: str = "") -> None:
    snapshot["collected"]["commands"][f"modprobe_dry_run:{module}"] = {
        "argv": ["modprobe", "-n", "-v", "--", module], "rc": rc, "stdout": stdout, "stderr": stderr, "seconds": 0.4}


def _sshd_set(snapshot: dict, settings: dict[str, str], names=("sshd_T", "sshd_T_login")) -> None:
    for name in names:
        result = snapshot["collected"]["commands"][name]
        for key, value in settings.items():
            result["stdout"], n = re.subn(rf"^{key} .*$", f"{key} {value}", result["stdout"], flags=re.M)
            assert n == 1, f"{name} has no {key} line"


def compliant() -> dict:
    """The recorded hardened snapshot: an approved build with this hardening, booted fresh. It
    must show what the hardening leaves (so the mutations below start from the real thing)."""
    snapshot = json.loads(HARDENED.read_text())
    assert {k: snapshot["collected"]["sysctl"]["values"].get(k) for k in KERNEL_VALUES} == KERNEL_VALUES
    for module in FIREWIRE:
        assert snapshot["collected"]["commands"][f"modprobe_dry_run:{module}"]["stdout"].startswith("install /bin/false")
    unix_lines = [line for line in snapshot["collected"]["files"][PAM]["content"].splitlines()
                  if line.startswith("password") and "pam_unix.so" in line]
    assert len(unix_lines) == 1 and " rounds=6 " in unix_lines[0], unix_lines
    return snapshot


def sysctl(key: str, value) -> Callable[[dict], None]:
    return collected(["sysctl", "values", key], value)


def _drop_sysctl(key: str) -> Callable[[dict], None]:
    def apply(snapshot: dict) -> None:
        del snapshot["collected"]["sysctl"]["values"][key]
    return apply


def sshd(settings: dict[str, str], names=("sshd_T", "sshd_T_login")) -> Callable[[dict], None]:
    return lambda snapshot: _sshd_set(snapshot, settings, names)


def modprobe(module: str, rc: int, stdout: str = "", stderr: str = "") -> Callable[[dict], None]:
    return lambda snapshot: _modprobe(snapshot, module, rc, stdout, stderr)


def ipv6_off(snapshot: dict) -> None:
    """Every interface's IPv6 switched off (what the 3.1.1 "disabled" drop-in leaves)."""
    values = snapshot["collected"]["sysctl"]["values"]
    for key in [k for k in values if k.startswith("net.ipv6.conf.") and k.endswith(".disable_ipv6")]:
        values[key] = "1"


def unchanged(snapshot: dict) -> None:
    pass


PAM = "/etc/pam.d/common-password"
LOGROTATE_DPKG = "/etc/logrotate.d/dpkg"
DEFS = "/etc/login.defs"
INSMOD = "insmod /lib/modules/6.1.0-50-amd64/kernel/drivers/firewire/{}.ko \n"

# (control, what changes, the change, a word the failure message must contain[, params of
# another decision])
FAILING = [
    ("GA-KERNEL-KPTR", "kptr_restrict 1 (root sees addresses)", sysctl("kernel.kptr_restrict", "1"), "kptr_restrict is 1"),
    ("GA-KERNEL-SYSRQ", "systemd's default sysrq 438", sysctl("kernel.sysrq", "438"), "sysrq is 438"),
    ("GA-KERNEL-LDISC", "line disciplines autoload", sysctl("dev.tty.ldisc_autoload", "1"), "ldisc_autoload is 1"),
    ("GA-KERNEL-PROTECTED-FILES", "protect-links.conf won: fifos 1", sysctl("fs.protected_fifos", "1"),
     "protected_fifos is 1"),
    ("GA-KERNEL-PROTECTED-FILES", "regular files 1", sysctl("fs.protected_regular", "1"), "protected_regular is 1"),
    ("GA-KERNEL-BPF-JIT-HARDEN", "blinding for unprivileged only", sysctl("net.core.bpf_jit_harden", "1"),
     "bpf_jit_harden is 1"),
    ("GA-KERNEL-BPF-JIT-HARDEN", "a kernel without the key", _drop_sysctl("net.core.bpf_jit_harden"), "absent"),
    ("GA-KERNEL-FIREWIRE", "firewire-ohci loadable", modprobe("firewire-ohci", 0, INSMOD.format("firewire-ohci")),
     "firewire-ohci"),
    ("GA-KERNEL-FIREWIRE", "firewire-sbp2 not refused, only absent from the kernel",
     modprobe("firewire-sbp2", 1, stderr="modprobe: FATAL: Module firewire-sbp2 not found in directory\n"),
     "firewire-sbp2"),
    ("GA-KERNEL-FIREWIRE", "firewire-core not blacklisted",
     command("modprobe_showconfig", sub(r"^blacklist firewire_core\n", "")), "not blacklisted"),
    ("4.2.13", "DisableForwarding off and agent forwarding on",
     sshd({"disableforwarding": "no", "allowagentforwarding": "yes"}), "allowagentforwarding"),
    ("4.2.13", "a Match block turns forwarding back on for the login user's connection",
     sshd({"disableforwarding": "no", "allowstreamlocalforwarding": "all"}, names=("sshd_T_login",)),
     "allowstreamlocalforwarding"),
    ("4.2.13", "DisableForwarding yes but AllowTcpForwarding yes (what the AL2023 audit reads)",
     sshd({"allowtcpforwarding": "yes"}), "allowtcpforwarding"),
    ("4.2.18", "OpenSSH's default MaxSessions 10", sshd({"maxsessions": "10"}), "maxsessions"),
    ("5.1.3", "dpkg's logrotate block creates dpkg.log world-readable again",
     file(LOGROTATE_DPKG, sub(r"create 0640 ", "create 644 ")), "logrotate creates /var/log/dpkg.log with mode 0644"),
    ("5.1.3", "the login records' mode given to an ordinary log's block",
     file(LOGROTATE_DPKG, sub(r"create 0640 ", "create 0664 ")), "mode 0664 (at most 0640)"),
    ("5.1.3", "a global create mode that opens every rotated log",
     file("/etc/logrotate.conf", sub(r"^create$", "create 0644 root adm")), "logrotate creates log files with mode 0644"),
    ("GA-PATCH-VERIFIED", "a program changed after installation",
     command("package_verify", lambda out: out + "??5??????   /usr/bin/passwd\n"), "/usr/bin/passwd"),
    ("GA-PATCH-VERIFIED", "a library gone",
     command("package_verify", lambda out: out + "missing     /usr/lib/x86_64-linux-gnu/libz.so.1.2.13\n"), "missing"),
    ("3.1.1", "decided enabled, switched off", sysctl("net.ipv6.conf.all.disable_ipv6", "1"), "disable_ipv6 = 1"),
    ("3.1.1", "enabled, but the input chain accepts by default", nft(_policy_accept), "drops by default"),
    ("3.1.1", "decided disabled, still on", unchanged, "decided disabled", {"ipv6": "disabled"}),
    ("3.1.1", "decided disabled, one interface still on",
     lambda snapshot: (ipv6_off(snapshot), sysctl("net.ipv6.conf.ens2.disable_ipv6", "0")(snapshot)), "ens2",
     {"ipv6": "disabled"}),
    ("GA-PAM-HASH-COST", "pam_unix at the default cost", file(PAM, sub(r" rounds=6", " rounds=5")), "cost 5"),
    ("GA-PAM-HASH-COST", "pam_unix rounds=12: out of range, pam_unix uses 5",
     file(PAM, sub(r" rounds=6", " rounds=12")), "cost 5"),
    ("GA-PAM-HASH-COST", "no rounds=: login.defs' SHA rounds do not carry over to yescrypt",
     file(PAM, sub(r" rounds=6", "")), "cost 5"),
    ("GA-PAM-HASH-COST", "login.defs at the SHA-crypt default",
     file(DEFS, sub(r"^SHA_CRYPT_MIN_ROUNDS 100000$", "SHA_CRYPT_MIN_ROUNDS 5000")), "login.defs"),
    ("GA-PAM-HASH-COST", "login.defs without rounds", file(DEFS, sub(r"^SHA_CRYPT_M(IN|AX)_ROUNDS .*\n", "", 0)),
     "cost 5000"),
]
# Compliant in another way the check accepts: it must pass.
PASSING = [
    ("4.2.13", "every kind of forwarding off one by one, no DisableForwarding",
     sshd({"disableforwarding": "no", "x11forwarding": "no"})),
    ("4.2.18", "fewer sessions than the limit", sshd({"maxsessions": "2"})),
    ("3.1.1", "decided disabled, off on every interface", ipv6_off, {"ipv6": "disabled"}),
    ("GA-PATCH-VERIFIED", "one more configuration file changed",
     command("package_verify", lambda out: out + "??5?????? c /etc/ssh/ssh_config\n")),
    ("5.1.3", "a stricter global create mode", file("/etc/logrotate.conf", sub(r"^create$", "create 0600 root adm"))),
    ("GA-PAM-HASH-COST", "a higher yescrypt cost", file(PAM, sub(r" rounds=6", " rounds=8"))),
    ("GA-PAM-HASH-COST", "SHA-512 in pam_unix at 200000 rounds",
     file(PAM, sub(r" rounds=6(.*) yescrypt", r" rounds=200000\1 sha512"))),
]


@pytest.fixture(scope="module")
def document(tmp_path_factory) -> dict:
    import os

    os.environ.setdefault("GOLDEN_AMI_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    return controls_document("debian12")


def _only(document: dict, control: str, params: dict | None = None) -> dict:
    """The document with only this control, its params changed by params (another decision)."""
    chosen = [copy.deepcopy(c) for c in document["controls"] if c["id"] == control]
    for c in chosen:
        c["params"].update(params or {})
    return {**document, "controls": chosen}


def _base_for_the_right_reason() -> dict:
    """The base snapshot with what the collector now asks too: Debian's cloud kernel has no
    FireWire, and nothing refuses the modules."""
    snapshot = json.loads(BASE.read_text())
    for module in FIREWIRE:
        _modprobe(snapshot, module, 1, stderr=f"modprobe: FATAL: Module {module} not found in directory\n")
    return snapshot


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory, document) -> dict[str, dict]:
    good = compliant()
    runs = {"compliant": (good, document), "base": (_base_for_the_right_reason(), document)}
    for index, (control, _, mutate, _, *params) in enumerate(FAILING):
        snapshot = copy.deepcopy(good)
        mutate(snapshot)
        runs[f"fail-{index}"] = (snapshot, _only(document, control, *params))
    for index, (control, _, mutate, *params) in enumerate(PASSING):
        snapshot = copy.deepcopy(good)
        mutate(snapshot)
        runs[f"pass-{index}"] = (snapshot, _only(document, control, *params))
    return judge_many(tmp_path_factory.mktemp("beyond"), runs)


def test_the_new_checks_are_in_force_on_debian12(document):
    in_force = {c["id"] for c in document["controls"] if c["applicable"]}
    assert set(NEW_IDS) <= in_force


def test_every_control_passes_on_the_compliant_snapshot(verdicts, document):
    rows = verdicts["compliant"]
    failing = {c["id"]: rows[c["id"]]["message"] for c in document["controls"]
               if c["applicable"] and c.get("check", "suite") == "suite" and rows[c["id"]]["outcome"] != "pass"}
    assert not failing, json.dumps(failing, indent=1)


@pytest.mark.parametrize("index", range(len(FAILING)), ids=[f"{c[0]}: {c[1]}" for c in FAILING])
def test_the_smallest_non_compliant_change_fails(verdicts, index):
    control, what, _, word, *_ = FAILING[index]
    row = verdicts[f"fail-{index}"][control]
    assert row["outcome"] == "fail", f"{control} still {row['outcome']} after: {what}"
    assert word.lower() in row["message"].lower(), f"{control}'s message does not name the problem: {row['message']}"


@pytest.mark.parametrize("index", range(len(PASSING)), ids=[f"{c[0]}: {c[1]}" for c in PASSING])
def test_another_compliant_form_passes(verdicts, index):
    control, what, *_ = PASSING[index]
    row = verdicts[f"pass-{index}"][control]
    assert row["outcome"] == "pass", f"{control} {row['outcome']} on a compliant host ({what}): {row['message']}"


# What the stock image shows for each, in the failure message: the reason, not a missing fact.
BASE_REASONS = {"GA-KERNEL-KPTR": "kptr_restrict is 0", "GA-KERNEL-SYSRQ": "sysrq is 438",
                "GA-KERNEL-LDISC": "ldisc_autoload is 1", "GA-KERNEL-PROTECTED-FILES": "protected_fifos is 1",
                "GA-KERNEL-BPF-JIT-HARDEN": "bpf_jit_harden is 0", "GA-KERNEL-FIREWIRE": "modprobe would load",
                "4.2.13": "disableforwarding is 'no'", "4.2.18": "maxsessions is '10'",
                "GA-PAM-HASH-COST": "yescrypt at cost 5", "3.1.1": "no firewall ruleset filters it"}


# Compliant on the stock image too (the catalogue's default_compliant): they must pass there.
BASE_COMPLIANT = ("GA-PATCH-VERIFIED",)


@pytest.mark.parametrize("control", BASE_COMPLIANT)
def test_what_the_stock_image_already_meets_passes_there(verdicts, control):
    row = verdicts["base"][control]
    assert row["outcome"] == "pass", f"{control} {row['outcome']} on the unhardened image: {row['message']}"


@pytest.mark.parametrize("control", [i for i in NEW_IDS if i not in BASE_COMPLIANT])
def test_the_unhardened_base_image_fails_for_the_right_reason(verdicts, control):
    row = verdicts["base"][control]
    assert row["outcome"] == "fail", f"{control} {row['outcome']} on the unhardened image"
    assert BASE_REASONS[control].lower() in row["message"].lower(), row["message"]
