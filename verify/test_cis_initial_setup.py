"""CIS initial setup on the booted system: unused kernel modules, /tmp and /dev/shm, package
signatures, the boot loader configuration, process hardening, mandatory access control, the
login banners and the crypto policy.

Mounts and kernel settings are read from the running system: this boot is the first one of the
image, so what is in force now is what the image's configuration gives at boot.

Every check judges the fact snapshot (verify/collector.py); a fact that could not be read fails
the check that needs it, with the reason.
"""
import re

import pytest

from collector import redact_grub_hashes
from ga_facts import FactUnavailable
from ga_system import (apt_config, installed, loaded_modules, module_name, module_problems, mount_at, not_installed,
                       os_release_id, systemd_settings, unit_state)

# apt's and dnf's spellings of "on".
_TRUE_WORDS = {"1", "yes", "true", "on", "enable", "with"}


def _basename(path):
    return path.rsplit("/", 1)[-1]


def _matching_lines(facts, paths, pattern):
    """"path:line" of every line of the (existing) files that matches pattern, as grep -H says it."""
    found = []
    for path in paths:
        text = facts.text(path)
        if text is None:
            continue  # no such file: nothing in it
        found += [f"{path}:{line}" for line in text.splitlines() if pattern.search(line)]
    return found


# --- kernel modules ------------------------------------------------------------------------
# One check per control: each parameter (the control's id) carries its control's mark, and the
# module is the control's param (pinned to the recommendation's own in the catalogue).
@pytest.mark.parametrize("control_id", [
    pytest.param("1.1.1.1", marks=pytest.mark.control("1.1.1.1")),  # squashfs
    pytest.param("1.1.1.2", marks=pytest.mark.control("1.1.1.2")),  # udf
    pytest.param("GA-MODULE-OVERLAYFS", marks=pytest.mark.control("GA-MODULE-OVERLAYFS")),
    pytest.param("1.1.1.3", marks=pytest.mark.control("1.1.1.3")),  # cramfs
    pytest.param("1.1.1.4", marks=pytest.mark.control("1.1.1.4")),  # freevxfs
    pytest.param("1.1.1.5", marks=pytest.mark.control("1.1.1.5")),  # jffs2
    pytest.param("1.1.1.6", marks=pytest.mark.control("1.1.1.6")),  # hfs
    pytest.param("1.1.1.7", marks=pytest.mark.control("1.1.1.7")),  # hfsplus
    pytest.param("1.1.9", marks=pytest.mark.control("1.1.9")),  # usb-storage
])
def test_module_refused(facts, params, control_id):
    problems = module_problems(facts, params["module"])
    assert not problems, "; ".join(problems)


@pytest.mark.control("GA-MODULE-FS-UNUSED")
def test_unused_filesystem_modules_refused(facts, params):
    inventory = facts.section("filesystem_modules")
    assert "error" not in inventory, f"the kernel's module list could not be read: {inventory.get('error')}"
    assert inventory["filesystems"], "the running kernel's modules.dep lists no module under kernel/fs"
    # In use: loaded (the instance mounts it) or kept; and whatever those load with them.
    in_use = loaded_modules(facts) | {module_name(m) for m in params["modules_kept"]}
    needed = in_use | {dep for module in in_use for dep in inventory["needs"].get(module, [])}
    problems = [problem for module in inventory["filesystems"] if module not in needed
                for problem in module_problems(facts, module)]
    assert not problems, (f"{len(problems)} problem(s) with filesystem modules neither in use nor kept: "
                          + "; ".join(problems[:6]) + ("; ..." if len(problems) > 6 else ""))


# --- /tmp and /dev/shm ---------------------------------------------------------------------
def _assert_separate(facts, path, expected):
    mount = mount_at(facts, path)
    assert mount is not None, f"{path} is not a filesystem of its own (it is part of /), expected {expected}"


