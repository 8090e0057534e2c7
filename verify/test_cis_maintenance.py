"""System maintenance (CIS section 6 of AL2023, 7 of the Debian family): account files and their
permissions, world-writable and unowned files, local users and groups, homes and dot files.

Everything is read on the booted instance, after cloud-init made the login user: its home and
dot files are checked like every other interactive account's.
"""
from __future__ import annotations

import shlex
from collections import Counter

import pytest

# How many paths a failure message names (the count says how many there were).
SHOWN = 10


def _mode(text: str) -> str:
    return f"{int(text, 8):04o}"


def _beyond(mode: int, allowed: str) -> bool:
    """Whether mode has a bit (special bits included) that the allowed mode does not."""
    return bool(mode & 0o7777 & ~int(allowed, 8))


def _sample(paths: list[str]) -> str:
    more = f" (and {len(paths) - SHOWN} more)" if len(paths) > SHOWN else ""
    return ", ".join(paths[:SHOWN]) + more


# --- account files -------------------------------------------------------------------------
def _table(host, path: str) -> list[list[str]]:
    """The colon-separated entries of an account file (blank lines left out)."""
    return [line.split(":") for line in host.file(path).content_string.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def passwd(host):
    return _table(host, "/etc/passwd")


@pytest.fixture(scope="module")
def group(host):
    return _table(host, "/etc/group")


@pytest.fixture(scope="module")
def interactive(host, passwd):
    """(name, uid, home) of every account whose shell is in /etc/shells and is not a nologin."""
    shells = set()
    for line in host.file("/etc/shells").content_string.splitlines():
        shell = line.strip()
        if shell.startswith("/") and not shell.endswith("/nologin"):
            shells.add(shell)
    return [(e[0], int(e[2]), e[5]) for e in passwd if len(e) >= 7 and e[6] in shells]


# --- 6.1.x: permissions of the account files -----------------------------------------------
def _assert_file_permissions(host, params):
    problems = []
    for path in params["paths"]:
        quoted = shlex.quote(path)
        out = host.check_output(
            f"if [ -e {quoted} ] || [ -L {quoted} ]; then stat -c '%U %G %a %F' -- {quoted}; else echo absent; fi")
        if out == "absent":
            continue  # a backup file that was never written, opasswd without password history
        owner, grp, mode, kind = out.split(" ", 3)
        kind = "regular file" if kind == "regular empty file" else kind
        if kind != "regular file" or owner != "root" or grp not in params["groups"] or _beyond(int(mode, 8), params["mode"]):
            problems.append(f"{path} is a {kind} {owner}:{grp} {_mode(mode)}")
    mode = params["mode"] if int(params["mode"], 8) == 0 else f"{params['mode']} or stricter"
    expected = f"a regular file owned by root, group {' or '.join(params['groups'])}, mode {mode}"
    assert not problems, f"{'; '.join(problems)}; expected {expected}"


@pytest.mark.control("6.1.1")
def test_passwd_permissions(host, params):
    _assert_file_permissions(host, params)


@pytest.mark.control("6.1.2")
def test_passwd_permissions_listed_twice(host, params):
    _assert_file_permissions(host, params)


@pytest.mark.control("6.1.3")
def test_passwd_backup_permissions(host, params):
    _assert_file_permissions(host, params)


@pytest.mark.control("6.1.4")
def test_group_permissions(host, params):
    _assert_file_permissions(host, params)


@pytest.mark.control("6.1.5")
def test_group_backup_permissions(host, params):
    _assert_file_permissions(host, params)


@pytest.mark.control("6.1.6")
def test_shadow_permissions(host, params):
    _assert_file_permissions(host, params)


@pytest.mark.control("6.1.7")
def test_shadow_backup_permissions(host, params):
    _assert_file_permissions(host, params)


@pytest.mark.control("6.1.8")
def test_gshadow_permissions(host, params):
    _assert_file_permissions(host, params)


@pytest.mark.control("6.1.9")
def test_gshadow_backup_permissions(host, params):
    _assert_file_permissions(host, params)


@pytest.mark.control("GA-PERM-SHELLS")
def test_shells_permissions(host, params):
    _assert_file_permissions(host, params)


@pytest.mark.control("GA-PERM-OPASSWD")
def test_opasswd_permissions(host, params):
    _assert_file_permissions(host, params)


# --- 6.1.11, 6.1.12: scans of the local filesystems ----------------------------------------
def _scan_roots(host, params) -> list[str]:
    """Mount points of the local filesystems (df --local), without skipped types and trees."""
    types = " ".join(f"-x {shlex.quote(t)}" for t in params["skip_fstypes"])
    out = host.check_output(f"df --local --output=target {types} 2>/dev/null | tail -n +2 | sort -u")
    roots = []
    for mount in (line.strip() for line in out.splitlines()):
        if mount and not any(mount == skip or mount.startswith(skip.rstrip("/") + "/") for skip in params["skip_paths"]):
            roots.append(mount)
    assert "/" in roots, f"/ is not among the local filesystems to scan (found: {', '.join(roots) or 'none'})"
    return roots


def _find(host, roots: list[str], expression: str) -> list[str]:
    """One find -xdev over the scan roots; its first 1000 results, one a line."""
    command = f"find {' '.join(shlex.quote(r) for r in roots)} -xdev {expression} 2>/dev/null | head -n 1000"
    return [line for line in host.run(command).stdout.splitlines() if line]


@pytest.mark.control("6.1.11")
def test_no_world_writable_files_and_sticky_directories(host, params):
    found = _find(host, _scan_roots(host, params),
                  r"\( -type f -perm -0002 -o -type d -perm -0002 ! -perm -1000 \) -printf '%y %p\n'")
    files = [line[2:] for line in found if line.startswith("f ")]
    dirs = [line[2:] for line in found if line.startswith("d ")]
    problems = []
    if files:
        problems.append(f"world-writable files ({len(files)}): {_sample(files)}")
    if dirs:
        problems.append(f"world-writable directories without the sticky bit ({len(dirs)}): {_sample(dirs)}")
    assert not problems, f"{'; '.join(problems)}; expected none on local filesystems"


@pytest.mark.control("6.1.12")
def test_no_unowned_or_ungrouped_files(host, params):
    found = _find(host, _scan_roots(host, params), r"\( -nouser -o -nogroup \) -printf '%p (%u:%g)\n'")
    assert not found, (f"files or directories without a known owner or group ({len(found)}): {_sample(found)}; "
                       "expected none on local filesystems")


# --- 6.2.x: local users and groups -----------------------------------------------------------
@pytest.mark.control("6.2.1")
def test_passwords_are_shadowed(passwd):
    unshadowed = [e[0] for e in passwd if len(e) < 2 or e[1] != "x"]
    assert not unshadowed, f"accounts whose /etc/passwd password field is not 'x': {', '.join(unshadowed)}"


@pytest.mark.control("6.2.2")
def test_no_empty_password_fields(host):
    empty = [e[0] for e in _table(host, "/etc/shadow") if len(e) < 2 or e[1] == ""]
    assert not empty, f"accounts with an empty password field in /etc/shadow: {', '.join(empty)}; expected a hash or a lock"


@pytest.mark.control("6.2.3")
def test_primary_groups_exist(passwd, group):
    gids = {e[2] for e in group if len(e) >= 3}
    orphans = [f"{e[0]} (GID {e[3]})" for e in passwd if len(e) >= 4 and e[3] not in gids]
    assert not orphans, f"primary groups missing from /etc/group for: {', '.join(orphans)}"


@pytest.mark.control("GA-USERS-SHADOW-GROUP")
def test_shadow_group_is_empty(passwd, group, params):
    entry = next((e for e in group if e[0] == params["group"]), None)
    if entry is None:
        return  # no such group: nobody can be in it
    members = [m for m in (entry[3].split(",") if len(entry) >= 4 else []) if m]
    primary = [e[0] for e in passwd if len(e) >= 4 and e[3] == entry[2]]
    assert not members and not primary, (
        f"group {params['group']} has members [{', '.join(members)}] and is the primary group of "
        f"[{', '.join(primary)}]; expected neither")


def _duplicates(values) -> list[str]:
    return sorted(value for value, count in Counter(values).items() if count > 1)


@pytest.mark.control("6.2.4")
def test_no_duplicate_uids(passwd):
    dups = _duplicates(e[2] for e in passwd if len(e) >= 3)
    assert not dups, f"UIDs used by more than one account: {', '.join(dups)}"


@pytest.mark.control("6.2.5")
def test_no_duplicate_gids(group):
    dups = _duplicates(e[2] for e in group if len(e) >= 3)
    assert not dups, f"GIDs used by more than one group: {', '.join(dups)}"


@pytest.mark.control("6.2.6")
def test_no_duplicate_user_names(passwd):
    dups = _duplicates(e[0] for e in passwd)
    assert not dups, f"user names listed more than once in /etc/passwd: {', '.join(dups)}"


@pytest.mark.control("6.2.7")
def test_no_duplicate_group_names(group):
    dups = _duplicates(e[0] for e in group)
    assert not dups, f"group names listed more than once in /etc/group: {', '.join(dups)}"


@pytest.mark.control("6.2.8")
def test_root_path_integrity(host):
    # root's PATH as its login shell sets it; a terminal would add a CR, dropped here.
    lines = host.check_output("sudo -Hiu root printenv PATH").replace("\r", "").splitlines()
    root_path = lines[-1] if lines else ""
    assert root_path, "root's login shell reports no PATH"
    problems = []
    entries = root_path.split(":")
    if "" in entries:
        problems.append("an empty entry")
    relative = [e for e in entries if e and not e.startswith("/")]
    if relative:
        problems.append(f"relative entries {', '.join(relative)}")
    for entry in dict.fromkeys(e for e in entries if e.startswith("/")):
        out = host.run(f"stat -Lc '%U %a %F' -- {shlex.quote(entry)}")
        if out.rc != 0:
            problems.append(f"{entry} does not exist")
            continue
        owner, mode, kind = out.stdout.strip().split(" ", 2)
        if kind != "directory":
            problems.append(f"{entry} is a {kind}")
        elif owner != "root" or int(mode, 8) & 0o022:
            problems.append(f"{entry} is owned by {owner} with mode {_mode(mode)}")
    assert not problems, (f"root's PATH {root_path} has {'; '.join(problems)}; expected only existing "
                          "absolute directories owned by root that group and others cannot write")


@pytest.mark.control("6.2.9")
def test_root_is_the_only_uid_0(passwd):
    uid0 = [e[0] for e in passwd if len(e) >= 3 and e[2] == "0"]
    assert uid0 == ["root"], f"accounts with UID 0: {', '.join(uid0) or 'none'}; expected root alone"


@pytest.mark.control("6.2.10")
def test_interactive_homes(host, interactive, params, target_os):
    names = [name for name, _, _ in interactive]
    assert target_os["login_user"] in names, (
        f"the login user {target_os['login_user']} is not among the interactive accounts ({', '.join(names)}): "
        "expected its shell to be listed in /etc/shells")
    problems = []
    for name, uid, home in interactive:
        out = host.run(f"stat -Lc '%u %a %F' -- {shlex.quote(home)}")
        if out.rc != 0 or not home.startswith("/") or home == "/":
            problems.append(f"{name}: home {home or '(none)'} does not exist")
            continue
        owner, mode, kind = out.stdout.strip().split(" ", 2)
        if kind != "directory":
            problems.append(f"{name}: home {home} is a {kind}")
        elif int(owner) != uid or _beyond(int(mode, 8), params["home_mode"]):
            problems.append(f"{name}: home {home} owned by UID {owner} with mode {_mode(mode)}")
    assert not problems, (f"{'; '.join(problems)}; expected each home to exist, belong to its user and "
                          f"have mode {params['home_mode']} or stricter")


def _login_defs_value(text: str, key: str) -> str | None:
    value = None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == key:
            value = fields[1]
    return value


@pytest.mark.control("6.2.10")
def test_new_homes_get_a_restricted_mode(host, params):
    # useradd (cloud-init's, for instance) makes a home with HOME_MODE, else 0777 minus UMASK.
    login_defs = host.file("/etc/login.defs").content_string
    home_mode = _login_defs_value(login_defs, "HOME_MODE")
    if home_mode is not None:
        effective, source = int(home_mode, 8), f"HOME_MODE {home_mode}"
    else:
        umask = _login_defs_value(login_defs, "UMASK") or "022"
        effective, source = 0o777 & ~int(umask, 8), f"HOME_MODE unset, UMASK {umask}"
    assert not _beyond(effective, params["home_mode"]), (
        f"useradd makes new home directories with mode {effective:04o} ({source} in /etc/login.defs); "
        f"expected {params['home_mode']} or stricter")


@pytest.mark.control("6.2.11")
def test_interactive_dot_files(host, interactive, params):
    forbidden = " ".join(shlex.quote(name) for name in params["forbidden_files"])
    problems = []
    for name, _, home in interactive:
        if not home.startswith("/") or home == "/":
            continue
        quoted = shlex.quote(home)
        out = host.run(
            f"[ -d {quoted} ] || exit 0; "
            f"find {quoted} -mindepth 1 -maxdepth 1 -name '.*' -type f -perm /022 -printf 'writable %p %m\\n'; "
            f"for n in {forbidden}; do p={quoted}/\"$n\"; "
            "if [ -e \"$p\" ] || [ -L \"$p\" ]; then echo \"present $p\"; fi; done")
        for line in out.stdout.splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "writable":
                path, _, mode = rest.rpartition(" ")
                problems.append(f"{path} of {name} is writable by group or others (mode {_mode(mode)})")
            elif kind == "present":
                problems.append(f"{rest} of {name} exists")
    assert not problems, (f"{'; '.join(problems)}; expected dot files writable by their owner only and no "
                          f"{', '.join(params['forbidden_files'])}")
