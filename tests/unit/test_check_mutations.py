"""The smallest non-compliant change to a good snapshot turns its check red.

Each case takes the recorded snapshot of the hardened, approved debian12 image
(tests/data/facts/debian12-hardened.json, on which every control passes: see
test_checks_offline.py), changes one fact the way a misconfigured host would show it, and runs
the real verify suite offline for that one control: it must fail, and its message must say
what is wrong. The parsers under test are the ones most likely to pass by accident: the
nftables rule reader, the listening-socket parser, the audit rule parser, PAM and faillock
parsing - and the checks that must read what is in force rather than what is configured
(sshd's Match blocks, the effective core limit, chronyd's own sources).
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Callable

import pytest

from tests.unit.offline_suite import FACTS, controls_document, judge_many

HARDENED = FACTS / "debian12-hardened.json"
GRUB_CFG = "/boot/grub/grub.cfg"
AIDE_CONF = "/etc/aide/aide.conf"
AIDE_DATABASE = "/var/lib/aide/aide.db"
# What `aide --check` prints when a program changed (the layout of AIDE 0.18's report).
AIDE_CHANGED_REPORT = """Start timestamp: 2026-12-03 20:00:00 +0000 (AIDE 0.18.3)
AIDE found differences between database and filesystem!!

Summary:
  Total number of entries:\t10102
  Added entries:\t\t0
  Removed entries:\t\t0
  Changed entries:\t\t1

---------------------------------------------------
Changed entries:
---------------------------------------------------

f =.... i  ..H..   : /usr/bin/passwd

---------------------------------------------------
Detailed information about changes:
---------------------------------------------------

File: /usr/bin/passwd
 Inode     : 1234                             | 5678
"""


# --- editing a snapshot -----------------------------------------------------------------------
def command(name: str, edit: Callable[[str], str]) -> Callable[[dict], None]:
    def apply(snapshot: dict) -> None:
        result = snapshot["collected"]["commands"][name]
        changed = edit(result["stdout"])
        assert changed != result["stdout"], f"the mutation of {name} changed nothing"
        result["stdout"] = changed
    return apply


def file(path: str, edit: Callable[[str], str]) -> Callable[[dict], None]:
    def apply(snapshot: dict) -> None:
        entry = snapshot["collected"]["files"][path]
        changed = edit(entry["content"])
        assert changed != entry["content"], f"the mutation of {path} changed nothing"
        entry["content"] = changed
    return apply


def nft(edit: Callable[[list], None]) -> Callable[[dict], None]:
    """Edit the `nft -j list ruleset` items in place."""
    def change(text: str) -> str:
        ruleset = json.loads(text)
        edit(ruleset["nftables"])
        return json.dumps(ruleset)
    return command("nft_json", change)


def sub(pattern: str, replacement: str, count: int = 1) -> Callable[[str], str]:
    def edit(text: str) -> str:
        changed, n = re.subn(pattern, replacement, text, count=count, flags=re.M)
        assert n, f"{pattern!r} not found"
        return changed
    return edit


def _rule(items: list, chain: str, predicate: Callable[[list], bool]) -> dict:
    return next(i["rule"] for i in items if "rule" in i and i["rule"]["chain"] == chain and predicate(i["rule"]["expr"]))


def _remove_rule(items: list, chain: str, predicate: Callable[[list], bool]) -> None:
    target = _rule(items, chain, predicate)
    items[:] = [i for i in items if i.get("rule") is not target]


def _has(expr: list, text: str) -> bool:
    return text in json.dumps(expr)


def _policy_accept(items: list) -> None:
    next(i["chain"] for i in items if "chain" in i and i["chain"].get("hook") == "input")["policy"] = "accept"


def _output_policy_accept(items: list) -> None:
    next(i["chain"] for i in items if "chain" in i and i["chain"].get("hook") == "output")["policy"] = "accept"


def _output_accepts_everything(items: list) -> None:
    """An unconditional accept first in the output chain: the drop policy then says nothing."""
    first = next(index for index, i in enumerate(items) if "rule" in i and i["rule"]["chain"] == "output")
    rule = items[first]["rule"]
    items.insert(first, {"rule": {**{k: rule[k] for k in ("family", "table", "chain")}, "handle": 999,
                                  "expr": [{"accept": None}]}})


def _outbound_tcp_only(items: list) -> None:
    rule = _rule(items, "output", lambda e: _has(e, "l4proto"))
    for statement in rule["expr"]:
        if "match" in statement and "l4proto" in json.dumps(statement["match"]["left"]):
            statement["match"]["right"] = "tcp"


def _drop_forward_chain(items: list) -> None:
    items[:] = [i for i in items if not ("chain" in i and i["chain"].get("hook") == "forward")]


def _widen_ssh(items: list) -> None:
    rule = _rule(items, "input", lambda e: _has(e, '"dport"'))
    match = next(s["match"] for s in rule["expr"] if "match" in s and _has(s, '"dport"'))
    match["right"] = {"set": [22, 23]}


def _jump_to_open_chain(items: list) -> None:
    first = next(i for i in items if "chain" in i and i["chain"].get("hook") == "input")["chain"]
    family, table = first["family"], first["table"]
    items.append({"chain": {"family": family, "table": table, "name": "app", "handle": 99}})
    items.append({"rule": {"family": family, "table": table, "chain": "app", "handle": 100, "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8080}},
        {"accept": None}]}})
    items.append({"rule": {"family": family, "table": table, "chain": first["name"], "handle": 101,
                           "expr": [{"jump": {"target": "app"}}]}})


def dynamic(name: str, **changes) -> Callable[[dict], None]:
    def apply(snapshot: dict) -> None:
        snapshot["dynamic"][name].update(changes)
    return apply


def collected(path: list[str], value) -> Callable[[dict], None]:
    def apply(snapshot: dict) -> None:
        node = snapshot["collected"]
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value(node[path[-1]]) if callable(value) else value
    return apply


def _add_setuid(walk: dict) -> dict:
    walk = copy.deepcopy(walk)
    walk["setid"].append({"root": "/", "mode": "4755", "path": "/usr/local/bin/helper"})
    walk["counts"]["setid"] += 1
    return walk


def _widen_setid(walk: dict) -> dict:
    """A reviewed program given one more bit than its review accepted (group write on sudo)."""
    walk = copy.deepcopy(walk)
    (entry,) = [e for e in walk["setid"] if e["path"] == "/usr/bin/sudo"]
    entry["mode"] = "4775"
    return walk


def _add_world_writable(walk: dict) -> dict:
    walk = copy.deepcopy(walk)
    walk["world_writable"].append({"root": "/", "type": "f", "mode": "666", "path": "/etc/cron.d/job"})
    walk["counts"]["world_writable"] += 1
    return walk


def _walk_denied(walk: dict) -> dict:
    return {**walk, "rc": 1, "stderr": "find: '/var/lib/secret': Permission denied\n", "stderr_truncated": False}


def _add_dropin(path: str, content: str) -> Callable[[dict], None]:
    """A new file in a drop-in directory: in the files, in the directory's glob and listing."""
    def apply(snapshot: dict) -> None:
        facts = snapshot["collected"]
        directory = path.rsplit("/", 1)[0]
        like = next(v for p, v in facts["files"].items() if p.startswith(directory + "/"))
        facts["files"][path] = {**copy.deepcopy(like), "content": content}
        for pattern, matches in facts["globs"].items():
            if pattern.startswith(directory + "/"):
                matches.append(path)
                matches.sort()
    return apply


