"""Image hygiene after boot: nothing from the build survived into this instance."""
import base64
import hashlib

import pytest


@pytest.fixture(scope="module")
def boot_time(facts) -> int:
    """Seconds since the epoch when the instance booted (files older than this were baked in)."""
    for line in facts.content("/proc/stat").splitlines():
        if line.startswith("btime "):
            return int(line.split()[1])
    raise AssertionError("/proc/stat has no btime line")


@pytest.fixture(scope="module")
def homes(facts) -> list[str]:
    return facts.section("homes")


def _audit(facts) -> bool:
    """Audit mode: a running instance someone else booted and lives on (invoke audit). The checks
    about the pristine image - this boot's own key, this boot's cloud-init state, files made at
    this boot - judge what still holds on a lived-in host instead (golden_ami/audit.py notes it
    on their rows)."""
    return facts.context.get("mode") == "audit"


def _in_home(facts, home, *names):
    """Stat of home/<name> for each name, from the home's listing (None: absent)."""
    listing = facts.tree(home)
    return {name: listing.get(f"{home}/{name}") for name in names}


@pytest.mark.control("GA-HYG-HOSTKEYS")
def test_host_keys_generated_at_first_boot(facts, boot_time):
    keys = facts.glob("/etc/ssh/ssh_host_*_key")
    assert keys, "no SSH host keys on the instance"
    if not _audit(facts):  # (a running host has rebooted since its keys were made)
        old = [key for key in keys if facts.stat(key).mtime < boot_time]
        assert not old, f"host keys older than this boot (baked into the image): {', '.join(old)}"
    # The keys on disk are the ones the console announced and this connection was pinned to.
    pinned = {entry.split()[1] for entry in facts.context.get("pinned_host_keys", []) if len(entry.split()) >= 2}
    on_disk = {line.split()[1] for path in facts.glob("/etc/ssh/ssh_host_*_key.pub")
               for line in facts.content(path).splitlines() if len(line.split()) >= 2}
    assert on_disk & pinned, "none of the instance's host keys is among the keys pinned from the console"


def _key_blobs(text):
    """The base64 part of each key line (options may come before the key type)."""
    blobs = []
    for line in text.splitlines():
        tokens = line.split()
        for index, token in enumerate(tokens[:-1]):
            if token.startswith(("ssh-", "ecdsa-", "sk-")):
                blobs.append(tokens[index + 1])
                break
    return blobs


def _sha256(blob):
    digest = hashlib.sha256(base64.b64decode(blob + "=" * (-len(blob) % 4))).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _unsafe_key_files(facts, homes):
    """authorized_keys files (and their .ssh directories) that someone other than the home's
    owner or root could change: owned by another account, or writable by group or others."""
    unsafe = []
    for home in homes:
        owner = facts.tree(home).get(home)
        listing = facts.tree(f"{home}/.ssh")
        for path in (f"{home}/.ssh", f"{home}/.ssh/authorized_keys", f"{home}/.ssh/authorized_keys2"):
            st = listing.get(path)
            if st is None or owner is None:
                continue
            if st.uid not in (0, owner.uid) or st.mode & 0o022:
                unsafe.append(str(st))
    return unsafe


@pytest.mark.control("GA-HYG-AUTHKEYS")
def test_only_the_verify_key_is_authorized(facts, homes):
    if _audit(facts):  # which keys a running host authorizes is its owners' business; who may change them is not
        unsafe = _unsafe_key_files(facts, homes)
        assert not unsafe, f"authorized keys others can change (owner not the home's, or group/world-writable): " \
                           f"{', '.join(unsafe)}"
        return
    allowed = set(_key_blobs(facts.context.get("login_public_key", "")))
    leftovers = {}
    for home in homes:
        for name in ("authorized_keys", "authorized_keys2"):
            text = facts.text(f"{home}/.ssh/{name}")
            if text is not None:
                extra = [_sha256(b) for b in _key_blobs(text) if b not in allowed]
                if extra:
                    leftovers[f"{home}/.ssh/{name}"] = extra
    assert not leftovers, f"keys other than this verification's own are authorized: {leftovers}"