def _assert_mounted_with(facts, path, option):
    mount = mount_at(facts, path)
    assert mount is not None, f"{path} is not a filesystem of its own, so it is not mounted with {option}"
    assert option in mount.options, f"{path} is mounted with {','.join(sorted(mount.options))}, expected {option}"


@pytest.mark.control("1.1.2.1")
def test_tmp_separate(facts):
    _assert_separate(facts, "/tmp", "a tmpfs mounted by tmp.mount")


@pytest.mark.control("1.1.2.2")
def test_tmp_nodev(facts, params):
    _assert_mounted_with(facts, "/tmp", params["option"])


@pytest.mark.control("1.1.2.3")
def test_tmp_noexec(facts, params):
    _assert_mounted_with(facts, "/tmp", params["option"])


@pytest.mark.control("1.1.2.4")
def test_tmp_nosuid(facts, params):
    _assert_mounted_with(facts, "/tmp", params["option"])


# --- separate filesystems of disk_layout: cis (not applicable with one root filesystem) -------
# One check per control: each parameter (the control's id) carries its control's mark. The mount
# point and, for an option control, the option are the control's params (pinned in the
# catalogue): "<x>.1" is the filesystem itself, the others its mount options.
@pytest.mark.parametrize("control_id", [
    pytest.param("1.1.3.1", marks=pytest.mark.control("1.1.3.1")),
    pytest.param("1.1.3.2", marks=pytest.mark.control("1.1.3.2")),
    pytest.param("1.1.3.3", marks=pytest.mark.control("1.1.3.3")),
    pytest.param("1.1.4.1", marks=pytest.mark.control("1.1.4.1")),
    pytest.param("1.1.4.2", marks=pytest.mark.control("1.1.4.2")),
    pytest.param("1.1.4.3", marks=pytest.mark.control("1.1.4.3")),
    pytest.param("1.1.4.4", marks=pytest.mark.control("1.1.4.4")),
    pytest.param("1.1.5.1", marks=pytest.mark.control("1.1.5.1")),
    pytest.param("1.1.5.2", marks=pytest.mark.control("1.1.5.2")),
    pytest.param("1.1.5.3", marks=pytest.mark.control("1.1.5.3")),
    pytest.param("1.1.5.4", marks=pytest.mark.control("1.1.5.4")),
    pytest.param("1.1.6.1", marks=pytest.mark.control("1.1.6.1")),
    pytest.param("1.1.6.2", marks=pytest.mark.control("1.1.6.2")),
    pytest.param("1.1.6.3", marks=pytest.mark.control("1.1.6.3")),
    pytest.param("1.1.6.4", marks=pytest.mark.control("1.1.6.4")),
    pytest.param("1.1.7.1", marks=pytest.mark.control("1.1.7.1")),
    pytest.param("1.1.7.2", marks=pytest.mark.control("1.1.7.2")),
    pytest.param("1.1.7.3", marks=pytest.mark.control("1.1.7.3")),
])
def test_separate_filesystem(facts, params, control_id):
    if "option" in params:
        _assert_mounted_with(facts, params["mount_point"], params["option"])
    else:
        _assert_separate(facts, params["mount_point"], "a filesystem of its own (disk_layout: cis)")


@pytest.mark.control("1.1.8.1")
def test_dev_shm_separate(facts):
    _assert_separate(facts, "/dev/shm", "a tmpfs")


@pytest.mark.control("1.1.8.2")
def test_dev_shm_nodev(facts, params):
    _assert_mounted_with(facts, "/dev/shm", params["option"])


@pytest.mark.control("1.1.8.3")
def test_dev_shm_noexec(facts, params):
    _assert_mounted_with(facts, "/dev/shm", params["option"])


@pytest.mark.control("1.1.8.4")
def test_dev_shm_nosuid(facts, params):
    _assert_mounted_with(facts, "/dev/shm", params["option"])