INPUT_DROPINS = "/etc/nftables.d"


def nft_dropin(name: str, content: str, mode: str = "0644") -> Callable[[dict], None]:
    """A file in the firewall's input drop-in directory, as the collector reports one."""
    def apply(snapshot: dict) -> None:
        facts = snapshot["collected"]
        path = f"{INPUT_DROPINS}/{name}"
        stat = {**facts["files"]["/etc/nftables.conf"]["stat"], "mode": mode, "size": len(content)}
        facts["files"][path] = {"stat": stat, "content": content}
        facts["globs"][f"{INPUT_DROPINS}/*"] = sorted([*facts["globs"][f"{INPUT_DROPINS}/*"], path])
    return apply


def unit_file_state(unit: str, state: str) -> Callable[[dict], None]:
    """`systemctl show` reporting another UnitFileState for unit."""
    edit = sub(rf"^(Id={re.escape(unit)}\n(?:[^\n]+\n)*?)UnitFileState=\w+", rf"\1UnitFileState={state}")
    return collected(["units", "show"], lambda show: {**show, "stdout": edit(show["stdout"])})


LISTEN = "tcp   LISTEN 0      128          0.0.0.0:{port}      0.0.0.0:*    users:((\"{proc}\",pid=900,fd=3))"

# (control, what changes, the change, a word the failure message must contain)
CASES = [
    # nftables, read as JSON
    ("3.4.2.7", "input chain policy accept", nft(_policy_accept), "policy"),
    ("3.4.2.3", "no forward base chain", nft(_drop_forward_chain), "forward"),
    ("3.4.2.4", "loopback accept rule removed",
     nft(lambda items: _remove_rule(items, "input", lambda e: _has(e, '"lo"') and _has(e, "accept"))), "loopback"),
    ("3.4.2.6", "established,related rule removed",
     nft(lambda items: _remove_rule(items, "input", lambda e: _has(e, "established"))), "established"),
    ("3.4.2.7", "output chain policy accept", nft(_output_policy_accept), "output"),
    ("3.4.2.7", "output chain accepts everything first", nft(_output_accepts_everything), "accepts everything"),
    ("3.4.2.4", "outbound loopback accept removed",
     nft(lambda items: _remove_rule(items, "output", lambda e: _has(e, '"lo"'))), "on the way out"),
    ("3.4.2.6", "new outbound connections not accepted",
     nft(lambda items: _remove_rule(items, "output", lambda e: _has(e, "l4proto"))), "tcp, udp"),
    ("3.4.2.6", "outbound narrowed to TCP", nft(_outbound_tcp_only), "icmp, udp"),
    ("GA-FW-INBOUND", "SSH rule widened to port 23", nft(_widen_ssh), "23"),
    ("GA-FW-INBOUND", "a jumped-to chain accepts 8080", nft(_jump_to_open_chain), "8080"),
    # firewall drop-ins: none in the image, root's only, included where they belong
    ("GA-FW-DROPIN", "a drop-in opening 8080", nft_dropin("app.nft", "tcp dport 8080 accept\n"), "tcp 8080"),
    ("GA-FW-DROPIN", "a group-writable drop-in that opens nothing", nft_dropin("empty.nft", "# nothing\n", "0664"),
     "writable"),
    ("GA-FW-DROPIN", "the input chain's include left out",
     file("/etc/nftables.conf", sub(r'^\s*include "/etc/nftables\.d/\*\.nft"\n', "")), "input chain"),
    ("GA-FW-DROPIN", "the output chain's include left out",
     file("/etc/nftables.conf", sub(r'^\s*include "/etc/nftables\.d/output/\*\.nft"\n', "")), "output chain"),
    # listening sockets (ss)
    ("2.4", "a web server on 0.0.0.0:8080", command("ss_listen", lambda t: t + LISTEN.format(port=8080, proc="python3")
                                                     + "\n"), "8080"),
    ("2.4", "rpcbind on [::]:111", command("ss_listen", lambda t: t + "tcp   LISTEN 0 4096 [::]:111 [::]:* "
                                            "users:((\"rpcbind\",pid=7,fd=4))\n"), "111"),
    ("2.2.15", "an MTA on 0.0.0.0:25", command("ss_listen", lambda t: t + LISTEN.format(port=25, proc="master")
                                                + "\n"), "25"),
    # audit rules: loaded (auditctl -l) and on disk
    ("5.2.3.4", "clock_settime left out of the loaded b32 rule",
     command("auditctl_l", sub(r"^(-a always,exit -F arch=b32 -S [^\n]*?),clock_settime", r"\1")), "clock_settime"),
    ("5.2.3.1", "sudoers watched for reads only",
     command("auditctl_l", sub(r"^-w /etc/sudoers -p wa", "-w /etc/sudoers -p r")), "/etc/sudoers"),
    ("5.2.3.20", "rules not locked", command("auditctl_s", sub(r"^enabled 2", "enabled 1")), "enabled"),
    ("5.2.3.6", "a setuid program without a rule", collected(["walk"], _add_setuid), "/usr/local/bin/helper"),
    ("GA-PATCH-RESTARTED", "sshd still maps the libssl an upgrade replaced",
     collected(["replaced_code"], [{"pid": 612, "comm": "sshd", "path": "/usr/lib/x86_64-linux-gnu/libssl.so.3"}]),
     "sshd (612): /usr/lib/x86_64-linux-gnu/libssl.so.3"),
    ("GA-SETID-REVIEWED", "a setuid program nobody reviewed", collected(["walk"], _add_setuid),
     "/usr/local/bin/helper (4755, not reviewed)"),
    ("GA-SETID-REVIEWED", "a reviewed program with one more bit", collected(["walk"], _widen_setid),
     "/usr/bin/sudo (4775, reviewed as 4755)"),
    # auditd.conf actions (5.2.2.3, GA-AUDIT-DISK-FULL: hold once the snapshot is re-recorded from
    # a build with their hardening; the one recorded before has auditd's defaults)
    ("5.2.2.3", "the system runs on at admin_space_left, only logging",
     file("/etc/audit/auditd.conf", sub(r"^admin_space_left_action\s*=.*$", "admin_space_left_action = SYSLOG")),
     "admin_space_left_action"),
    ("5.2.2.3", "low space ignored", file("/etc/audit/auditd.conf", sub(r"^space_left_action\s*=.*$",
                                                                       "space_left_action = IGNORE")),
     "space_left_action is IGNORE"),
    ("GA-AUDIT-DISK-FULL", "a full disk is ignored",
     file("/etc/audit/auditd.conf", sub(r"^disk_full_action\s*=.*$", "disk_full_action = IGNORE")), "disk_full_action"),
    ("5.2.3.21", "a loaded rule missing", command("auditctl_l", sub(r"^-w /etc/sudoers -p wa.*\n", "")), "loaded"),
    ("5.2.3.21", "rules.d changed, audit.rules not regenerated",
     file("/etc/audit/rules.d/60-golden-ami-scope.rules", lambda t: t + "-w /etc/hosts -p wa -k scope\n"), "augenrules"),
    # journald rotation (systemd-analyze cat-config): the pipeline's drop-in, and a later one
    # that overrides it
    ("5.1.2.6", "the journal's size on disk not capped",
     command("systemd_journald", sub(r"^SystemMaxUse=.*\n", "")), "SystemMaxUse is not set"),
    ("5.1.2.6", "a later drop-in keeps journal files for a year",
     command("systemd_journald", lambda t: t + "\n# /etc/systemd/journald.conf.d/99-app.conf\n[Journal]\n"
                                          "MaxFileSec=1year\n"), "MaxFileSec is 1year"),
    # journal file access: the tmpfiles.d line systemd applies, and the journal as it is now
    ("5.1.2.7", "an /etc/tmpfiles.d override makes journal files world-readable",
     command("systemd_tmpfiles", lambda t: t + "\n# /etc/tmpfiles.d/journal-open.conf\n"
                                          "z /var/log/journal/%m/system.journal 0644 root systemd-journal - -\n"),
     "journal-open.conf: z /var/log/journal/%m/system.journal 0644 grants 0004"),
    ("5.1.2.7", "the journal directory's tmpfiles mode group-writable",
     command("systemd_tmpfiles", sub(r"^z /var/log/journal 2755 ", "z /var/log/journal 2775 ")), "grants 0020"),
    ("5.1.2.7", "no tmpfiles.d line for the journal",
     command("systemd_tmpfiles", sub(r"^[zZ] /(var|run)/log/journal.*\n", "", count=0)), "no tmpfiles.d line"),
    ("5.1.2.7", "the journal directory on disk world-writable",
     collected(["trees", "/var/log", "/var/log/journal"], lambda st: {**st, "mode": "3777"}), "/var/log/journal is 3777"),
    # the Level 2 filesystem modules and AppArmor's modes
    ("1.1.1.2", "udf loadable (the dry run would insert it)",
     command("modprobe_dry_run:udf", lambda t: "insmod /lib/modules/6.1.0-50-cloud-amd64/kernel/fs/udf/udf.ko \n"),
     "modprobe would load udf"),
    ("GA-MODULE-OVERLAYFS", "overlay not deny-listed", command("modprobe_showconfig", sub(r"^blacklist overlay\n", "")),
     "overlay is not blacklisted"),
    ("1.1.1.1", "squashfs loaded now", file("/proc/modules", lambda t: t + "squashfs 73728 0 - Live 0x0000000000000000\n"),
     "squashfs is loaded"),
    ("GA-MAC-ALL-ENFORCING", "a profile in complain mode",
     file("/sys/kernel/security/apparmor/profiles", sub(r"^/usr/sbin/chronyd \(enforce\)$", "/usr/sbin/chronyd (complain)")),
     "/usr/sbin/chronyd (complain)"),
    # PAM, faillock, pwquality, pwhistory
    ("4.5.2", "faillock deny = 10", file("/etc/security/faillock.conf", sub(r"^deny\s*=\s*\d+", "deny = 10")), "deny"),
    ("4.5.2", "no authfail line", file("/etc/pam.d/common-auth", sub(r"^auth\s.*pam_faillock\.so.*authfail.*\n", "")),
     "authfail"),
    ("4.5.1", "pwquality minlen 8", file("/etc/security/pwquality.conf.d/60-golden-ami-access.conf",
                                          sub(r"^minlen\s*=\s*\d+", "minlen = 8")), "minlen"),
    ("4.5.1", "a later drop-in lowers minlen", _add_dropin("/etc/security/pwquality.conf.d/99-local.conf",
                                                           "minlen = 9\n"), "minlen"),
    ("4.5.3", "pwhistory remembers 5", file("/etc/pam.d/common-password", sub(r"remember=24", "remember=5")),
     "remember"),
    ("4.5.4", "pam_unix hashes with md5", file("/etc/pam.d/common-password",
                                                       sub(r"^(password\s.*pam_unix\.so.*)\byescrypt\b", r"\1md5")), "md5"),
    ("4.5.1", "libpam-pwquality removed", command("packages", sub(r"^libpam-pwquality\t.*\n", "")), "libpam-pwquality"),
    ("4.5.3", "pwhistory does not bind root", file("/etc/pam.d/common-password", sub(r" enforce_for_root", "")),
     "enforce_for_root"),
    ("4.5.3", "pwhistory prompts on its own", file("/etc/pam.d/common-password",
                                                   sub(r"(pam_pwhistory\.so.*) use_authtok", r"\1")), "use_authtok"),
    ("GA-PWQUALITY-RULES", "difok 1", file("/etc/security/pwquality.conf.d/60-golden-ami-access.conf",
                                           sub(r"^difok\s*=\s*\d+", "difok = 1")), "difok"),
    ("GA-PWQUALITY-RULES", "maxrepeat 0 switches the test off",
     file("/etc/security/pwquality.conf.d/60-golden-ami-access.conf", sub(r"^maxrepeat\s*=\s*\d+", "maxrepeat = 0")),
     "maxrepeat"),
    ("GA-PWQUALITY-RULES", "the module's own maxsequence=5 argument",
     file("/etc/pam.d/common-password", sub(r"(pam_pwquality\.so)", r"\1 maxsequence=5")), "maxsequence"),
    ("GA-PWQUALITY-RULES", "a later drop-in turns the dictionary check off",
     _add_dropin("/etc/security/pwquality.conf.d/99-local.conf", "dictcheck = 0\n"), "dictionary"),
    ("GA-PWQUALITY-RULES", "root not bound", file("/etc/security/pwquality.conf.d/60-golden-ami-access.conf",
                                                  sub(r"^enforce_for_root\n?", "")), "root"),
    ("GA-PAM-UNIX", "nullok back on the auth line", file("/etc/pam.d/common-auth", sub(r"(pam_unix\.so)", r"\1 nullok")),
     "nullok"),
    ("GA-PAM-UNIX", "pam_unix keeps its own history", file("/etc/pam.d/common-password",
                                                           sub(r"(pam_unix\.so)", r"\1 remember=5")), "remember"),
    ("GA-PAM-UNIX", "pam_unix prompts on its own", file("/etc/pam.d/common-password",
                                                        sub(r"(pam_unix\.so.*) use_authtok", r"\1")), "use_authtok"),
    ("GA-PAM-UNIX", "no pam_unix session line", file("/etc/pam.d/common-session", sub(r"^session\s.*pam_unix\.so.*\n", "")),
     "session"),
    # (GA-FAILLOCK-ROOT: the snapshot recorded before its hardening has neither line; these two
    # cases hold once it is re-recorded from a build that has.)
    ("GA-FAILLOCK-ROOT", "even_deny_root commented out",
     file("/etc/security/faillock.conf", sub(r"^even_deny_root$", "# even_deny_root")), "even_deny_root"),
    ("GA-FAILLOCK-ROOT", "root unlocked after 30 seconds",
     file("/etc/security/faillock.conf", sub(r"^root_unlock_time\s*=\s*\d+", "root_unlock_time = 30")),
     "root_unlock_time"),
    ("4.3.6", "su open to everyone", file("/etc/pam.d/su", sub(r"^(auth\s+required\s+pam_wheel\.so)", r"# \1")),
     "pam_wheel"),
    # what is in force, not only what is configured
    ("GA-SSH-PASSWORD", "the sshd drop-in left password authentication on",
     lambda snapshot: [command(name, sub(r"^passwordauthentication no$", "passwordauthentication yes"))(snapshot)
                       for name in ("sshd_T", "sshd_T_login")], "passwordauthentication"),
    ("GA-SSH-HOSTKEY-TYPES", "sshd loads an RSA host key again",
     lambda snapshot: [command(name, lambda t: t + "hostkey /etc/ssh/ssh_host_rsa_key\n")(snapshot)
                       for name in ("sshd_T", "sshd_T_login")], "ssh_host_rsa_key"),
    ("GA-SSH-HOSTKEY-TYPES", "HostKey lines in a drop-in only: an upgrade would make an RSA key",
     file("/etc/ssh/sshd_config", sub(r"^HostKey .*\n", "", count=0)), "package upgrade"),
    ("GA-SSH-HOSTKEY-TYPES", "an RSA host key made at boot, not loaded",
     collected(["globs", "/etc/ssh/ssh_host_*_key"], lambda keys: sorted([*keys, "/etc/ssh/ssh_host_rsa_key"])),
     "another type"),
    ("GA-SSH-GSSAPI", "GSSAPI authentication switched on",
     lambda snapshot: [command(name, sub(r"^gssapiauthentication no$", "gssapiauthentication yes"))(snapshot)
                       for name in ("sshd_T", "sshd_T_login")], "gssapiauthentication"),
    ("4.2.7", "a Match block lets root in for the login user's connection",
     command("sshd_T_login", sub(r"^permitrootlogin no$", "permitrootlogin yes")), "permitrootlogin"),
    ("1.5.3", "a login session's hard core limit is unlimited",
     command("login_shell_env", sub(r"^core_hard=0$", "core_hard=unlimited")), "unlimited"),
    ("2.1.2", "chronyd holds no source",
     command("chronyc_activity", sub(r"^\d+ sources", "0 sources", count=0)),
     "no time source"),
    ("1.8", "a security update pending",
     dynamic("pending_updates:apt", stdout="Inst libc6 [2.36-9+deb12u9] (2.36-9+deb12u10 Debian-Security:12/stable-security "
                                           "[amd64])\n"), "libc6"),
    ("1.8", "the package lists could not be refreshed",
     dynamic("pending_updates:apt", rc=100, stdout="", stderr="E: Failed to fetch http://deb.debian.org/…"), "100"),
    ("GA-PATCH-KERNEL", "a newer kernel installed but not running",
     collected(["globs", "/boot/vmlinuz-*"], lambda kernels: [*kernels, "/boot/vmlinuz-6.1.0-99-cloud-amd64"]),
     "6.1.0-99"),
    ("6.1.11", "a world-writable file", collected(["walk"], _add_world_writable), "/etc/cron.d/job"),
    ("6.1.11", "the walk could not read a directory", collected(["walk"], _walk_denied), "Permission denied"),
    ("3.3.7", "reverse path filtering off",
     collected(["sysctl", "values", "net.ipv4.conf.all.rp_filter"], "0"), "rp_filter"),
    ("2.2.1", "an X server installed", command("packages", lambda t: t + "xserver-common\tinstall ok installed\t2:21.1.7-3\tall\n"),
     "xserver-common"),
    ("GA-SVC-GDM", "a display manager installed",
     command("packages", lambda t: t + "gdm3\tinstall ok installed\t43.0-3\tamd64\n"), "gdm3"),
    ("4.6.4", "another account with primary group 0",
     command("getent_passwd", sub(r"^(debian:x:1000):1000:", r"\1:0:")), "debian"),
    ("4.6.4", "another group with GID 0", command("getent_group", lambda t: t + "admins:x:0:\n"), "admins"),
    # one firewall utility; the PAM packages current; chronyd's own user
    ("3.4.1.2", "ufw enabled beside nftables (stopped now, started at boot)",
     collected(["units", "show"], lambda show: {**show, "stdout": sub(
         r"^(Id=ufw\.service\n(?:[^\n]+\n)*?)LoadState=not-found\n((?:[^\n]+\n)*?)UnitFileState=$",
         r"\1LoadState=loaded\n\2UnitFileState=enabled")(show["stdout"])}), "ufw is enabled/inactive"),
    ("3.4.1.2", "iptables-persistent installed",
     command("packages", lambda t: t + "iptables-persistent\tinstall ok installed\t1.0.20\tall\n"), "iptables-persistent"),
    ("GA-PAM-CURRENT", "a newer libpam-modules in the archive",
     dynamic("pending_updates:apt", stdout="Inst libpam-modules [1.5.2-6+deb12u3] (1.5.2-6+deb12u4 "
                                           "Debian-Security:12/oldstable-security [amd64])\n"), "libpam-modules"),
    ("GA-PAM-CURRENT", "libpam-runtime not installed",
     command("packages", sub(r"^libpam-runtime\tinstall ok installed\t.*\n", "")), "libpam-runtime"),
    ("GA-TIME-RUNNING", "chronyd runs as root", command("chronyd_user", lambda t: "root\n"), "root"),
    ("GA-TIME-RUNNING", "chronyd not running",
     collected(["commands", "chronyd_user"], lambda r: {**r, "rc": 1, "stdout": ""}), "no chronyd"),
    # the boot menu's superuser (grub.cfg as update-grub wrote it, hash reduced to a digest)
    ("GA-BOOT-PASSWORD", "no superuser", file(GRUB_CFG, sub(r"^set superusers=.*\n", "")), "no superuser"),
    ("GA-BOOT-PASSWORD", "the superuser has no password", file(GRUB_CFG, sub(r"^password_pbkdf2 .*\n", "")), "no password"),
    ("GA-BOOT-PASSWORD", "a password in clear text",
     file(GRUB_CFG, sub(r"^password_pbkdf2 (\S+) \S+", r"password \1 hunter2")), "clear text"),
    ("GA-BOOT-PASSWORD", "a hash of 1000 iterations",
     file(GRUB_CFG, sub(r"grub\.pbkdf2\.sha512\.[0-9]+\.", "grub.pbkdf2.sha512.1000.")), "1000 PBKDF2 iterations"),
    ("GA-BOOT-PASSWORD", "a kernel entry without --unrestricted",
     file(GRUB_CFG, sub(r"^(\s*menuentry '[^']*recovery mode[^']*'.*) --unrestricted ", r"\1 ")), "recovery mode"),
    ("GA-ROOT-UMASK", "root's .bashrc sets umask 022", file("/root/.bashrc", lambda t: t + "umask 022\n"), "umask 022"),
    ("GA-SHELLS-NOLOGIN", "nologin listed as a shell", file("/etc/shells", lambda t: t + "/usr/sbin/nologin\n"),
     "/usr/sbin/nologin"),
    ("4.6.5", "login.defs UMASK 022", file("/etc/login.defs", sub(r"^UMASK\s+\d+", "UMASK 022")), "UMASK"),
    # key-only accounts and password ageing
    ("GA-AGEING-KEYONLY", "a key-only account with useradd's ageing",
     command("getent_shadow", sub(r"^(debian:!:\d+):0:99999:7:::$", r"\1:0:365:7:45::")), "debian"),
    ("GA-AGEING-KEYONLY", "the path unit disabled",
     unit_file_state("golden-ami-keyonly-ageing.path", "disabled"), "not watched"),
    # file integrity: AIDE's own verdict on the fresh instance, and the configuration it reads
    ("1.3.1", "AIDE found a changed program",
     collected(["commands", "aide_check"], lambda r: {**r, "rc": 4, "stdout": AIDE_CHANGED_REPORT}),
     "Changed: /usr/bin/passwd"),
    ("1.3.1", "AIDE stopped on an error",
     collected(["commands", "aide_check"], lambda r: {**r, "rc": 17, "stdout": "", "stderr": "configuration error"}),
     "did not run to the end"),
    ("1.3.1", "no database in the image",
     collected(["files", AIDE_DATABASE], {"stat": {"exists": False}}), "no AIDE database"),
    ("1.3.1", "the database readable by others",
     collected(["files", AIDE_DATABASE, "stat", "mode"], "0644"), "root's alone"),
    ("1.3.1", "an exclusion the catalogue does not name",
     file(AIDE_CONF, sub(r"^!/boot/grub/grubenv$", "!/boot/grub/grubenv\n!/usr/local/sbin/extra")),
     "!/usr/local/sbin/extra"),
    ("1.3.1", "a file's content ignored that is not the instance's own",
     file(AIDE_CONF, sub(r"^(/etc/machine-id\$ InstanceFile)$", "/etc/sudoers$ InstanceFile\n\\1")),
     "/etc/sudoers"),
    ("1.3.1", "a watched tree without a hash",
     file(AIDE_CONF, sub(r"^/usr/lib Watched$", "/usr/lib InstanceFile")), "/usr/lib"),
    ("1.3.2", "the timer disabled", unit_file_state("aidecheck.timer", "disabled"), "disabled"),
    ("1.3.2", "the check run with another configuration",
     file("/etc/systemd/system/aidecheck.service", sub(r"--config \S+", "--config /tmp/aide.conf")), "/tmp/aide.conf"),
    ("1.3.2", "the configuration the check reads is gone",
     collected(["files", AIDE_CONF], {"stat": {"exists": False}, "exists": False}), "does not exist"),
    ("1.3.2", "a weekly check", file("/etc/systemd/system/aidecheck.timer", sub(r"^OnCalendar=.*$", "OnCalendar=weekly")),
     "OnCalendar=weekly"),
    ("1.3.3", "an audit tool with a weaker hash",
     file(AIDE_CONF, sub(r"^(/usr/sbin/auditctl\$ .*)sha512$", r"\1sha256")), "lacks sha512"),
    ("1.3.3", "an audit tool excluded",
     file(AIDE_CONF, sub(r"^(!/boot/grub/grubenv)$", "\\1\n!/usr/sbin/auditd$")), "/usr/sbin/auditd is excluded"),
]


