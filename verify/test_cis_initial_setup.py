"""CIS initial setup on the booted system: unused kernel modules, /tmp and /dev/shm, package
signatures, the boot loader configuration, process hardening, mandatory access control, the
login banners and the crypto policy.

Mounts and kernel settings are read from the running system: this boot is the first one of the
image, so what is in force now is what the image's configuration gives at boot.
"""
import re
import shlex

import pytest

from ga_system import unit_state

# apt's and dnf's spellings of "on".
_TRUE_WORDS = {"1", "yes", "true", "on", "enable", "with"}


def _q(text):
    return shlex.quote(str(text))


def _read(host, path):
    result = host.run(f"cat {_q(path)}")
    assert result.rc == 0, f"cannot read {path}: {result.stderr.strip() or f'exit {result.rc}'}"
    return result.stdout


# --- kernel modules ------------------------------------------------------------------------
def _assert_module_refused(host, module):
    name = module.replace("-", "_")  # how the kernel and modprobe's own listing name it
    dry_run = host.run(f"modprobe -n -v {_q(module)}")
    said = (dry_run.stdout + dry_run.stderr).strip()
    first = said.splitlines()[0].strip() if said else ""
    assert re.fullmatch(r"install\s+/(usr/)?bin/(false|true)", first), \
        f"loading {module} is not refused: modprobe -n -v {module} says {said!r}, expected 'install /bin/false'"
    config = host.check_output("modprobe --showconfig | grep -E '^(blacklist|install) ' || true")
    blacklisted = any(fields[0] == "blacklist" and fields[1].replace("-", "_") == name
                      for fields in (line.split() for line in config.splitlines()) if len(fields) >= 2)
    assert blacklisted, f"{module} is not blacklisted (no 'blacklist {module}' in the modprobe configuration)"
    loaded = host.run(f"grep -q {_q('^' + name + ' ')} /proc/modules")
    assert loaded.rc != 0, f"{module} is loaded (listed in /proc/modules)"


@pytest.mark.control("1.1.1.3")
def test_cramfs_refused(host, params):
    _assert_module_refused(host, params["module"])


@pytest.mark.control("1.1.1.4")
def test_freevxfs_refused(host, params):
    _assert_module_refused(host, params["module"])


@pytest.mark.control("1.1.1.5")
def test_jffs2_refused(host, params):
    _assert_module_refused(host, params["module"])


@pytest.mark.control("1.1.1.6")
def test_hfs_refused(host, params):
    _assert_module_refused(host, params["module"])


@pytest.mark.control("1.1.1.7")
def test_hfsplus_refused(host, params):
    _assert_module_refused(host, params["module"])


@pytest.mark.control("1.1.9")
def test_usb_storage_refused(host, params):
    _assert_module_refused(host, params["module"])


# --- /tmp and /dev/shm ---------------------------------------------------------------------
def _mount(host, path):
    """(source, fstype, options) of the mount on top at path, or None."""
    found = None
    for line in host.check_output("cat /proc/self/mounts").splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == path:
            found = (fields[0], fields[2], set(fields[3].split(",")))
    return found


def _assert_separate(host, path, expected):
    mount = _mount(host, path)
    assert mount is not None, f"{path} is not a filesystem of its own (it is part of /), expected {expected}"


def _assert_mounted_with(host, path, option):
    mount = _mount(host, path)
    assert mount is not None, f"{path} is not a filesystem of its own, so it is not mounted with {option}"
    assert option in mount[2], f"{path} is mounted with {','.join(sorted(mount[2]))}, expected {option}"


@pytest.mark.control("1.1.2.1")
def test_tmp_separate(host):
    _assert_separate(host, "/tmp", "a tmpfs mounted by tmp.mount")


@pytest.mark.control("1.1.2.2")
def test_tmp_nodev(host, params):
    _assert_mounted_with(host, "/tmp", params["option"])


@pytest.mark.control("1.1.2.3")
def test_tmp_noexec(host, params):
    _assert_mounted_with(host, "/tmp", params["option"])


@pytest.mark.control("1.1.2.4")
def test_tmp_nosuid(host, params):
    _assert_mounted_with(host, "/tmp", params["option"])


@pytest.mark.control("1.1.8.1")
def test_dev_shm_separate(host):
    _assert_separate(host, "/dev/shm", "a tmpfs")


@pytest.mark.control("1.1.8.2")
def test_dev_shm_nodev(host, params):
    _assert_mounted_with(host, "/dev/shm", params["option"])


@pytest.mark.control("1.1.8.3")
def test_dev_shm_noexec(host, params):
    _assert_mounted_with(host, "/dev/shm", params["option"])


@pytest.mark.control("1.1.8.4")
def test_dev_shm_nosuid(host, params):
    _assert_mounted_with(host, "/dev/shm", params["option"])