# --- package signatures --------------------------------------------------------------------
# dnf reads a boolean: anything but an "on" word in a repository's gpgcheck is off (or invalid).
_DNF_GPGCHECK = re.compile(r"^\s*gpgcheck\s*=\s*(.*?)\s*$", re.I)


def _dnf_main_gpgcheck(text):
    """The [main] gpgcheck of dnf.conf (the last assignment), or None."""
    section, value = None, None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[main]" and re.match(r"gpgcheck\s*=", line):
            value = line.split("=", 1)[1].strip()
    return value


@pytest.mark.control("1.2.2")
def test_dnf_gpgcheck(facts, params):
    value = _dnf_main_gpgcheck(facts.content(params["dnf_conf"]))
    assert value is not None and value.lower() in _TRUE_WORDS, \
        f"{params['dnf_conf']} [main] gpgcheck is {value!r}, expected 1"
    off = []
    for path in facts.glob(f"{params['repos_dir'].rstrip('/')}/*.repo"):
        for line in facts.content(path).splitlines():
            match = _DNF_GPGCHECK.match(line)
            if match and match.group(1).lower() not in _TRUE_WORDS:
                off.append(f"{path}:{line}")
    assert not off, f"repositories with signature checks off: {'; '.join(off)}"


_APT_WEAKENING = ("acquire::allowinsecurerepositories", "acquire::allowdowngradetoinsecurerepositories",
                  "acquire::allowweakrepositories", "apt::get::allowunauthenticated")
_APT_OPTIONS = r"(trusted|allow-insecure|allow-weak|allow-downgrade-to-insecure)"
_APT_YES = r"(" + "|".join(sorted(_TRUE_WORDS)) + r")\b"
_APT_SOURCE_PATTERNS = (
    # one-line style: deb [trusted=yes] ...
    re.compile(r"^\s*deb(-src)?\s+\[[^\]]*" + _APT_OPTIONS + r"\s*=\s*" + _APT_YES, re.I),
    # deb822 style: Trusted: yes
    re.compile(r"^\s*" + _APT_OPTIONS + r"\s*:\s*" + _APT_YES, re.I),
)


def _apt_source_files(facts):
    """The sources apt reads: sources.list and sources.list.d's *.list and *.sources."""
    parts = [path for path in facts.glob("/etc/apt/sources.list.d/*")
             if _basename(path).endswith((".list", ".sources"))]
    return ["/etc/apt/sources.list", *parts]


@pytest.mark.control("GA-PKG-SIGNED")
def test_apt_checks_signatures(facts):
    weakened = [f'{option} "{value}";' for option, value in apt_config(facts).items()
                if option.lower() in _APT_WEAKENING and value.lower() in _TRUE_WORDS]
    assert not weakened, f"apt configuration turns signature checks off: {'; '.join(weakened)}, expected none"
    sources = [found for pattern in _APT_SOURCE_PATTERNS
               for found in _matching_lines(facts, _apt_source_files(facts), pattern)]
    assert not sources, f"apt sources accept unsigned packages: {'; '.join(sources)}"


# --- boot loader ---------------------------------------------------------------------------
@pytest.mark.control("1.4.1")
def test_boot_loader_config_root_only(facts, params):
    found, loose = [], []
    for path in params["files"]:
        st = facts.stat(path)
        st = st.followed() if st is not None else None  # what a symlink points at
        if st is None:
            continue  # not on this system
        found.append(path)
        if st.mode & 0o177 or (st.owner, st.group_name) != ("root", "root"):
            loose.append(f"{path} {st.owner}:{st.group_name} {st.mode:04o}")
    assert found, f"no boot loader configuration found among {', '.join(params['files'])}"
    assert not loose, f"boot loader configuration not restricted to root: {'; '.join(loose)}, expected root:root 0600 or stricter"
    # grub-mkconfig makes grub.cfg world-readable whenever a kernel update runs it: the image
    # restricts it again at every boot.
    enabled, _ = unit_state(facts, "golden-ami-bootloader-perms.service")
    assert enabled == "enabled", \
        f"golden-ami-bootloader-perms.service is {enabled}, expected enabled (it keeps grub.cfg private after kernel updates)"