@pytest.fixture(scope="module")
def debian12_controls(tmp_path_factory) -> dict:
    import os

    os.environ.setdefault("GOLDEN_AMI_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    return controls_document("debian12")


# (control, what, params changed in its controls.json entry, a word the message must contain):
# a check given a file that does not exist must say so, not pass for want of anything to judge.
PARAM_CASES = [
    ("6.1.1", "a path with a typo", {"paths": ["/etc/passwd", "/etc/paswd"]}, "/etc/paswd does not exist"),
    ("6.1.6", "a path moved away", {"paths": ["/etc/shadow.moved"]}, "/etc/shadow.moved does not exist"),
    ("GA-BOOT-PASSWORD", "a configured hash the image does not have",
     {"password_hash": "grub.pbkdf2.sha512.10000." + "AB" * 64 + "." + "CD" * 64}, "not the configured one"),
]


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory, debian12_controls) -> dict[int, dict]:
    """Every case judged once: one pytest session each, a few worker processes for them all,
    and the untouched snapshot judged last in every worker (no state carries over)."""
    work = tmp_path_factory.mktemp("mutations")
    good = json.loads(HARDENED.read_text())
    runs = {}
    for index, (control, _, mutate, _) in enumerate(CASES):
        snapshot = copy.deepcopy(good)
        mutate(snapshot)
        only = {**debian12_controls, "controls": [c for c in debian12_controls["controls"] if c["id"] == control]}
        runs[f"case-{index}"] = (snapshot, only)
    for index, (control, _, params, _) in enumerate(PARAM_CASES, start=len(CASES)):
        entry = next(c for c in debian12_controls["controls"] if c["id"] == control)
        only = {**debian12_controls, "controls": [{**entry, "params": {**entry["params"], **params}}]}
        snapshot = copy.deepcopy(good)
        for path in params.get("paths", []):  # as the collector records a path it was asked to stat
            snapshot["collected"]["files"].setdefault(path, {"stat": {"exists": False}})
        runs[f"case-{index}"] = (snapshot, only)
    for worker in range(4):
        runs[f"untouched-{worker}"] = (HARDENED, debian12_controls)
    judged = judge_many(work, runs)
    for worker in range(4):
        rows = judged[f"untouched-{worker}"]
        assert all(row["outcome"] in ("pass", "not-applicable") for row in rows.values()), \
            "the untouched snapshot no longer passes after the mutated ones: state carried over"
    cases = CASES + PARAM_CASES
    return {index: judged[f"case-{index}"][cases[index][0]] for index in range(len(cases))}


