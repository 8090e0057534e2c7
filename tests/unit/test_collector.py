"""The fact collector and the snapshot readers: nothing secret leaves the host, nothing
missing reads as compliant, and what reaches a shell is base64 only."""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from golden_ami import paths

sys.path.insert(0, str(paths.VERIFY_DIR))

import collector  # noqa: E402
import ga_facts  # noqa: E402


def test_password_hashes_are_reduced_to_their_scheme():
    text = "root:$y$j9T$salt$hash:19000:0:99999:7:::\nbin:*:19000::::::\nold:!$6$abc$def:1::::::\nempty::1::::::\n"
    redacted = collector.redact_accounts(text)
    assert "hash" not in redacted and "def" not in redacted and "salt" not in redacted
    lines = redacted.splitlines()
    assert lines[0].startswith("root:$y$<redacted>:19000:")
    assert lines[1] == "bin:*:19000::::::"
    assert lines[2].startswith("old:!$6$<redacted>:")
    assert lines[3].startswith("empty::"), "an empty password field must stay visible as empty"


def test_grub_password_hashes_keep_their_cost_and_a_digest_only(tmp_path):
    salt, digest = "9F" * 64, "0a" * 64
    grub_hash = f"grub.pbkdf2.sha512.10000.{salt}.{digest}"
    cfg = tmp_path / "grub.cfg"
    cfg.write_text(f'set superusers="bootadmin"\npassword_pbkdf2 bootadmin {grub_hash}\n')
    read = collector.read_file(str(cfg))["content"]
    assert salt not in read and digest not in read
    kept = read.splitlines()[1].split()[2]
    assert kept == collector.redact_grub_hashes(grub_hash)
    assert kept.startswith("grub.pbkdf2.sha512.10000.<redacted-sha256:") and len(kept) < 64
    other = collector.redact_grub_hashes(grub_hash.replace("9F", "9E", 1))
    assert other != kept, "two hashes must stay told apart"


def test_secrets_are_stat_ed_never_read(tmp_path, monkeypatch):
    monkeypatch.setattr(collector, "NEVER_READ", (str(tmp_path / "ssh_host_*_key"),))
    key = tmp_path / "ssh_host_ed25519_key"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert collector.read_file(str(key)) == {"skipped": "not read on purpose (secret)"}
    assert collector.stat_entry(str(key))["exists"]


def test_a_missing_file_and_an_unreadable_one_are_told_apart(tmp_path):
    assert collector.read_file(str(tmp_path / "absent")) == {"exists": False}
    assert collector.stat_entry(str(tmp_path / "absent")) == {"exists": False}
    assert collector.read_file(str(tmp_path)) == {"skipped": "a directory"}


def test_a_command_records_its_status_and_a_missing_tool_says_so():
    ok = collector.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (ok["rc"], ok["stdout"], ok["stderr"]) == (3, "out\n", "err\n")
    missing = collector.run(["no-such-tool-here"])
    assert missing["rc"] is None and missing["error"].endswith("command not found")