_GRUB_SUPERUSERS = re.compile(r'^\s*set\s+superusers=["\']?([^"\']*)["\']?\s*$')
_GRUB_PASSWORD = re.compile(r"^\s*(password|password_pbkdf2)\s+(\S+)\s+(\S+)")
_GRUB_PBKDF2 = re.compile(r"^grub\.pbkdf2\.sha512\.([0-9]+)\.")
_GRUB_SECTION = re.compile(r"^### BEGIN (\S+) ###$")
# grub-mkpasswd-pbkdf2's default and the least the catalogue accepts for a configured hash.
_GRUB_MIN_ITERATIONS = 10000


@pytest.mark.control("GA-BOOT-PASSWORD")
def test_boot_menu_has_superuser_password(facts, params):
    grub_cfg = params["grub_cfg"]
    lines = facts.content(grub_cfg).splitlines()
    superusers = [m.group(1).replace(",", " ").split() for m in map(_GRUB_SUPERUSERS.match, lines) if m]
    assert superusers, f"{grub_cfg} names no superuser (set superusers=): anyone at the boot menu may edit an entry"
    names = superusers[-1]  # the last assignment is the one in force
    assert params["superuser"] in names, \
        f"{grub_cfg}: the superusers are {names or 'none'}, expected {params['superuser']}"
    passwords = {m.group(2): (m.group(1), m.group(3)) for m in map(_GRUB_PASSWORD.match, lines) if m}
    kind, secret = passwords.get(params["superuser"], ("", ""))
    assert kind, f"{grub_cfg} gives superuser {params['superuser']} no password: GRUB lets nobody in, or (older GRUB) everyone"
    assert kind == "password_pbkdf2", f"{grub_cfg} keeps {params['superuser']}'s password in clear text (password, not password_pbkdf2)"
    cost = _GRUB_PBKDF2.match(secret)
    assert cost, f"{grub_cfg}: {params['superuser']}'s password is not a grub.pbkdf2.sha512 hash"
    assert int(cost.group(1)) >= _GRUB_MIN_ITERATIONS, \
        f"{grub_cfg}: {params['superuser']}'s hash has {cost.group(1)} PBKDF2 iterations, expected at least {_GRUB_MIN_ITERATIONS}"
    if params["password_hash"] != "locked":
        # The facts hold a digest in place of salt and hash (verify/collector.py).
        wanted = redact_grub_hashes(params["password_hash"])
        assert secret == wanted, \
            f"{grub_cfg}: {params['superuser']}'s hash is not the configured one (controls.GA-BOOT-PASSWORD.params.password_hash)"
    # With a superuser set, GRUB asks for a password before booting any entry not marked
    # --unrestricted: the kernels' entries must carry it, or the instance waits at its console.
    section, locked = "", []
    for line in lines:
        begin = _GRUB_SECTION.match(line)
        section = begin.group(1) if begin else section
        if section.endswith("/10_linux") and line.lstrip().startswith("menuentry ") and " --unrestricted " not in line:
            locked.append(line.strip().split("'")[1] if "'" in line else line.strip())
    assert not locked, f"{grub_cfg}: boot entries that need the password to boot: {', '.join(locked)}"


# --- process hardening ---------------------------------------------------------------------
def _sysctl_int(facts, key):
    value = facts.sysctl(key)
    if value is None:
        raise FactUnavailable(f"the kernel has no {key}")
    try:
        return int(value)
    except ValueError:
        raise FactUnavailable(f"kernel parameter {key} is {value!r}, not a number") from None