@pytest.mark.control("GA-HYG-CLOUDINIT")
def test_cloud_init_state_is_this_boots_only(facts):
    root = "/var/lib/cloud/instances"
    listing = facts.tree(root)
    instances = sorted(path.rsplit("/", 1)[-1] for path in listing if path.rsplit("/", 1)[0] == root)
    expected = facts.context.get("instance_id", "")
    if _audit(facts):  # a running host may have been re-launched; its own state must be there when its id is known
        assert instances, "cloud-init holds no instance state"
        assert not expected or expected in instances, \
            f"cloud-init holds no state of this instance ({expected}): {', '.join(instances)}"
        return
    assert len(instances) == 1, f"cloud-init holds state of {len(instances)} instances: {', '.join(instances)}"
    if expected:
        assert instances == [expected], f"cloud-init state belongs to {instances[0]}, not to this boot ({expected})"


@pytest.mark.control("GA-HYG-MACHINEID")
def test_machine_id_generated_at_first_boot(facts, boot_time):
    machine_id = facts.content("/etc/machine-id").strip()
    assert len(machine_id) == 32 and all(c in "0123456789abcdef" for c in machine_id), \
        f"/etc/machine-id is not a machine id: {machine_id!r}"
    if not _audit(facts):  # (a running host has rebooted since its first boot)
        assert facts.stat("/etc/machine-id").mtime >= boot_time, "/etc/machine-id predates this boot: it was baked in"


@pytest.mark.control("GA-HYG-HISTORY")
def test_no_shell_history(facts, homes):
    names = (".bash_history", ".zsh_history", ".sh_history", ".python_history")
    present = [f"{home}/{name}" for home in homes for name, st in _in_home(facts, home, *names).items() if st]
    assert not present, f"shell history present: {', '.join(present)}"


def _scan_findings(scan, params):
    """{file: kinds} of the scan's hits under this control's own roots that match one of its own
    patterns (a hit whose kind could not be told counts for every control)."""
    missing = [path for path in params["scan_paths"] if path in scan.get("missing", [])]
    assert not missing, f"paths to scan do not exist: {', '.join(missing)} (the scan would prove nothing)"
    unscanned = [path for path in params["scan_paths"] if path not in scan.get("paths", [])]
    assert not unscanned, f"the scan did not cover {', '.join(unscanned)}"
    absent = sorted(set(params["patterns"]) - set(scan.get("patterns", [])))
    assert not absent, f"the scan did not look for {', '.join(absent)}"
    # grep: 0 = found, 1 = nothing found; anything else is a scan that did not complete.
    rc = scan.get("rc")
    assert rc in (0, 1), f"the scan for secrets did not complete (exit {rc}): " \
                         f"{' '.join((scan.get('stderr') or scan.get('error') or '').split())[:300]}"
    roots = tuple(path.rstrip("/") + "/" for path in params["scan_paths"])
    findings = {}
    for path, kinds in scan.get("hits", {}).items():
        mine = [kind for kind in kinds if kind in params["patterns"] or kind not in scan["patterns"]]
        if mine and path.startswith(roots):
            findings[path] = mine
    return findings


@pytest.mark.control("GA-HYG-AWSCREDS")
def test_no_static_aws_credentials(facts, homes, params, secret_scan):
    # The CLI's credentials file, and a cache directory only when something is cached in it.
    present = []
    for home in homes:
        listing = facts.tree(f"{home}/.aws")
        for relative in params["home_paths"]:
            path = f"{home}/{relative}"
            st = listing.get(path)
            if st is not None and (st.type != "directory" or any(p.startswith(path + "/") for p in listing)):
                present.append(path)
    assert not present, f"AWS credentials or cached credentials present: {', '.join(present)}"
    findings = _scan_findings(secret_scan, params)
    assert not findings, "AWS keys found in: " + ", ".join(f"{path} ({', '.join(kinds)})" for path, kinds in findings.items())


@pytest.mark.control("GA-HYG-PRIVKEYS")
def test_no_private_keys_but_the_host_keys(params, secret_scan):
    findings = {path: kinds for path, kinds in _scan_findings(secret_scan, params).items()
                if path not in params["allowed_paths"]}
    assert not findings, "private keys baked into the image: " + ", ".join(sorted(findings))
