"""invoke audit without a host to audit: its command line, its pin, its output directory, and
how the pristine-image checks judge a lived-in host (golden_ami/audit.py, verify --ga-mode)."""
from __future__ import annotations

import copy
import json
import socket
import subprocess

import pytest

from golden_ami import audit, hostkeys, sshkeys
from golden_ami.errors import UsageError
from golden_ami.progress import Progress
from tests.conftest import invoke_cmd
from tests.unit.test_tasks import _one_line_error
from tests.unit.offline_suite import FACTS, controls_document, judge_many

KEY_LINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO/MwkRvu2/JNUmUbjmGGzzxWa+9CLzliv7kVzHKgZLB"


@pytest.fixture
def identity(tmp_path):
    return sshkeys.generate(tmp_path / "client", "id_ed25519", "audit-test").private_key_path


def _usage_error(proc, *needles):
    """Exit 2 and one line naming the problem."""
    _one_line_error(proc, *needles, code=2)


@pytest.mark.parametrize("args, needles", [
    ([], ["either --host", "not neither"]),
    (["--host=127.0.0.1", "--instance-id=i-0123456789abcdef0", "--target=aws"], ["not both"]),
    (["--instance-id=i-0123456789abcdef0"], ["--instance-id needs --target=aws"]),
    (["--host=127.0.0.1", "--identity={identity}", "--known-hosts={known_hosts}"], ["--user is required"]),
    (["--host=127.0.0.1", "--user=admin", "--known-hosts={known_hosts}"], ["--identity is required"]),
    (["--host=127.0.0.1", "--user=admin", "--identity={tmp}/nokey", "--known-hosts={known_hosts}"], ["no such file"]),
    (["--host=127.0.0.1", "--user=admin", "--identity={identity}"], ["--known-hosts FILE is required"]),
    (["--host=127.0.0.1", "--user=admin", "--identity={identity}", "--known-hosts={tmp}/none"],
     ["--known-hosts", "no such file"]),
    (["--host=127.0.0.1", "--user=admin", "--identity={identity}", "--known-hosts={known_hosts}",
      "--trust-first-use"], ["give one of them"]),
    (["--host=127.0.0.1", "--user=admin", "--identity={identity}", "--known-hosts={known_hosts}", "--out={tmp}"],
     ["exists already"]),
    (["--host=127.0.0.1", "--port=70000", "--user=admin", "--identity={identity}", "--known-hosts={known_hosts}"],
     ["not a TCP port"]),
])
def test_usage_errors_exit_2_with_one_line(state_dir, tmp_path, identity, args, needles):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"127.0.0.1 {KEY_LINE}\n")
    values = {"identity": identity, "known_hosts": known_hosts, "tmp": tmp_path}
    proc = invoke_cmd("audit", *[arg.format(**values) for arg in args])
    _usage_error(proc, *needles)
    assert not (state_dir / "audits").exists()


def test_a_usage_error_with_json_is_one_json_document(state_dir):
    proc = invoke_cmd("audit", "--json")
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"] == "usage"