@pytest.mark.parametrize("index", range(len(CASES) + len(PARAM_CASES)),
                         ids=[f"{c[0]}: {c[1]}" for c in CASES + PARAM_CASES])
def test_the_smallest_non_compliant_change_fails_its_check(verdicts, index):
    control, what, _, word = (CASES + PARAM_CASES)[index]
    row = verdicts[index]
    assert row["outcome"] == "fail", f"{control} still {row['outcome']} after: {what}"
    assert word.lower() in row["message"].lower(), f"{control}'s message does not name the problem: {row['message']}"


def test_the_cases_cover_each_parser():
    covered = {c[0] for c in CASES}
    for group in ({"3.4.2.7", "3.4.2.4", "GA-FW-INBOUND"}, {"2.4", "2.2.15"}, {"5.2.3.4", "5.2.3.1", "5.2.3.6"},
                  {"4.5.1", "4.5.2", "4.5.3", "4.5.4", "GA-PWQUALITY-RULES", "GA-PAM-UNIX"}):
        assert group <= covered
    assert Path(HARDENED).is_file()


def test_pwhistory_reads_enforce_for_root_from_its_own_file(tmp_path, debian12_controls):
    """pam_pwhistory takes enforce_for_root as a bare keyword in pwhistory.conf too: moved there
    from the PAM line, 4.5.3 still passes; gone from both, it fails."""
    only = {**debian12_controls, "controls": [c for c in debian12_controls["controls"] if c["id"] == "4.5.3"]}
    runs = {}
    for name, conf in (("in-file", "enforce_for_root\n"), ("nowhere", "# nothing\n")):
        snapshot = json.loads(HARDENED.read_text())
        file("/etc/pam.d/common-password", sub(r" enforce_for_root", ""))(snapshot)
        _add_dropin("/etc/security/pwhistory.conf", conf)(snapshot)
        runs[name] = (snapshot, only)
    judged = judge_many(tmp_path, runs)
    assert judged["in-file"]["4.5.3"]["outcome"] == "pass", judged["in-file"]["4.5.3"]["message"]
    assert judged["nowhere"]["4.5.3"]["outcome"] == "fail"
    assert "enforce_for_root" in judged["nowhere"]["4.5.3"]["message"]


