"""Secrets baked into an image are found: on a planted root file system, by the in-build gate
(hardening/lib/secret-scan.sh.j2, run by bash as the build runs it) and by verify (the
collector's one grep walk, then the real checks judging the snapshot offline).

The root file system is a directory here: the same files a build or an agent could leave - an
AWS secret access key with no key id beside it (an environment file, the CLI's cache of an
assumed role's session), an access key id, an SSO token cache, a deploy key and a TLS key
outside the SSH host key paths, in /var, /opt, /usr/local and /srv - next to files that look
like them and are not (a short "secret", a public key, a binary file).
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from golden_ami import paths, render
from tests.unit.offline_suite import FACTS, controls_document, judge_many

sys.path.insert(0, str(paths.VERIFY_DIR))

import collector  # noqa: E402

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # AWS's documentation example, 40 characters
KEY_ID = "AKIAIOSFODNN7EXAMPLE"
PRIVATE = "-----BEGIN {kind}PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END {kind}PRIVATE KEY-----\n"

PLANTED = {
    "var/lib/app/env": f"REGION=us-east-1\nAWS_SECRET_ACCESS_KEY={SECRET}\n",
    "root/.aws/cli/cache/0123abcd.json": json.dumps({"Credentials": {"SecretAccessKey": SECRET}}),
    "srv/site/.env": f"AWS_ACCESS_KEY_ID={KEY_ID}\n",
    "opt/agent/deploy_key": PRIVATE.format(kind="OPENSSH "),
    "usr/local/etc/tls.key": PRIVATE.format(kind=""),
    "srv/backup/signing.asc": "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQVYBGV\n-----END PGP PRIVATE KEY BLOCK-----\n",
}
BENIGN = {
    "etc/ssh/ssh_host_ed25519_key": PRIVATE.format(kind="OPENSSH "),  # a host key: allowed
    "etc/app.conf": "secret_access_key = <set at boot from SSM>\n",
    "home/debian/.ssh/authorized_keys": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPUB debian\n",
    "var/log/app.log": "rotated the secret access key; new key id stored in SSM\n",
    "var/cache/blob.bin": "\0\1\2" + KEY_ID,  # binary: neither grep -I nor an image scan reads it
    "home/debian/.aws/sso/cache/": "",  # an empty cache directory holds no token
}
ROOTS = ("etc", "root", "home", "var", "opt", "usr/local", "srv", "tmp")


def _plant(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        if relative.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for relative in ROOTS:
        (root / relative).mkdir(parents=True, exist_ok=True)


def _params(root: Path) -> dict[str, dict]:
    """The two controls' params from the catalogue, with every absolute path moved under root."""
    document = controls_document("debian12")
    by_id = {c["id"]: copy.deepcopy(c["params"]) for c in document["controls"]
             if c["id"] in ("GA-HYG-AWSCREDS", "GA-HYG-PRIVKEYS")}
    for params in by_id.values():
        assert [p.lstrip("/") for p in params["scan_paths"]] == list(ROOTS), "the catalogue's scan paths changed"
        params["scan_paths"] = [str(root / p.lstrip("/")) for p in params["scan_paths"]]
        if "allowed_paths" in params:
            params["allowed_paths"] = [str(root / p.lstrip("/")) for p in params["allowed_paths"]]
    return by_id


@pytest.fixture
def planted(tmp_path) -> Path:
    root = tmp_path / "planted"
    _plant(root, {**PLANTED, **BENIGN})
    return root


@pytest.fixture
def clean(tmp_path) -> Path:
    root = tmp_path / "clean"
    _plant(root, BENIGN)
    return root