def test_a_known_hosts_without_the_host_is_refused_before_connecting(state_dir, tmp_path, identity):
    """The known_hosts file pins other hosts only: exit 2 naming the host entry, and the port
    (a listener of this test's) never saw a connection."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(f"127.0.0.1 {KEY_LINE}\n[127.0.0.1]:{port + 1} {KEY_LINE}\n")
        proc = invoke_cmd("audit", "--host=127.0.0.1", f"--port={port}", "--user=admin", f"--identity={identity}",
                          f"--known-hosts={known_hosts}")
        _usage_error(proc, f"has no key for [127.0.0.1]:{port}", "--trust-first-use")
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert not (state_dir / "audits").exists()


def test_pinned_keys_finds_hashed_and_port_entries_only_for_that_host(tmp_path):
    known_hosts = tmp_path / "known_hosts"
    plain = tmp_path / "plain"
    plain.write_text(f"[10.0.0.5]:2222 {KEY_LINE}\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(plain)], check=True, capture_output=True)
    assert "10.0.0.5" not in plain.read_text()
    known_hosts.write_text(plain.read_text() + f"10.0.0.6 {KEY_LINE.replace('AAAAIO', 'AAAAIP')}\n")
    assert audit.pinned_keys(known_hosts, "10.0.0.5", 2222) == [("ssh-ed25519", KEY_LINE.split()[1])]
    with pytest.raises(UsageError, match=r"no key for 10.0.0.5"):
        audit.pinned_keys(known_hosts, "10.0.0.5", 22)


def test_the_default_output_directory_is_named_after_the_host_and_time(tmp_path):
    import datetime as dt

    when = dt.datetime(2026, 12, 2, 11, 0, tzinfo=dt.timezone.utc)
    assert audit.default_out(tmp_path, "10.0.0.5", when) == tmp_path / "audits" / "10.0.0.5-20261202T110000Z"
    assert audit.default_out(tmp_path, "../../etc", when).parent == tmp_path / "audits"


def _request(tmp_path, identity, **changes):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"127.0.0.1 {KEY_LINE}\n")
    return audit.AuditRequest(host="127.0.0.1", user="admin", identity=str(identity), known_hosts=str(known_hosts),
                              **changes)


def test_the_output_directory_is_complete_or_absent(state_dir, tmp_path, identity, monkeypatch):
    """An audit that breaks after writing part of its files leaves no directory (and no partial
    one); one that completes leaves every file it wrote under --out."""
    def breaks(req, settings, run_dir, progress):
        (run_dir / "report.json").write_text("{}")
        raise RuntimeError("the connection dropped")

    monkeypatch.setattr(audit, "_audit", breaks)
    out = tmp_path / "audits" / "one"
    out.parent.mkdir()
    with pytest.raises(RuntimeError, match="dropped"):
        audit.run(_request(tmp_path, identity, out=str(out)), Progress(quiet=True))
    assert list((tmp_path / "audits").iterdir()) == []

    def completes(req, settings, run_dir, progress):
        report = {"controls": [{"id": "1.1", "outcome": "pass"}], "summary": {"pass": 1}}
        (run_dir / "junit.xml").write_text("<testsuites/>")
        (run_dir / "report.json").write_text(json.dumps(report))
        return report

    monkeypatch.setattr(audit, "_audit", completes)
    report, where = audit.run(_request(tmp_path, identity, out=str(out)), Progress(quiet=True))
    assert where == out and sorted(p.name for p in out.iterdir()) == ["junit.xml", "report.json"]
    assert [p.name for p in (tmp_path / "audits").iterdir()] == ["one"]
    assert not audit.failed(report)


def test_trust_first_use_is_loud_and_written_down(tmp_path, identity, monkeypatch):
    """No pin: a WARNING line, and the host-key line of the report says what was trusted."""
    import io

    monkeypatch.setattr(hostkeys, "first_seen_host_key", lambda host, port, timeout: ("ssh-ed25519",
                                                                                        KEY_LINE.split()[1]))
    stream = io.StringIO()
    req = audit.AuditRequest(host="127.0.0.1", port=2222, user="admin", identity=str(identity), trust_first_use=True)
    audit.validate(req)
    connection = audit._connect_ssh(req, tmp_path, Progress(stream=stream))
    assert "WARNING: --trust-first-use: the host key is NOT pinned" in stream.getvalue()
    assert connection.host_key.startswith("trusted on first use (--trust-first-use): ssh-ed25519 SHA256:")
    assert (tmp_path / "known_hosts").read_text() == f"[127.0.0.1]:2222 {KEY_LINE}\n"


# --- audit mode in the suite: the pristine-image checks on a lived-in host -----------------------
PRISTINE = ("GA-HYG-AUTHKEYS", "GA-HYG-CLOUDINIT", "GA-HYG-HOSTKEYS", "GA-HYG-MACHINEID")


def _lived_in(snapshot: dict) -> None:
    """What months of running do: the owners' own key, a relaunch's cloud-init state, reboots."""
    collected = snapshot["collected"]
    authorized = collected["files"]["/home/debian/.ssh/authorized_keys"]
    authorized["content"] += KEY_LINE + " ops@example\n"
    instances = collected["trees"]["/var/lib/cloud/instances"]
    instances["/var/lib/cloud/instances/i-0relaunched000000"] = dict(instances["/var/lib/cloud/instances"])
    btime = next(int(line.split()[1]) for line in collected["files"]["/proc/stat"]["content"].splitlines()
                 if line.startswith("btime "))
    for path, entry in collected["files"].items():
        if path.startswith("/etc/ssh/ssh_host_") or path == "/etc/machine-id":
            entry["stat"]["mtime"] = btime - 86400 * 30
    for path, entry in collected["trees"]["/etc/ssh"].items():
        if path.startswith("/etc/ssh/ssh_host_") and entry.get("exists"):
            entry["mtime"] = btime - 86400 * 30


def test_audit_mode_judges_a_lived_in_host_by_what_still_holds(tmp_path, state_dir):
    """The same lived-in snapshot fails all four pristine-image checks in verify mode and passes
    them in audit mode; in audit mode a writable authorized_keys and a missing state of this
    instance still fail, naming what is wrong."""
    hardened = json.loads((FACTS / "debian12-hardened.json").read_text())
    document = controls_document("debian12")
    document["controls"] = [c for c in document["controls"] if c["id"] in PRISTINE]
    assert len(document["controls"]) == len(PRISTINE)

    def variant(mode: str, *edits) -> dict:
        snapshot = copy.deepcopy(hardened)
        snapshot["context"] = {**snapshot["context"], "mode": mode, "login_public_key": "" if mode == "audit"
                               else snapshot["context"]["login_public_key"]}
        for edit in edits:
            edit(snapshot)
        return snapshot

    def writable_keys(snapshot):
        snapshot["collected"]["trees"]["/home/debian/.ssh"]["/home/debian/.ssh/authorized_keys"]["mode"] = "0666"

    def another_instance(snapshot):
        snapshot["context"]["instance_id"] = "i-0thisinstance00000"

    rows = judge_many(tmp_path, {
        "verify": (variant("verify", _lived_in), document),
        "audit": (variant("audit", _lived_in), document),
        "audit-writable": (variant("audit", _lived_in, writable_keys, another_instance), document),
    })
    assert {cid: rows["verify"][cid]["outcome"] for cid in PRISTINE} == dict.fromkeys(PRISTINE, "fail"), rows["verify"]
    assert {cid: rows["audit"][cid]["outcome"] for cid in PRISTINE} == dict.fromkeys(PRISTINE, "pass"), rows["audit"]
    broken = rows["audit-writable"]
    assert broken["GA-HYG-AUTHKEYS"]["outcome"] == "fail"
    assert "/home/debian/.ssh/authorized_keys" in broken["GA-HYG-AUTHKEYS"]["message"]
    assert broken["GA-HYG-CLOUDINIT"]["outcome"] == "fail"
    assert "no state of this instance (i-0thisinstance00000)" in broken["GA-HYG-CLOUDINIT"]["message"]
    assert set(audit.AUDIT_JUDGED) == set(PRISTINE)


def test_the_audit_mode_updates_question_is_another_command_that_writes_only_a_temporary_directory():
    import sys

    from golden_ami import paths

    sys.path.insert(0, str(paths.VERIFY_DIR))
    try:
        import ga_facts
    finally:
        sys.path.remove(str(paths.VERIFY_DIR))
    assert ga_facts.pending_updates_name("apt") == "pending_updates:apt"
    assert ga_facts.pending_updates_name("apt", "audit") == "pending_updates:apt:audit"
    for manager in ("apt", "dnf"):
        command = ga_facts.DYNAMIC[ga_facts.pending_updates_name(manager, "audit")][0]
        assert command.startswith("d=$(mktemp -d) && trap 'rm -rf \"$d\"' EXIT")
    apt = ga_facts.DYNAMIC["pending_updates:apt:audit"][0]
    assert apt.count('-c "$d/apt.conf"') == 2 and "#clear APT::Update::Post-Invoke-Success;" in apt
    assert "Dir::State::Lists \"%s/lists\"" in apt