# --- package signatures --------------------------------------------------------------------
_DNF_OFF = r"^[[:space:]]*gpgcheck[[:space:]]*=[[:space:]]*(0|no|false|off)[[:space:]]*$"


@pytest.mark.control("1.2.2")
def test_dnf_gpgcheck(host, params):
    section, value = None, None
    for raw in _read(host, params["dnf_conf"]).splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[main]" and re.match(r"gpgcheck\s*=", line):
            value = line.split("=", 1)[1].strip()
    assert value is not None and value.lower() in _TRUE_WORDS, \
        f"{params['dnf_conf']} [main] gpgcheck is {value!r}, expected 1"
    off = host.check_output(f"grep -EiH {_q(_DNF_OFF)} {_q(params['repos_dir'])}/*.repo 2>/dev/null || true")
    assert not off.strip(), f"repositories with signature checks off: {'; '.join(off.splitlines())}"


_APT_WEAKENING = ("acquire::allowinsecurerepositories", "acquire::allowdowngradetoinsecurerepositories",
                  "acquire::allowweakrepositories", "apt::get::allowunauthenticated")
_APT_SOURCE_PATTERNS = (
    r"^[[:space:]]*deb(-src)?[[:space:]]+\[[^]]*(trusted|allow-insecure|allow-weak|allow-downgrade-to-insecure)"
    r"[[:space:]]*=[[:space:]]*yes",
    r"^[[:space:]]*(trusted|allow-insecure|allow-weak|allow-downgrade-to-insecure)[[:space:]]*:[[:space:]]*yes",
)


@pytest.mark.control("GA-PKG-SIGNED")
def test_apt_checks_signatures(host):
    weakened = []
    for line in host.check_output("apt-config dump").splitlines():
        match = re.match(r'^(\S+) "(.*)";$', line.strip())
        if match and match.group(1).lower() in _APT_WEAKENING and match.group(2).lower() in _TRUE_WORDS:
            weakened.append(line.strip())
    assert not weakened, f"apt configuration turns signature checks off: {'; '.join(weakened)}, expected none"
    patterns = " ".join(f"-e {_q(p)}" for p in _APT_SOURCE_PATTERNS)
    sources = host.check_output(
        f"grep -EiH {patterns} /etc/apt/sources.list /etc/apt/sources.list.d/*.list "
        "/etc/apt/sources.list.d/*.sources 2>/dev/null || true")
    assert not sources.strip(), f"apt sources accept unsigned packages: {'; '.join(sources.splitlines())}"


# --- boot loader ---------------------------------------------------------------------------
@pytest.mark.control("1.4.1")
def test_boot_loader_config_root_only(host, params):
    found, loose = [], []
    for path in params["files"]:
        result = host.run(f"stat -L -c '%a %U %G' {_q(path)}")
        if result.rc != 0:
            continue  # not on this system
        mode, user, group = result.stdout.split()
        found.append(path)
        if int(mode, 8) & 0o177 or (user, group) != ("root", "root"):
            loose.append(f"{path} {user}:{group} {mode}")
    assert found, f"no boot loader configuration found among {', '.join(params['files'])}"
    assert not loose, f"boot loader configuration not restricted to root: {'; '.join(loose)}, expected root:root 0600 or stricter"
    # grub-mkconfig makes grub.cfg world-readable whenever a kernel update runs it: the image
    # restricts it again at every boot.
    enabled, _ = unit_state(host, "golden-ami-bootloader-perms.service")
    assert enabled == "enabled", \
        f"golden-ami-bootloader-perms.service is {enabled}, expected enabled (it keeps grub.cfg private after kernel updates)"


# --- process hardening ---------------------------------------------------------------------
def _proc_int(host, path):
    return int(_read(host, path).strip())


@pytest.mark.control("1.5.1")
def test_aslr_full(host, params):
    value = _proc_int(host, "/proc/sys/kernel/randomize_va_space")
    assert value == params["value"], f"kernel.randomize_va_space is {value}, expected {params['value']}"


@pytest.mark.control("1.5.2")
def test_ptrace_restricted(host, params):
    path = "/proc/sys/kernel/yama/ptrace_scope"
    assert host.run(f"test -e {path}").rc == 0, "the kernel has no Yama (no kernel.yama.ptrace_scope)"
    value = _proc_int(host, path)
    assert params["value"] <= value <= 3, f"kernel.yama.ptrace_scope is {value}, expected {params['value']} to 3"