# --- the in-build gate --------------------------------------------------------------------------
def _gate(root: Path, homes: bool = True, grep_error: Optional[str] = None) -> list[str]:
    """The gate's failures for this root file system, run by bash with `fail` and `homes` as the
    hygiene script has them (homes=False: no home directories). grep_error: the walk ends with
    grep's exit 2 after printing it - as root nothing here is unreadable, so a wrapper makes the
    walk end so after it ran."""
    params = _params(root)
    script = render.shell_env().get_template("lib/secret-scan.sh.j2").render(
        controls={control_id: {"params": p} for control_id, p in params.items()})
    prelude = ("set -o errexit -o nounset -o pipefail\nfailures=0\n"
               "fail() { printf 'FAIL %s: %s\\n' \"$1\" \"$2\"; failures=$((failures + 1)); }\n"
               + (f"homes() {{ printf '%s\\n' {root / 'root'} {root / 'home/debian'}; }}\n" if homes
                  else "homes() { :; }\n"))
    env = {"PATH": "/usr/bin:/bin"}
    if grep_error is not None:
        prelude += ("real_grep=$(command -v grep)\n"
                    "grep() { if [ \"$1\" = -rIlE ]; then \"$real_grep\" \"$@\"; printf '%s\\n' \"$GREP_ERROR\" >&2;"
                    " return 2; fi; \"$real_grep\" \"$@\"; }\n")
        env["GREP_ERROR"] = grep_error
    done = subprocess.run(["bash", "-c", prelude + script], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr and "MIIEvQ" not in done.stdout + done.stderr
    return done.stdout.splitlines()


def test_the_gate_fails_on_every_planted_secret_and_names_no_secret(planted):
    failures = _gate(planted)
    root = str(planted)
    expected = [
        f"FAIL GA-HYG-AWSCREDS: {root}/root/.aws/cli/cache present",
        f"FAIL GA-HYG-AWSCREDS: AWS secret-access-key in {root}/var/lib/app/env",
        f"FAIL GA-HYG-AWSCREDS: AWS secret-access-key in {root}/root/.aws/cli/cache/0123abcd.json",
        f"FAIL GA-HYG-AWSCREDS: AWS access-key-id in {root}/srv/site/.env",
        f"FAIL GA-HYG-PRIVKEYS: private-key in {root}/opt/agent/deploy_key",
        f"FAIL GA-HYG-PRIVKEYS: private-key in {root}/usr/local/etc/tls.key",
        f"FAIL GA-HYG-PRIVKEYS: private-key in {root}/srv/backup/signing.asc",
    ]
    assert sorted(failures) == sorted(expected)


def test_the_gate_passes_host_keys_and_look_alikes(clean):
    assert _gate(clean) == []


def test_a_scan_that_does_not_complete_fails_the_gate(clean):
    assert _gate(clean, homes=False, grep_error="grep: /var/x: Input/output error") == [
        "FAIL GA-HYG-AWSCREDS: the scan for secrets did not complete (grep exit 2)",
        "FAIL GA-HYG-PRIVKEYS: the scan for secrets did not complete (grep exit 2)"]


def test_a_file_that_vanished_mid_scan_is_not_a_failed_scan(clean, planted):
    vanished = "grep: /var/lib/apt/lists/partial/x: No such file or directory"
    assert _gate(clean, homes=False, grep_error=vanished) == []
    assert len(_gate(planted, homes=False, grep_error=vanished)) == 6  # what it found still counts (no homes here)


# --- verify: the collector's walk, then the checks ---------------------------------------------------
def _scan(root: Path) -> dict:
    params = _params(root)
    request = {"paths": list(dict.fromkeys(p for c in params.values() for p in c["scan_paths"])),
               "patterns": {k: v for c in params.values() for k, v in c["patterns"].items()}}
    return collector.secret_scan(request)


def test_the_collector_names_files_and_kinds_never_the_secret(planted):
    scan = _scan(planted)
    assert scan["rc"] == 0 and scan["missing"] == []
    hits = {path[len(str(planted)) + 1:]: kinds for path, kinds in scan["hits"].items()}
    assert hits == {
        "var/lib/app/env": ["secret-access-key"],
        "root/.aws/cli/cache/0123abcd.json": ["secret-access-key"],
        "srv/site/.env": ["access-key-id"],
        "opt/agent/deploy_key": ["private-key"],
        "usr/local/etc/tls.key": ["private-key"],
        "srv/backup/signing.asc": ["private-key"],
        "etc/ssh/ssh_host_ed25519_key": ["private-key"],  # found; the check allows it by path
    }
    assert SECRET not in json.dumps(scan) and "MIIEvQ" not in json.dumps(scan) and KEY_ID not in json.dumps(scan)


def test_the_collector_tells_a_vanished_file_from_a_failed_walk(planted, monkeypatch):
    real_run = collector.run

    def ending_with(message):
        def run(argv, **kwargs):
            done = real_run(argv, **kwargs)
            return dict(done, rc=2, stderr=message + "\n") if argv[0] == "grep" else done
        return run

    monkeypatch.setattr(collector, "run", ending_with("grep: /var/lib/apt/lists/x: No such file or directory"))
    scan = _scan(planted)
    assert scan["rc"] == 0 and scan["vanished"] == 1 and len(scan["hits"]) == 7
    monkeypatch.setattr(collector, "run", ending_with("grep: /var/x: Input/output error"))
    assert _scan(planted)["rc"] == 2


def _snapshot_with(scan: dict, root: Path, cached: bool) -> dict:
    snapshot = json.loads((FACTS / "debian12-hardened.json").read_text())
    snapshot["collected"]["secret_scan"] = scan
    if cached:  # what the collector's tree of /root/.aws shows with an SSO token cached
        trees = snapshot["collected"]["trees"]
        directory = trees["/root"]["/root"]
        assert directory["exists"] and directory["type"] == "directory"
        tree = trees["/root/.aws"]
        for path, kind in (("/root/.aws", "directory"), ("/root/.aws/sso", "directory"),
                           ("/root/.aws/sso/cache", "directory"), ("/root/.aws/sso/cache/5ba1c0de.json", "file")):
            tree[path] = dict(directory, type=kind)
    return snapshot


def _document(root: Path) -> dict:
    """controls.json with the two secret controls only, their paths under root."""
    document = controls_document("debian12")
    params = _params(root)
    document["controls"] = [{**c, "params": params[c["id"]]} for c in document["controls"] if c["id"] in params]
    return document


def test_verify_fails_each_planted_secret_and_passes_a_clean_image(tmp_path, planted, clean):
    runs = {
        "planted": (_snapshot_with(_scan(planted), planted, cached=False), _document(planted)),
        "cached": (_snapshot_with(_scan(clean), clean, cached=True), _document(clean)),
        "clean": (_snapshot_with(_scan(clean), clean, cached=False), _document(clean)),
    }
    verdicts = judge_many(tmp_path / "judged", runs)
    planted_rows = verdicts["planted"]
    assert planted_rows["GA-HYG-AWSCREDS"]["outcome"] == "fail"
    for relative in ("var/lib/app/env (secret-access-key)", "srv/site/.env (access-key-id)",
                     "root/.aws/cli/cache/0123abcd.json (secret-access-key)"):
        assert f"{planted}/{relative}" in planted_rows["GA-HYG-AWSCREDS"]["message"]
    assert planted_rows["GA-HYG-PRIVKEYS"]["outcome"] == "fail"
    message = planted_rows["GA-HYG-PRIVKEYS"]["message"]
    for relative in ("opt/agent/deploy_key", "usr/local/etc/tls.key", "srv/backup/signing.asc"):
        assert f"{planted}/{relative}" in message
    assert "ssh_host_ed25519_key" not in message
    assert verdicts["cached"]["GA-HYG-AWSCREDS"]["outcome"] == "fail"
    assert "/root/.aws/sso/cache" in verdicts["cached"]["GA-HYG-AWSCREDS"]["message"]
    assert verdicts["cached"]["GA-HYG-PRIVKEYS"]["outcome"] == "pass"
    assert verdicts["clean"]["GA-HYG-AWSCREDS"]["outcome"] == "pass", verdicts["clean"]["GA-HYG-AWSCREDS"]
    assert verdicts["clean"]["GA-HYG-PRIVKEYS"]["outcome"] == "pass", verdicts["clean"]["GA-HYG-PRIVKEYS"]