@pytest.mark.control("1.5.1")
def test_aslr_full(facts, params):
    value = _sysctl_int(facts, "kernel.randomize_va_space")
    assert value == params["value"], f"kernel.randomize_va_space is {value}, expected {params['value']}"


@pytest.mark.control("1.5.2")
def test_ptrace_restricted(facts, params):
    key = "kernel.yama.ptrace_scope"
    assert facts.sysctl(key) is not None, "the kernel has no Yama (no kernel.yama.ptrace_scope)"
    value = _sysctl_int(facts, key)
    assert params["value"] <= value <= 3, f"kernel.yama.ptrace_scope is {value}, expected {params['value']} to 3"


def _coredump_settings(facts):
    """[Coredump] settings as systemd-coredump reads them (main file, then drop-ins in order)."""
    return systemd_settings(facts, "systemd_coredump", "Coredump")


def _limits_files(facts):
    """What pam_limits reads, in its order: limits.conf, then limits.d/*.conf sorted."""
    parts = sorted(path for path in facts.glob("/etc/security/limits.d/*") if _basename(path).endswith(".conf"))
    return ["/etc/security/limits.conf", *parts]


def _hard_core_entries(facts):
    """[(path, domain, value)] of every hard core limit set in /etc/security/limits*, in order."""
    entries = []
    for path in _limits_files(facts):
        text = facts.text(path)
        if text is None:
            continue  # no limits.conf: pam_limits sets nothing from it
        for line in text.splitlines():
            fields = line.split("#", 1)[0].split()
            if len(fields) >= 4 and fields[1] in ("hard", "-") and fields[2] == "core":
                entries.append((path, fields[0], fields[3]))
    return entries


def _login_shell_core_limit(facts):
    """`ulimit -H -c` in the login user's login shell (pam_limits and the profile applied)."""
    shown = facts.output("login_shell_env").split("\n--- readonly", 1)[0]
    values = re.findall(r"^core_hard=(.*)$", shown, re.M)
    if not values:
        raise FactUnavailable("the login shell's environment printed no core_hard= line")
    return values[-1].strip()


@pytest.mark.control("1.5.3")
def test_core_dumps_restricted(facts):
    suid_dumpable = _sysctl_int(facts, "fs.suid_dumpable")
    assert suid_dumpable == 0, f"fs.suid_dumpable is {suid_dumpable}, expected 0"
    entries = _hard_core_entries(facts)
    limit = next((value for _, domain, value in reversed(entries) if domain == "*"), None)
    assert limit == "0", f"the hard core limit for all users is {limit!r} in /etc/security/limits*, expected 0"
    # A user's or group's own entry takes precedence over '*' in pam_limits.
    raised = [f"{path}: {domain} {value}" for path, domain, value in entries if domain != "*" and value != "0"]
    assert not raised, f"/etc/security/limits* give some users a hard core limit above 0: {'; '.join(raised)}, expected 0"
    # What a login really gets: a login session through PAM (pam_limits) and the profile
    # scripts, as `runuser -l` opens one. (The collector's own process is no witness: sudo
    # sets its own core limits.)
    user = facts.context.get("login_user", "the login user")
    shell = _login_shell_core_limit(facts)
    assert shell == "0", f"the hard core limit of {user}'s login shell (ulimit -H -c) is {shell}, expected 0"
    storage = _coredump_settings(facts).get("Storage", "external (the default)")
    assert storage == "none", f"systemd-coredump Storage is {storage}, expected none"


@pytest.mark.control("1.5.4")
def test_core_dump_backtraces_off(facts):
    size = _coredump_settings(facts).get("ProcessSizeMax", "the default (2G)")
    assert size == "0", f"systemd-coredump ProcessSizeMax is {size}, expected 0"


@pytest.mark.control("GA-PROC-PRELINK")
def test_prelink_absent(facts, params):
    present = installed(facts, params["packages"])
    assert not present, f"installed: {', '.join(present)}, expected not installed"