def _coredump_settings(host):
    """[Coredump] settings as systemd-coredump reads them (main file, then drop-ins in order)."""
    section, values = None, {}
    for raw in host.check_output("systemd-analyze cat-config systemd/coredump.conf").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
        elif section == "[Coredump]" and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _hard_core_limit(host):
    """The hard core limit that pam_limits gives every user ('*'), or None."""
    text = host.check_output("cat /etc/security/limits.conf /etc/security/limits.d/*.conf 2>/dev/null || true")
    value = None
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 4 and fields[0] == "*" and fields[1] in ("hard", "-") and fields[2] == "core":
            value = fields[3]
    return value


@pytest.mark.control("1.5.3")
def test_core_dumps_restricted(host):
    suid_dumpable = _proc_int(host, "/proc/sys/fs/suid_dumpable")
    assert suid_dumpable == 0, f"fs.suid_dumpable is {suid_dumpable}, expected 0"
    limit = _hard_core_limit(host)
    assert limit == "0", f"the hard core limit for all users is {limit!r} in /etc/security/limits*, expected 0"
    storage = _coredump_settings(host).get("Storage", "external (the default)")
    assert storage == "none", f"systemd-coredump Storage is {storage}, expected none"


@pytest.mark.control("1.5.4")
def test_core_dump_backtraces_off(host):
    size = _coredump_settings(host).get("ProcessSizeMax", "the default (2G)")
    assert size == "0", f"systemd-coredump ProcessSizeMax is {size}, expected 0"


@pytest.mark.control("GA-PROC-PRELINK")
def test_prelink_absent(host, params):
    present = [p for p in params["packages"] if host.package(p).is_installed]
    assert not present, f"installed: {', '.join(present)}, expected not installed"


@pytest.mark.control("GA-PROC-APPORT")
def test_apport_disabled(host):
    if not host.package("apport").is_installed:
        return  # not installed: nothing reports
    enabled, active = unit_state(host, "apport.service")
    assert enabled in ("masked", "disabled") and active != "active", \
        f"apport.service is {enabled}/{active}, expected masked (or disabled) and inactive"
    if host.file("/etc/default/apport").exists:
        setting = re.findall(r"^\s*enabled\s*=\s*(\S+)", host.file("/etc/default/apport").content_string, re.M)
        assert setting and setting[-1] == "0", f"/etc/default/apport enabled={setting[-1] if setting else None}, expected 0"


# --- mandatory access control --------------------------------------------------------------
def _selinux_config(host):
    values = {}
    for line in _read(host, "/etc/selinux/config").splitlines():
        match = re.match(r"^\s*(SELINUX|SELINUXTYPE)\s*=\s*(\S*)", line)
        if match:
            values[match.group(1)] = match.group(2)
    return values


def _assert_apparmor_enabled(host):
    enabled = host.run("cat /sys/module/apparmor/parameters/enabled").stdout.strip()
    assert enabled == "Y", f"AppArmor is not enabled in the running kernel (enabled={enabled or 'absent'}), expected Y"


@pytest.mark.control("1.6.1.1")
def test_mac_installed(host, params):
    missing = [p for p in params["packages"] if not host.package(p).is_installed]
    assert not missing, f"{params['framework']} packages not installed: {', '.join(missing)}"


@pytest.mark.control("1.6.1.2")
def test_mac_not_disabled_at_boot(host, params):
    cmdline = _read(host, "/proc/cmdline").split()
    if params["framework"] == "apparmor":
        _assert_apparmor_enabled(host)
        wanted = ["apparmor=1", "security=apparmor"]
        absent = [arg for arg in wanted if arg not in cmdline]
        assert not absent, f"the kernel command line lacks {' '.join(absent)}: {' '.join(cmdline)}"
        kernels = [line.split() for line in _read(host, params["grub_cfg"]).splitlines()
                   if re.match(r"\s*linux(16|efi)?\s", line)]
        assert kernels, f"{params['grub_cfg']} has no kernel lines"
        lacking = [line[1] for line in kernels if not all(arg in line for arg in wanted)]
        assert not lacking, f"{params['grub_cfg']} boots without {' '.join(wanted)}: {', '.join(lacking)}"
    else:
        off = [arg for arg in cmdline if arg in ("selinux=0", "enforcing=0")]
        assert not off, f"the kernel command line has {' '.join(off)}"
        pattern = r'(^|[[:space:]"])(selinux|enforcing)=0([[:space:]"]|$)'
        found = host.check_output(
            f"grep -EH {_q(pattern)} /etc/default/grub /boot/loader/entries/*.conf 2>/dev/null || true")
        assert not found.strip(), f"the boot loader configuration turns SELinux off: {'; '.join(found.splitlines())}"


@pytest.mark.control("1.6.1.3")
def test_selinux_policy(host, params):
    missing = [p for p in params["packages"] if not host.package(p).is_installed]
    assert not missing, f"not installed: {', '.join(missing)}"
    policy = _selinux_config(host).get("SELINUXTYPE")
    assert policy == params["policy"], f"/etc/selinux/config SELINUXTYPE is {policy!r}, expected {params['policy']!r}"