def test_a_configured_boot_password_hash_is_recognised_by_its_digest(tmp_path, debian12_controls):
    """The facts hold a digest of GRUB's hash (verify/collector.py): the image's hash passes
    as the configured one, another hash of the same password (another salt) does not."""
    import sys

    from golden_ami import paths

    sys.path.insert(0, str(paths.VERIFY_DIR))
    import collector

    ours = "grub.pbkdf2.sha512.10000." + "1F" * 64 + "." + "2E" * 64
    resalted = "grub.pbkdf2.sha512.10000." + "3D" * 64 + "." + "2E" * 64
    entry = next(c for c in debian12_controls["controls"] if c["id"] == "GA-BOOT-PASSWORD")
    snapshot = json.loads(HARDENED.read_text())
    file(GRUB_CFG, sub(r"grub\.pbkdf2\.sha512\.\S+", collector.redact_grub_hashes(ours)))(snapshot)
    runs = {name: (snapshot, {**debian12_controls, "controls": [{**entry, "params": {**entry["params"], "password_hash": h}}]})
            for name, h in (("same", ours), ("resalted", resalted))}
    judged = judge_many(tmp_path, runs)
    assert judged["same"]["GA-BOOT-PASSWORD"]["outcome"] == "pass", judged["same"]["GA-BOOT-PASSWORD"]["message"]
    assert judged["resalted"]["GA-BOOT-PASSWORD"]["outcome"] == "fail"