@pytest.mark.control("GA-PROC-APPORT")
def test_apport_disabled(facts):
    if not installed(facts, ["apport"]):
        return  # not installed: nothing reports
    enabled, active = unit_state(facts, "apport.service")
    assert enabled in ("masked", "disabled") and active != "active", \
        f"apport.service is {enabled}/{active}, expected masked (or disabled) and inactive"
    text = facts.text("/etc/default/apport")
    if text is not None:
        setting = re.findall(r"^\s*enabled\s*=\s*(\S+)", text, re.M)
        assert setting and setting[-1] == "0", f"/etc/default/apport enabled={setting[-1] if setting else None}, expected 0"


# --- mandatory access control --------------------------------------------------------------
def _selinux_config(facts):
    values = {}
    for line in facts.content("/etc/selinux/config").splitlines():
        match = re.match(r"^\s*(SELINUX|SELINUXTYPE)\s*=\s*(\S*)", line)
        if match:
            values[match.group(1)] = match.group(2)
    return values


def _assert_apparmor_enabled(facts):
    enabled = (facts.text("/sys/module/apparmor/parameters/enabled") or "").strip()
    assert enabled == "Y", f"AppArmor is not enabled in the running kernel (enabled={enabled or 'absent'}), expected Y"


_SELINUX_OFF = re.compile(r'(^|[\s"])(selinux|enforcing)=0([\s"]|$)')


@pytest.mark.control("1.6.1.1")
def test_mac_installed(facts, params):
    missing = not_installed(facts, params["packages"])
    assert not missing, f"{params['framework']} packages not installed: {', '.join(missing)}"


@pytest.mark.control("1.6.1.2")
def test_mac_not_disabled_at_boot(facts, params):
    cmdline = facts.content("/proc/cmdline").split()
    if params["framework"] == "apparmor":
        _assert_apparmor_enabled(facts)
        wanted = ["apparmor=1", "security=apparmor"]
        absent = [arg for arg in wanted if arg not in cmdline]
        assert not absent, f"the kernel command line lacks {' '.join(absent)}: {' '.join(cmdline)}"
        kernels = [line.split() for line in facts.content(params["grub_cfg"]).splitlines()
                   if re.match(r"\s*linux(16|efi)?\s", line)]
        assert kernels, f"{params['grub_cfg']} has no kernel lines"
        lacking = [line[1] for line in kernels if not all(arg in line for arg in wanted)]
        assert not lacking, f"{params['grub_cfg']} boots without {' '.join(wanted)}: {', '.join(lacking)}"
    else:
        off = [arg for arg in cmdline if arg in ("selinux=0", "enforcing=0")]
        assert not off, f"the kernel command line has {' '.join(off)}"
        found = _matching_lines(facts, ["/etc/default/grub", *facts.glob("/boot/loader/entries/*.conf")],
                                _SELINUX_OFF)
        # The boot entries as grubby sees them (where it is installed): args= of every kernel.
        grubby = facts.optional_output("grubby_info")
        if grubby is not None:
            found += [f"grubby --info=ALL: {line.strip()}" for line in grubby.splitlines()
                      if line.strip().startswith("args=") and _SELINUX_OFF.search(line)]
        assert not found, f"the boot loader configuration turns SELinux off: {'; '.join(found)}"


@pytest.mark.control("1.6.1.3")
def test_selinux_policy(facts, params):
    present = installed(facts, params["packages"])
    missing = [p for p in params["packages"] if p not in present]
    assert not missing, f"not installed: {', '.join(missing)}"
    policy = _selinux_config(facts).get("SELINUXTYPE")
    assert policy == params["policy"], f"/etc/selinux/config SELINUXTYPE is {policy!r}, expected {params['policy']!r}"