@pytest.mark.control("1.6.1.4")
def test_mac_active(host, params):
    if params["framework"] == "selinux":
        mode = _selinux_config(host).get("SELINUX")
        assert mode in ("enforcing", "permissive"), \
            f"/etc/selinux/config SELINUX is {mode!r}, expected enforcing or permissive"
        assert host.run("test -e /sys/fs/selinux/enforce").rc == 0, "SELinux is disabled in the running system"
        return
    _assert_apparmor_enabled(host)
    enabled, active = unit_state(host, "apparmor.service")
    assert (enabled, active) == ("enabled", "active"), f"apparmor.service is {enabled}/{active}, expected enabled/active"
    profiles = {}
    for line in _read(host, "/sys/kernel/security/apparmor/profiles").splitlines():
        match = re.match(r"^(.*) \((\w+)\)$", line.strip())
        if match:
            profiles[match.group(1)] = match.group(2)
    assert profiles, "no AppArmor profile is loaded"
    allowed = {"enforce", "complain"} | ({"unconfined"} if params["unconfined_mode_profiles_allowed"] else set())
    other = sorted(f"{name} ({mode})" for name, mode in profiles.items() if mode not in allowed)
    assert not other, f"AppArmor profiles neither enforcing nor complaining: {', '.join(other)}"
    status = host.run("aa-status")
    match = re.search(r"^(\d+) processes are unconfined but have a profile defined", status.stdout, re.M)
    assert match, f"aa-status (exit {status.rc}) does not say how many processes run unconfined despite a profile"
    assert match.group(1) == "0", f"{match.group(1)} processes run unconfined although a profile is defined for them"


@pytest.mark.control("1.6.1.7")
def test_setroubleshoot_absent(host, params):
    present = [p for p in params["packages"] if host.package(p).is_installed]
    assert not present, f"installed: {', '.join(present)}, expected not installed"


@pytest.mark.control("1.6.1.8")
def test_mcstrans_absent(host, params):
    present = [p for p in params["packages"] if host.package(p).is_installed]
    assert not present, f"installed: {', '.join(present)}, expected not installed"


# --- warning banners -----------------------------------------------------------------------
def _os_id(host):
    match = re.search(r'^ID="?([^"\n]*)"?$', _read(host, "/etc/os-release"), re.M)
    return match.group(1) if match else ""


def _assert_banner(host, path):
    result = host.run(f"cat {_q(path)}")
    assert result.rc == 0, f"{path} does not exist, expected a warning banner"
    text = result.stdout
    assert text.strip(), f"{path} is empty, expected a warning banner"
    escapes = sorted(set(re.findall(r"\\[mrsv]", text)))
    assert not escapes, f"{path} shows system details through {' '.join(escapes)}"
    os_id = _os_id(host)
    assert not (os_id and os_id.lower() in text.lower()), f"{path} names the operating system ({os_id})"


def _assert_permissions(host, path, max_mode):
    result = host.run(f"stat -L -c '%a %U %G' {_q(path)}")
    if result.rc != 0:
        return  # no such file: nothing to protect
    mode, user, group = result.stdout.split()
    extra = int(mode, 8) & ~int(max_mode, 8)
    assert not extra and (user, group) == ("root", "root"), \
        f"{path} is {user}:{group} {mode}, expected root:root {max_mode} or stricter"


@pytest.mark.control("1.7.1")
def test_motd_banner(host, params):
    _assert_banner(host, params["path"])


@pytest.mark.control("1.7.2")
def test_issue_banner(host, params):
    _assert_banner(host, params["path"])


@pytest.mark.control("1.7.3")
def test_issue_net_banner(host, params):
    _assert_banner(host, params["path"])


@pytest.mark.control("1.7.4")
def test_motd_permissions(host, params):
    _assert_permissions(host, params["path"], params["mode"])


@pytest.mark.control("1.7.5")
def test_issue_permissions(host, params):
    _assert_permissions(host, params["path"], params["mode"])


@pytest.mark.control("1.7.6")
def test_issue_net_permissions(host, params):
    _assert_permissions(host, params["path"], params["mode"])


# --- crypto policy -------------------------------------------------------------------------
@pytest.mark.control("1.9")
def test_crypto_policy_not_legacy(host):
    result = host.run("update-crypto-policies --show")
    assert result.rc == 0, f"update-crypto-policies --show failed: {result.stderr.strip() or f'exit {result.rc}'}"
    policy = result.stdout.strip()
    assert policy.split(":")[0] != "LEGACY", f"the system-wide crypto policy is {policy}, expected anything but LEGACY"
