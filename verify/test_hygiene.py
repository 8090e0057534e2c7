"""Image hygiene after boot: nothing from the build survived into this instance."""
import base64
import hashlib
import shlex

import pytest


def _mtime(host, path):
    return int(host.check_output(f"stat -c %Y {shlex.quote(path)}"))


@pytest.mark.control("GA-HYG-HOSTKEYS")
def test_host_keys_generated_at_first_boot(host, boot_time, pytestconfig):
    keys = host.check_output("ls /etc/ssh/ssh_host_*_key 2>/dev/null || true").split()
    assert keys, "no SSH host keys on the instance"
    old = [k for k in keys if _mtime(host, k) < boot_time]
    assert not old, f"host keys older than this boot (baked into the image): {', '.join(old)}"
    # The keys on disk are the ones the console announced and this connection was pinned to.
    pinned = set()
    for line in open(pytestconfig.getoption("--ga-known-hosts")):
        parts = line.split()
        if len(parts) >= 3:
            pinned.add(parts[2])
    on_disk = {line.split()[1] for line in host.check_output("cat /etc/ssh/ssh_host_*_key.pub").splitlines() if line}
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


@pytest.mark.control("GA-HYG-AUTHKEYS")
def test_only_the_verify_key_is_authorized(host, homes, pytestconfig):
    allowed = set(_key_blobs(pytestconfig.getoption("--ga-login-public-key")))
    leftovers = {}
    for home in homes:
        for name in ("authorized_keys", "authorized_keys2"):
            path = f"{home}/.ssh/{name}"
            if host.file(path).exists:
                extra = [_sha256(b) for b in _key_blobs(host.file(path).content_string) if b not in allowed]
                if extra:
                    leftovers[path] = extra
    assert not leftovers, f"keys other than this verification's own are authorized: {leftovers}"


@pytest.mark.control("GA-HYG-CLOUDINIT")
def test_cloud_init_state_is_this_boots_only(host, pytestconfig):
    instances = host.check_output("ls -1 /var/lib/cloud/instances 2>/dev/null || true").split()
    expected = pytestconfig.getoption("--ga-instance-id")
    assert len(instances) == 1, f"cloud-init holds state of {len(instances)} instances: {', '.join(instances)}"
    if expected:
        assert instances == [expected], f"cloud-init state belongs to {instances[0]}, not to this boot ({expected})"


@pytest.mark.control("GA-HYG-MACHINEID")
def test_machine_id_generated_at_first_boot(host, boot_time):
    machine_id = host.file("/etc/machine-id").content_string.strip()
    assert len(machine_id) == 32 and all(c in "0123456789abcdef" for c in machine_id), \
        f"/etc/machine-id is not a machine id: {machine_id!r}"
    assert _mtime(host, "/etc/machine-id") >= boot_time, "/etc/machine-id predates this boot: it was baked in"


@pytest.mark.control("GA-HYG-HISTORY")
def test_no_shell_history(host, homes):
    names = (".bash_history", ".zsh_history", ".sh_history", ".python_history")
    present = [f"{home}/{name}" for home in homes for name in names if host.file(f"{home}/{name}").exists]
    assert not present, f"shell history present: {', '.join(present)}"


@pytest.mark.control("GA-HYG-AWSCREDS")
def test_no_static_aws_credentials(host, homes, params):
    files = [f"{home}/.aws/credentials" for home in homes if host.file(f"{home}/.aws/credentials").exists]
    assert not files, f"AWS credentials files present: {', '.join(files)}"
    paths = " ".join(shlex.quote(p) for p in params["scan_paths"])
    hits = host.run(f"grep -rIlsE '(AKIA|ASIA)[A-Z0-9]{{16}}' {paths}").stdout.split()
    assert not hits, f"AWS access key ids found in: {', '.join(hits)}"