def _apparmor_profiles(facts):
    """{profile name: mode} of the profiles the running kernel has loaded (at least one)."""
    profiles = {}
    for line in facts.content("/sys/kernel/security/apparmor/profiles").splitlines():
        match = re.match(r"^(.*) \((\w+)\)$", line.strip())
        if match:
            profiles[match.group(1)] = match.group(2)
    assert profiles, "no AppArmor profile is loaded"
    return profiles


@pytest.mark.control("1.6.1.4")
def test_mac_active(facts, params):
    if params["framework"] == "selinux":
        mode = _selinux_config(facts).get("SELINUX")
        assert mode in ("enforcing", "permissive"), \
            f"/etc/selinux/config SELINUX is {mode!r}, expected enforcing or permissive"
        assert facts.exists("/sys/fs/selinux/enforce"), "SELinux is disabled in the running system"
        return
    _assert_apparmor_enabled(facts)
    enabled, active = unit_state(facts, "apparmor.service")
    assert (enabled, active) == ("enabled", "active"), f"apparmor.service is {enabled}/{active}, expected enabled/active"
    profiles = _apparmor_profiles(facts)
    allowed = {"enforce", "complain"} | ({"unconfined"} if params["unconfined_mode_profiles_allowed"] else set())
    other = sorted(f"{name} ({mode})" for name, mode in profiles.items() if mode not in allowed)
    assert not other, f"AppArmor profiles neither enforcing nor complaining: {', '.join(other)}"
    status = facts.output("aa_status")
    match = re.search(r"^(\d+) processes are unconfined but have a profile defined", status, re.M)
    assert match, "aa-status does not say how many processes run unconfined despite a profile"
    # aa-status lists them below the count as "   EXE (PID) [PROFILE]". A process under a profile
    # in unconfined mode is counted there too: allowed only where such profiles are.
    listed = []
    for line in status[match.end():].splitlines()[1:]:
        if not line[:1].isspace():
            break  # the next count: the list is over
        entry = re.match(r"^\s+(\S+) \((\d+)\)(?: (\S+))?\s*$", line)
        if entry:
            listed.append(entry.groups())
    unconfined = [f"{exe} ({pid})" for exe, pid, profile in listed
                  if not (params["unconfined_mode_profiles_allowed"] and profiles.get(profile or exe) == "unconfined")]
    if int(match.group(1)) and len(listed) != int(match.group(1)):
        unconfined.append(f"{match.group(1)} counted, {len(listed)} listed")
    assert not unconfined, f"processes run unconfined although a profile is defined for them: {', '.join(unconfined)}"


@pytest.mark.control("1.6.1.5")
def test_selinux_enforcing(facts, params):
    mode = _selinux_config(facts).get("SELINUX")
    assert mode == params["mode"], f"/etc/selinux/config SELINUX is {mode!r}, expected {params['mode']!r}"
    assert facts.exists("/sys/fs/selinux/enforce"), "SELinux is disabled in the running system"
    running = facts.content("/sys/fs/selinux/enforce").strip()
    assert running == "1", f"SELinux runs in permissive mode (/sys/fs/selinux/enforce is {running!r}), expected enforcing"
    # A denial since boot is a service or a file the policy does not fit: enforcing stops it.
    # ausearch exits 1 with "<no matches>" when there is none.
    audited = facts.result("selinux_denials")
    if audited.rc == 1 and "<no matches>" in audited.stderr:
        return
    records = [line for line in facts.output("selinux_denials").splitlines() if line.startswith("type=")]
    assert not records, (f"{len(records)} SELinux denial record(s) audited since boot, first: "
                         + " | ".join(" ".join(line.split())[:240] for line in records[:3]))


def _selinux_type(label):
    """The type of a SELinux context (user:role:type:level), or None when it is not one."""
    fields = (label or "").split(":")
    return fields[2] if len(fields) >= 4 else None