def test_a_directory_that_cannot_be_listed_is_marked(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "inside").write_text("x")
    real_scandir = os.scandir

    def scandir(path="."):  # root may read anything: make one directory refuse it
        if str(path) == str(tmp_path / "a"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    listing = collector.tree(str(tmp_path), 2)
    assert "Permission denied" in listing[str(tmp_path / "a")]["list_error"]
    facts = _snapshot(trees={str(tmp_path): listing})
    with pytest.raises(ga_facts.FactUnavailable, match="cannot list"):
        facts.tree(str(tmp_path))


def test_a_process_whose_program_was_replaced_on_disk_is_named(tmp_path):
    """This machine's kernel, not a fixture: a copy of sleep runs, its file is deleted (as an
    upgrade replaces one), and the collector names the process and the file."""
    import shutil

    program = tmp_path / "ga-replaced"
    shutil.copy("/bin/sleep", program)
    proc = subprocess.Popen([str(program), "60"])
    try:
        before = [e for e in collector.replaced_code() if e["pid"] == proc.pid]
        program.unlink()
        after = [e for e in collector.replaced_code() if e["pid"] == proc.pid]
    finally:
        proc.kill()
        proc.wait()
    assert before == []
    assert after == [{"pid": proc.pid, "comm": "ga-replaced", "path": str(program)}]


def test_the_collector_runs_as_a_script_and_its_output_decodes(tmp_path):
    """The exact command a verify run sends, run here as a plain process (no SSH)."""
    request = {"login_user": "root", "package_manager": "apt", "read": ["/etc/os-release", "/etc/no-such-file"],
               "stat": [], "trees": [], "modules": [], "units": [], "optional": []}
    fmt, arguments = ga_facts.collector_command(request)
    assert fmt == "python3 -c %s %s %s"
    # Only the bootstrap and base64 reach the shell: no quote, dollar, space or semicolon in the data.
    assert all(re.fullmatch(r"[A-Za-z0-9+/=]+", a) for a in arguments[1:])
    proc = subprocess.run([sys.executable, "-c", *arguments], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    snapshot = ga_facts.decode_output(proc.stdout)
    assert "ID=" in snapshot["files"]["/etc/os-release"]["content"]
    assert snapshot["files"]["/etc/no-such-file"]["stat"] == {"exists": False}
    assert snapshot["commands"]["sshd_T_login"]["rc"] is None, "no SSH session here: the login context is unknown"
    assert "SSH_CONNECTION" in snapshot["commands"]["sshd_T_login"]["error"]


# --- the readers -----------------------------------------------------------------------------
def _snapshot(**collected) -> ga_facts.Snapshot:
    return ga_facts.Snapshot({"schema": 1, "collected": {"commands": {}, "files": {}, **collected}})


def test_a_fact_that_was_not_collected_fails_the_check():
    facts = _snapshot()
    for read in (lambda: facts.output("sshd_T"), lambda: facts.text("/etc/login.defs"),
                 lambda: facts.stat("/etc/shadow"), lambda: facts.glob("/etc/pam.d/*"), lambda: facts.tree("/var/log")):
        with pytest.raises(ga_facts.FactUnavailable, match="not collected"):
            read()


def test_a_failed_command_fails_and_an_absent_tool_is_absent():
    facts = _snapshot(commands={
        "sshd_T": {"argv": ["sshd", "-T"], "rc": 255, "stdout": "", "stderr": "Missing privilege separation directory"},
        "postconf_inet_interfaces": {"argv": ["postconf"], "rc": None, "error": "postconf: command not found"},
    })
    with pytest.raises(ga_facts.FactUnavailable, match="exited 255: Missing privilege"):
        facts.output("sshd_T")
    assert facts.optional_output("postconf_inet_interfaces") is None


def test_absent_unreadable_and_secret_files():
    facts = _snapshot(files={
        "/absent": {"stat": {"exists": False}, "exists": False},
        "/unreadable": {"stat": {"exists": True, "type": "file", "mode": "0600", "uid": 0, "gid": 0},
                        "error": "PermissionError: Permission denied"},
    })
    assert facts.text("/absent") is None and facts.stat("/absent") is None
    with pytest.raises(ga_facts.FactUnavailable, match="Permission denied"):
        facts.text("/unreadable")


def test_a_recorded_snapshot_replays_dynamic_commands_and_never_runs_them():
    facts = _snapshot()
    facts.data["dynamic"]["pending_updates:apt"] = {"command": "apt-get …", "rc": 100, "stdout": "", "stderr": "E: x"}
    with pytest.raises(ga_facts.FactUnavailable, match="exited 100"):
        facts.dynamic_output("pending_updates:apt")
    with pytest.raises(ga_facts.FactUnavailable, match="recorded snapshots only replay"):
        facts.dynamic_output("imds_probe")


def test_every_process_s_context_and_program_are_read_kernel_threads_left_out():
    """This machine's /proc: a process started here is listed with its program and the context
    its kernel reports (SELinux's on Amazon Linux; here, AppArmor's or none); kthreadd (PID 2) has
    no program and is not listed."""
    proc = subprocess.Popen(["/bin/sleep", "60"])
    try:
        listed = {entry["pid"]: entry for entry in collector.process_labels()}
    finally:
        proc.kill()
        proc.wait()
    try:
        expected_label = Path(f"/proc/{os.getpid()}/attr/current").read_text().strip("\0\n ")
    except OSError:
        expected_label = None  # no security module gives this machine's processes a context
    assert listed[os.getpid()] == {"pid": os.getpid(), "exe": os.path.realpath(sys.executable), "label": expected_label}
    assert listed[proc.pid]["exe"] == os.path.realpath("/bin/sleep")
    assert 2 not in listed


def test_the_kernel_s_filesystem_modules_and_what_needs_them_are_read_from_modules_dep(tmp_path):
    (tmp_path / "6.8.0-1021-aws").mkdir()
    (tmp_path / "6.8.0-1021-aws" / "modules.dep").write_text(
        "kernel/fs/nfs/nfs.ko.zst: kernel/fs/lockd/lockd.ko.zst kernel/fs/netfs/netfs.ko.zst "
        "kernel/net/sunrpc/sunrpc.ko.zst\n"
        "kernel/fs/lockd/lockd.ko.zst: kernel/net/sunrpc/sunrpc.ko.zst\n"
        "kernel/fs/netfs/netfs.ko.zst:\n"
        "kernel/fs/nls/nls_iso8859-1.ko.zst:\n"
        "kernel/net/sunrpc/sunrpc.ko.zst:\n"
        "kernel/drivers/net/sample.ko: kernel/fs/netfs/netfs.ko.zst\n")
    # An older kernel, still installed: its nfs also needs fscache, which the running one has
    # standalone - needed there is needed (the hardening's drop-in applies to both).
    (tmp_path / "6.8.0-1019-aws").mkdir()
    (tmp_path / "6.8.0-1019-aws" / "modules.dep").write_text(
        "kernel/fs/nfs/nfs.ko.zst: kernel/fs/fscache/fscache.ko.zst\nkernel/fs/fscache/fscache.ko.zst:\n"
        "kernel/fs/erofs/erofs.ko.zst:\n")
    (tmp_path / "6.8.0-1021-aws" / "modules.dep").write_text(
        (tmp_path / "6.8.0-1021-aws" / "modules.dep").read_text() + "kernel/fs/fscache/fscache.ko.zst:\n")
    assert collector.filesystem_modules("6.8.0-1021-aws", str(tmp_path)) == {
        "filesystems": ["fscache", "lockd", "netfs", "nfs", "nls_iso8859_1"],
        "needs": {"nfs": ["fscache", "lockd", "netfs"], "sample": ["netfs"]}}
    missing = collector.filesystem_modules("6.1.0-99-cloud-amd64", str(tmp_path))
    assert missing == {"error": f"{tmp_path}/6.1.0-99-cloud-amd64/modules.dep: No such file or directory"}
    request = ga_facts.build_request([{"id": "GA-MODULE-FS-UNUSED", "params": {"modules_kept": ["ext4"]}}],
                                     {"package_manager": "apt", "paths": {}}, {"login_user": "ubuntu", "agents": {}},
                                     set())
    assert request["filesystem_modules"] is True


def test_the_selinux_facts_are_asked_for_only_by_their_checks():
    os_data = {"package_manager": "dnf", "paths": {}}
    target = {"login_user": "ec2-user", "agents": {}}
    enforcing = {"id": "1.6.1.5", "params": {"mode": "enforcing"}}
    services = {"id": "1.6.1.6", "params": {"domains": ["unconfined_service_t"]}}
    request = ga_facts.build_request([enforcing, services], os_data, target, set())
    assert request["selinux_denials"] is True and request["process_labels"] is True
    assert collector.commands_for(request, {})["selinux_denials"][:3] == ["ausearch", "--message",
                                                                         "AVC,USER_AVC,SELINUX_ERR"]
    without = ga_facts.build_request([{"id": "1.6.1.4", "params": {}}], os_data, target, set())
    assert "selinux_denials" not in without and "process_labels" not in without
    assert "selinux_denials" not in collector.commands_for(without, {})


def test_the_request_asks_for_what_the_controls_name():
    controls = [{"id": "1.1.1.3", "params": {"module": "cramfs"}},
                {"id": "4.1.1", "params": {"package": "cron", "service": "cron"}},
                {"id": "1.7.1", "params": {"path": "/etc/motd"}},
                {"id": "6.1.11", "params": {"skip_fstypes": ["vfat"], "skip_paths": ["/proc"]}}]
    os_data = {"package_manager": "apt", "paths": {"nftables_conf": "/etc/nftables.conf"},
               "services": {"audit": "auditd"}, "conflicting_firewalls": ["ufw"]}
    request = ga_facts.build_request(controls, os_data, {"login_user": "debian", "agents": {}}, {"walk"})
    assert request["modules"] == ["cramfs"] and "/etc/motd" in request["stat"]
    assert {"cron.service", "auditd.service", "ufw.service", "systemd-journald.service"} <= set(request["units"])
    assert request["walk"]["scan"] == {"skip_fstypes": ["vfat"], "skip_paths": ["/proc"]}
    assert "secret_scan" not in request


def test_the_request_reads_a_controls_conf_files_and_runs_aide_only_for_its_check():
    aide = {"id": "1.3.1", "params": {"binary": "/usr/bin/aide", "aide_conf": "/etc/aide/aide.conf",
                                      "database": "/var/lib/aide/aide.db"}}
    timer = {"id": "1.3.2", "params": {"service_conf": "/etc/systemd/system/aidecheck.service",
                                       "units": ["aidecheck.timer"]}}
    os_data = {"package_manager": "apt", "paths": {}}
    request = ga_facts.build_request([aide, timer], os_data, {"login_user": "debian", "agents": {}}, set())
    assert {"/etc/aide/aide.conf", "/etc/systemd/system/aidecheck.service"} <= set(request["read"])
    assert "/var/lib/aide/aide.db" in request["stat"] and "/var/lib/aide/aide.db" not in request["read"]
    assert request["file_integrity"] == {"binary": "/usr/bin/aide", "config": "/etc/aide/aide.conf"}
    commands = collector.commands_for(request, {})
    assert commands["aide_check"] == ["/usr/bin/aide", "--config", "/etc/aide/aide.conf", "--check"]
    without = ga_facts.build_request([timer], os_data, {"login_user": "debian", "agents": {}}, set())
    assert "file_integrity" not in without and "aide_check" not in collector.commands_for(without, {})


def test_the_snapshot_is_sealed_by_its_digest(tmp_path):
    facts = _snapshot()
    path = tmp_path / "facts.json"
    path.write_bytes(facts.dump())
    assert ga_facts.Snapshot.load(path).digest() == facts.digest()
    document = json.loads(path.read_text())
    assert document["schema"] == 1
    raw = base64.b64encode(zlib.compress(json.dumps({"a": 1}).encode())).decode()
    assert ga_facts.decode_output(raw + "\n") == {"a": 1}


def test_the_latency_proxy_passes_bytes_intact():
    import socket
    import threading

    sys.path.insert(0, str(Path(paths.PROJECT_ROOT) / "bench"))
    from latency_proxy import LatencyProxy

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    payload = os.urandom(200_000)
    with LatencyProxy(server.getsockname(), one_way_seconds=0.01) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as client:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := client.recv(65536):
                received += chunk
    server.close()
    assert received == payload


def test_augenrules_order_is_ls_v_order(tmp_path):
    """augenrules merges rules.d in `ls -1v` order; the in-process copy must sort the same."""
    from ga_audit import _file_version_key

    names = ["60-golden-ami-usermod.rules", "60-golden-ami-user-emulation.rules", "10-a.rules", "9-b.rules",
             "60-x2.rules", "60-x10.rules", "60-X.rules", "60-x~1.rules", "audit.rules", "50_z.rules", "a.b.rules"]
    for name in names:
        (tmp_path / name).touch()
    listed = subprocess.run(["ls", "-1v", str(tmp_path)], capture_output=True, text=True, check=True).stdout.split()
    assert sorted(names, key=_file_version_key) == listed


def test_augenrules_output_is_byte_for_byte():
    from ga_audit import AUGENRULES_HEADER, augenrules_output

    written = augenrules_output({"99-end.rules": "-e 2\n", "10-a.rules": "# comment\n\n-D\n-b 8192\n-w /etc/passwd -p wa -k identity\n",
                                 "notes.txt": "-w /ignored"})
    assert written == f"{AUGENRULES_HEADER}\n-D\n-b 8192\n\n-w /etc/passwd -p wa -k identity\n-e 2\n"


def _fake_verifier(monkeypatch, listing: dict, outputs: dict):
    """collector.run answering the package list with `listing` and each verification slice with
    the concatenated outputs of its packages (rpm's way: non-zero when any differ)."""
    calls = []

    def fake_run(argv, timeout=None, env=None):
        calls.append(argv)
        if argv in collector.PACKAGE_LISTS.values():
            return listing
        names = argv[argv.index("--") + 1:] if "--" in argv else list(outputs)
        out = "".join(outputs.get(name, "") for name in names)
        return {"argv": argv, "rc": 1 if out and argv[0] == "rpm" else 0, "stdout": out, "stderr": ""}

    monkeypatch.setattr(collector, "run", fake_run)
    return calls


def test_package_verification_split_over_cpus_says_what_one_process_would(monkeypatch):
    listing = {"rc": 0, "stdout": "installed bash\ninstalled sudo\nconfig-files gone\nnot-installed never\n"
                                  "installed openssh-server\n", "stderr": ""}
    outputs = {"sudo": "??5?????? c /etc/sudoers\n", "openssh-server": "??5??????   /usr/sbin/sshd\n"}
    calls = _fake_verifier(monkeypatch, listing, outputs)
    merged = collector.run_split_by_package(["dpkg", "--verify"], 2)
    slices = [c[c.index("--") + 1:] for c in calls[1:]]
    assert sorted(slices) == [["bash", "openssh-server"], ["sudo"]]  # interleaved; no package without files
    assert all(c[:2] == ["dpkg", "--verify"] for c in calls[1:])
    assert sorted(merged["stdout"].splitlines()) == sorted("".join(outputs.values()).splitlines())
    assert merged["rc"] == 0 and merged["argv"] == ["dpkg", "--verify"] and merged["parts"] == 2


def test_a_split_rpm_verification_keeps_its_options_and_its_failure_status(monkeypatch):
    listing = {"rc": 0, "stdout": "installed bash-5.2-1.x86_64\ninstalled sudo-1.9-1.x86_64\n", "stderr": ""}
    calls = _fake_verifier(monkeypatch, listing, {"sudo-1.9-1.x86_64": "S.5....T.    /usr/bin/sudo\n"})
    merged = collector.run_split_by_package(["rpm", "-Va", "--nomtime", "--noghost"], 2)
    assert all(c[:4] == ["rpm", "-V", "--nomtime", "--noghost"] for c in calls[1:])
    assert merged["rc"] == 1 and merged["stdout"] == "S.5....T.    /usr/bin/sudo\n"


def test_without_a_package_list_the_verification_runs_whole(monkeypatch):
    calls = _fake_verifier(monkeypatch, {"rc": 2, "stdout": "", "stderr": "dpkg-query: error"}, {})
    collector.run_split_by_package(["dpkg", "--verify"], 2)
    assert calls[-1] == ["dpkg", "--verify"]


def test_on_one_cpu_the_verification_runs_whole_without_listing_packages(monkeypatch):
    calls = _fake_verifier(monkeypatch, {"rc": 0, "stdout": "installed bash\n", "stderr": ""}, {})
    collector.run_split_by_package(["dpkg", "--verify"], 1)
    assert calls == [["dpkg", "--verify"]]