@pytest.mark.control("1.6.1.6")
def test_no_unreviewed_unconfined_service(facts, params):
    processes = facts.section("process_labels")
    assert processes, "no process and its SELinux context was read"
    unlabelled = sorted({f"{p['exe']} ({p['label'] or 'none'})" for p in processes if _selinux_type(p["label"]) is None})
    assert not unlabelled, f"processes without a SELinux context (is SELinux enabled?): {', '.join(unlabelled)[:300]}"
    unconfined = [p for p in processes if _selinux_type(p["label"]) in params["domains"]]
    unreviewed = sorted({f"{p['exe']} ({_selinux_type(p['label'])})" for p in unconfined
                         if p["exe"] not in params["unconfined_programs_allowed"]})
    assert not unreviewed, f"services run unconfined and are not on the reviewed list: {', '.join(unreviewed)}"


@pytest.mark.control("GA-MAC-ALL-ENFORCING")
def test_apparmor_all_enforcing(facts, params):
    _assert_apparmor_enabled(facts)
    # Where allowed (Ubuntu 24.04), a profile in unconfined mode only grants user namespaces.
    allowed = {"enforce"} | ({"unconfined"} if params["unconfined_mode_profiles_allowed"] else set())
    not_enforcing = sorted(f"{name} ({mode})" for name, mode in _apparmor_profiles(facts).items() if mode not in allowed)
    assert not not_enforcing, f"AppArmor profiles not in enforce mode: {', '.join(not_enforcing)}"


@pytest.mark.control("1.6.1.7")
def test_setroubleshoot_absent(facts, params):
    present = installed(facts, params["packages"])
    assert not present, f"installed: {', '.join(present)}, expected not installed"


@pytest.mark.control("1.6.1.8")
def test_mcstrans_absent(facts, params):
    present = installed(facts, params["packages"])
    assert not present, f"installed: {', '.join(present)}, expected not installed"


# --- warning banners -----------------------------------------------------------------------
def _assert_banner(facts, path):
    text = facts.text(path)
    assert text is not None, f"{path} does not exist, expected a warning banner"
    assert text.strip(), f"{path} is empty, expected a warning banner"
    escapes = sorted(set(re.findall(r"\\[mrsv]", text)))
    assert not escapes, f"{path} shows system details through {' '.join(escapes)}"
    os_id = os_release_id(facts)
    assert not (os_id and os_id.lower() in text.lower()), f"{path} names the operating system ({os_id})"


def _assert_permissions(facts, path, max_mode):
    st = facts.stat(path)
    st = st.followed() if st is not None else None  # a banner read through a symlink: its target
    if st is None:
        return  # no such file: nothing to protect
    extra = st.mode & ~int(max_mode, 8)
    assert not extra and (st.owner, st.group_name) == ("root", "root"), \
        f"{path} is {st.owner}:{st.group_name} {st.mode:04o}, expected root:root {max_mode} or stricter"


@pytest.mark.control("1.7.1")
def test_motd_banner(facts, params):
    _assert_banner(facts, params["path"])


@pytest.mark.control("1.7.2")
def test_issue_banner(facts, params):
    _assert_banner(facts, params["path"])


@pytest.mark.control("1.7.3")
def test_issue_net_banner(facts, params):
    _assert_banner(facts, params["path"])


@pytest.mark.control("1.7.4")
def test_motd_permissions(facts, params):
    _assert_permissions(facts, params["path"], params["mode"])


@pytest.mark.control("1.7.5")
def test_issue_permissions(facts, params):
    _assert_permissions(facts, params["path"], params["mode"])


@pytest.mark.control("1.7.6")
def test_issue_net_permissions(facts, params):
    _assert_permissions(facts, params["path"], params["mode"])


# --- crypto policy -------------------------------------------------------------------------
@pytest.mark.control("1.9")
def test_crypto_policy_not_legacy(facts):
    policy = facts.output("crypto_policy").strip()
    assert policy, "update-crypto-policies --show printed no policy"
    assert policy.split(":")[0] != "LEGACY", f"the system-wide crypto policy is {policy}, expected anything but LEGACY"
