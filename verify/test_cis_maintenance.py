"""System maintenance (CIS section 6 of AL2023, 7 of the Debian family): account files and their
permissions, world-writable and unowned files, local users and groups, homes and dot files.

Everything is read on the booted instance, after cloud-init made the login user: its home and
dot files are checked like every other interactive account's. The checks judge the fact
snapshot (verify/collector.py): the account files as read, their metadata, the one filesystem
walk, root's login PATH and the listing of every home. A fact that could not be read fails the
check that needed it, with the reason.
"""
from __future__ import annotations

import posixpath
from collections import Counter

import pytest

from ga_facts import CommandResult, FactUnavailable, Stat, _stat_from
from ga_system import login_defs, login_shells, setid_programs, table, walk_complete

# How many paths a failure message names (the count says how many there were).
SHOWN = 10
# Files a system writes only on their first use: a backup written by the first change to an
# account file, the password history of the first password change. Any other file a check is
# given must exist: a path that does not (a typo, a file moved) would make its check vacuous.
WRITTEN_ON_FIRST_USE = ("/etc/passwd-", "/etc/group-", "/etc/shadow-", "/etc/gshadow-",
                        "/etc/security/opasswd", "/etc/security/opasswd.old")
# stat(1)'s %F names of the collector's file types (the wording the reports always used).
_KINDS = {"file": "regular file", "directory": "directory", "symlink": "symbolic link",
          "char-device": "character special file", "block-device": "block special file", "fifo": "fifo",
          "socket": "socket"}


def _kind(st: Stat) -> str:
    return _KINDS.get(st.type, st.type)


def _beyond(mode: int, allowed: str) -> bool:
    """Whether mode has a bit (special bits included) that the allowed mode does not."""
    return bool(mode & 0o7777 & ~int(allowed, 8))


def _sample(paths: list[str]) -> str:
    more = f" (and {len(paths) - SHOWN} more)" if len(paths) > SHOWN else ""
    return ", ".join(paths[:SHOWN]) + more


# --- account files -------------------------------------------------------------------------
def _table(facts, path: str, min_fields: int) -> list[list[str]]:
    """The colon-separated entries of an account file (blank lines left out). The file must
    exist and be read, and every entry must have all its fields: a malformed entry fails."""
    def parse() -> list[list[str]]:
        try:
            return table(facts.content(path), min_fields)
        except FactUnavailable as exc:
            message = str(exc)
            raise FactUnavailable(message if path in message else f"{path}: {message}") from None
    return facts.cached(f"maintenance-table:{path}", parse)


@pytest.fixture
def passwd(facts):
    return _table(facts, "/etc/passwd", 7)


@pytest.fixture
def group(facts):
    return _table(facts, "/etc/group", 4)


@pytest.fixture
def interactive(facts, passwd):
    """(name, uid, home) of every account whose shell is in /etc/shells and is not a nologin."""
    shells = login_shells(facts)
    return [(e[0], int(e[2]), e[5]) for e in passwd if e[6] in shells]


# --- 6.1.x: permissions of the account files -----------------------------------------------
def _assert_file_permissions(facts, params):
    problems = []
    for path in params["paths"]:
        st = facts.stat(path)  # lstat: a symlink is reported as one, never followed
        if st is None:
            if path not in WRITTEN_ON_FIRST_USE:
                problems.append(f"{path} does not exist")
            continue
        if st.type != "file" or st.owner != "root" or st.group_name not in params["groups"] \
                or _beyond(st.mode, params["mode"]):
            problems.append(f"{path} is a {_kind(st)} {st.owner}:{st.group_name} {st.mode:04o}")
    mode = params["mode"] if int(params["mode"], 8) == 0 else f"{params['mode']} or stricter"
    expected = f"a regular file owned by root, group {' or '.join(params['groups'])}, mode {mode}"
    assert not problems, f"{'; '.join(problems)}; expected {expected}"


@pytest.mark.control("6.1.1")
def test_passwd_permissions(facts, params):
    _assert_file_permissions(facts, params)


@pytest.mark.control("6.1.2")
def test_passwd_permissions_listed_twice(facts, params):
    _assert_file_permissions(facts, params)


@pytest.mark.control("6.1.3")
def test_passwd_backup_permissions(facts, params):
    _assert_file_permissions(facts, params)


@pytest.mark.control("6.1.4")
def test_group_permissions(facts, params):
    _assert_file_permissions(facts, params)


@pytest.mark.control("6.1.5")
def test_group_backup_permissions(facts, params):
    _assert_file_permissions(facts, params)


@pytest.mark.control("6.1.6")
def test_shadow_permissions(facts, params):
    _assert_file_permissions(facts, params)


@pytest.mark.control("6.1.7")
def test_shadow_backup_permissions(facts, params):
    _assert_file_permissions(facts, params)


@pytest.mark.control("6.1.8")
def test_gshadow_permissions(facts, params):
    _assert_file_permissions(facts, params)


@pytest.mark.control("6.1.9")
def test_gshadow_backup_permissions(facts, params):
    _assert_file_permissions(facts, params)


@pytest.mark.control("GA-PERM-SHELLS")
def test_shells_permissions(facts, params):
    _assert_file_permissions(facts, params)


@pytest.mark.control("GA-PERM-OPASSWD")
def test_opasswd_permissions(facts, params):
    _assert_file_permissions(facts, params)


# --- 6.1.11, 6.1.12: scans of the local filesystems ----------------------------------------
def _scan_roots(walk, params) -> list[str]:
    """Mount points of the local filesystems (df --local), without skipped types and trees:
    what this control asks to scan, which must be what the walk scanned."""
    df = walk.get("df")
    if not isinstance(df, dict):
        raise FactUnavailable("the walk has no `df --local` result (not collected)")
    result = CommandResult("df", df.get("argv", []), df.get("rc"), df.get("stdout", ""), df.get("stderr", ""),
                           df.get("error", "") or "")
    if result.rc != 0:
        raise FactUnavailable(f"cannot list the local filesystems: {result.describe()}")
    skipped_types = {arg[2:] for arg in result.argv[1:] if arg.startswith("-x")}
    if skipped_types != set(params["skip_fstypes"]):
        raise FactUnavailable(
            f"the walk skipped filesystem types [{', '.join(sorted(skipped_types))}], this control skips "
            f"[{', '.join(sorted(params['skip_fstypes']))}]: it did not scan what this control asks")
    skips = [skip.rstrip("/") for skip in params["skip_paths"]]
    roots = []
    for line in result.stdout.splitlines()[1:]:  # below df's header
        mount = line.strip()
        if mount and mount not in roots and not any(mount == s or mount.startswith(s + "/") for s in skips):
            roots.append(mount)
    roots.sort()
    assert "/" in roots, f"/ is not among the local filesystems to scan (found: {', '.join(roots) or 'none'})"
    walked = walk.get("roots", {}).get("scan")
    if walked is None:
        raise FactUnavailable("the walk does not say which filesystems it scanned (not collected)")
    missed = [root for root in roots if root not in walked]
    if missed:
        raise FactUnavailable(f"the walk did not scan {', '.join(missed)}, which this control asks to scan")
    return roots


def _findings(walk, params, kind: str) -> list[dict]:
    """The walk's findings of one kind under the filesystems this control scans (the walk also
    visits filesystems that only the setuid check looks at). Fails when the walk's list was cut
    and nothing shows that the findings it left out are outside those filesystems."""
    roots = set(_scan_roots(walk, params))
    walk_complete(walk)
    listed = walk.get(kind)
    total = walk.get("counts", {}).get(kind)
    if listed is None or total is None:
        raise FactUnavailable(f"the walk has no {kind.replace('_', '-')} findings (not collected)")
    found = [entry for entry in listed if entry["root"] in roots]
    if total > len(listed) and not found:
        raise FactUnavailable(f"the walk found {total} {kind.replace('_', '-')} entries but listed only "
                              f"{len(listed)}, none on the filesystems this control scans: cannot tell about the rest")
    return found


def _cut(walk, kind: str, found: list) -> str:
    """A note when the walk listed only part of what it found."""
    total, listed = walk["counts"][kind], len(walk[kind])
    return f" (the walk found {total} in all and listed the first {listed})" if total > listed and found else ""


@pytest.mark.control("6.1.11")
def test_no_world_writable_files_and_sticky_directories(walk, params):
    found = _findings(walk, params, "world_writable")
    files = [entry["path"] for entry in found if entry["type"] == "f"]
    dirs = [entry["path"] for entry in found if entry["type"] == "d"]
    problems = []
    if files:
        problems.append(f"world-writable files ({len(files)}): {_sample(files)}")
    if dirs:
        problems.append(f"world-writable directories without the sticky bit ({len(dirs)}): {_sample(dirs)}")
    assert not problems, f"{'; '.join(problems)}{_cut(walk, 'world_writable', found)}; expected none on local filesystems"


@pytest.mark.control("6.1.12")
def test_no_unowned_or_ungrouped_files(walk, params):
    found = [f"{entry['path']} ({entry['user']}:{entry['group']})" for entry in _findings(walk, params, "unowned")]
    assert not found, (f"files or directories without a known owner or group ({len(found)}): {_sample(found)}"
                       f"{_cut(walk, 'unowned', found)}; expected none on local filesystems")


@pytest.mark.control("GA-SETID-REVIEWED")
def test_setid_programs_are_the_reviewed_ones(facts, walk, params, os_data, evidence):
    reviewed = params["reviewed"].get(os_data["name"])
    if not reviewed:
        raise FactUnavailable(f"the catalogue has no reviewed list of setuid/setgid programs for {os_data['name']}")
    found = setid_programs(facts, walk, params["skip_fstypes"])
    problems = []
    for entry in found:
        allowed = reviewed.get(entry["path"])
        if allowed is None:
            problems.append(f"{entry['path']} ({entry['mode']}, not reviewed)")
        elif int(entry["mode"], 8) & ~int(allowed, 8) & 0o7777:
            problems.append(f"{entry['path']} ({entry['mode']}, reviewed as {allowed})")
    assert not problems, (f"setuid/setgid programs beyond the reviewed list ({len(problems)}): {'; '.join(problems)}; "
                          "review each (the catalogue's GA-SETID-REVIEWED list) or remove it")
    # The inventory itself, for the report's row: what a reviewer compares with the list.
    evidence(f"{len(found)} setuid/setgid programs, each reviewed: "
             + ", ".join(f"{entry['path']} {entry['mode']}" for entry in found))


# --- 6.2.x: local users and groups -----------------------------------------------------------
@pytest.mark.control("6.2.1")
def test_passwords_are_shadowed(passwd):
    unshadowed = [e[0] for e in passwd if e[1] != "x"]
    assert not unshadowed, f"accounts whose /etc/passwd password field is not 'x': {', '.join(unshadowed)}"


@pytest.mark.control("6.2.2")
def test_no_empty_password_fields(facts):
    # The collector redacts hashes to their scheme; an empty field stays empty.
    empty = [e[0] for e in _table(facts, "/etc/shadow", 9) if e[1] == ""]
    assert not empty, f"accounts with an empty password field in /etc/shadow: {', '.join(empty)}; expected a hash or a lock"


@pytest.mark.control("6.2.3")
def test_primary_groups_exist(passwd, group):
    gids = {e[2] for e in group}
    orphans = [f"{e[0]} (GID {e[3]})" for e in passwd if e[3] not in gids]
    assert not orphans, f"primary groups missing from /etc/group for: {', '.join(orphans)}"


@pytest.mark.control("GA-USERS-SHADOW-GROUP")
def test_shadow_group_is_empty(passwd, group, params):
    entry = next((e for e in group if e[0] == params["group"]), None)
    if entry is None:
        return  # no such group: nobody can be in it
    members = [m for m in entry[3].split(",") if m]
    primary = [e[0] for e in passwd if e[3] == entry[2]]
    assert not members and not primary, (
        f"group {params['group']} has members [{', '.join(members)}] and is the primary group of "
        f"[{', '.join(primary)}]; expected neither")


def _duplicates(values) -> list[str]:
    return sorted(value for value, count in Counter(values).items() if count > 1)


@pytest.mark.control("6.2.4")
def test_no_duplicate_uids(passwd):
    dups = _duplicates(e[2] for e in passwd)
    assert not dups, f"UIDs used by more than one account: {', '.join(dups)}"


@pytest.mark.control("6.2.5")
def test_no_duplicate_gids(group):
    dups = _duplicates(e[2] for e in group)
    assert not dups, f"GIDs used by more than one group: {', '.join(dups)}"


@pytest.mark.control("6.2.6")
def test_no_duplicate_user_names(passwd):
    dups = _duplicates(e[0] for e in passwd)
    assert not dups, f"user names listed more than once in /etc/passwd: {', '.join(dups)}"


@pytest.mark.control("6.2.7")
def test_no_duplicate_group_names(group):
    dups = _duplicates(e[0] for e in group)
    assert not dups, f"group names listed more than once in /etc/group: {', '.join(dups)}"


def _root_path_entry(facts, entry: str) -> Stat | None:
    """A directory of root's PATH as the collector stat'ed it (symlinks followed); None: absent."""
    entries = facts.section("root_path_entries")
    if entry not in entries:
        raise FactUnavailable(f"the snapshot did not stat {entry} of root's PATH (not collected)")
    return _stat_from(entry, entries[entry])


@pytest.mark.control("6.2.8")
def test_root_path_integrity(facts):
    # root's PATH as its login shell sets it (the last line: a profile may print before it);
    # a terminal would add a CR, dropped here.
    lines = [line for line in facts.output("root_login_path").replace("\r", "").splitlines() if line.strip()]
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
        st = _root_path_entry(facts, entry)
        if st is None:
            problems.append(f"{entry} does not exist")
        elif st.type != "directory":
            problems.append(f"{entry} is a {_kind(st)}")
        elif st.owner != "root" or st.mode & 0o022:
            problems.append(f"{entry} is owned by {st.owner} with mode {st.mode:04o}")
    assert not problems, (f"root's PATH {root_path} has {'; '.join(problems)}; expected only existing "
                          "absolute directories owned by root that group and others cannot write")


@pytest.mark.control("6.2.9")
def test_root_is_the_only_uid_0(passwd):
    uid0 = [e[0] for e in passwd if e[2] == "0"]
    assert uid0 == ["root"], f"accounts with UID 0: {', '.join(uid0) or 'none'}; expected root alone"


def _home_listing(facts, home: str) -> dict[str, Stat | None]:
    """The collector's listing of a home: the home itself (lstat) and what is directly in it."""
    listing = facts.tree(home)
    if home not in listing:
        raise FactUnavailable(f"the snapshot did not list {home} (not collected)")
    raw = facts.collected.get("trees", {}).get(home, {}).get(home, {})
    if raw.get("list_error"):
        raise FactUnavailable(f"cannot list {home}: {raw['list_error']}")
    return listing


@pytest.mark.control("6.2.10")
def test_interactive_homes(facts, interactive, params):
    # The login user the snapshot was gathered for (the OS data's, saved with the facts).
    login_user = facts.context.get("login_user")
    if not login_user:
        raise FactUnavailable("the snapshot does not name the login user (not collected)")
    names = [name for name, _, _ in interactive]
    assert login_user in names, (
        f"the login user {login_user} is not among the interactive accounts ({', '.join(names)}): "
        "expected its shell to be listed in /etc/shells")
    problems = []
    for name, uid, home in interactive:
        if not home.startswith("/") or home == "/":
            problems.append(f"{name}: home {home or '(none)'} does not exist")
            continue
        st = _home_listing(facts, home)[home]
        st = st.followed() if st is not None else None  # a symlinked home: what it points at
        if st is None:
            problems.append(f"{name}: home {home} does not exist")
        elif st.type != "directory":
            problems.append(f"{name}: home {home} is a {_kind(st)}")
        elif st.uid != uid or _beyond(st.mode, params["home_mode"]):
            problems.append(f"{name}: home {home} owned by UID {st.uid} with mode {st.mode:04o}")
    assert not problems, (f"{'; '.join(problems)}; expected each home to exist, belong to its user and "
                          f"have mode {params['home_mode']} or stricter")


def _octal(value: str, key: str) -> int:
    try:
        return int(value, 8)
    except ValueError:
        raise AssertionError(f"{key} {value} in /etc/login.defs is not an octal mode") from None


@pytest.mark.control("6.2.10")
def test_new_homes_get_a_restricted_mode(facts, params):
    # useradd (cloud-init's, for instance) makes a home with HOME_MODE, else 0777 minus UMASK.
    settings = login_defs(facts)
    home_mode = settings["HOME_MODE"].split()[0] if settings.get("HOME_MODE", "").strip() else None
    if home_mode is not None:
        effective, source = _octal(home_mode, "HOME_MODE"), f"HOME_MODE {home_mode}"
    else:
        umask = settings["UMASK"].split()[0] if settings.get("UMASK", "").strip() else "022"
        effective, source = 0o777 & ~_octal(umask, "UMASK"), f"HOME_MODE unset, UMASK {umask}"
    assert not _beyond(effective, params["home_mode"]), (
        f"useradd makes new home directories with mode {effective:04o} ({source} in /etc/login.defs); "
        f"expected {params['home_mode']} or stricter")


@pytest.mark.control("6.2.11")
def test_interactive_dot_files(facts, interactive, params):
    problems = []
    for name, _, home in interactive:
        if not home.startswith("/") or home == "/":
            continue
        listing = _home_listing(facts, home)
        st = listing[home]
        if st is not None and st.type == "symlink":
            target = st.followed()
            if target is not None and target.type == "directory":
                raise FactUnavailable(f"the home {home} of {name} is a symbolic link: the snapshot did not list "
                                      "the directory it points at (not collected)")
        if st is None or st.type != "directory":
            continue  # no home (6.2.10 reports it): no dot files
        parent = home.rstrip("/")
        for path, entry in listing.items():
            if entry is None or posixpath.dirname(path) != parent or path.rstrip("/") == parent:
                continue
            if posixpath.basename(path).startswith(".") and entry.type == "file" and entry.mode & 0o022:
                problems.append(f"{path} of {name} is writable by group or others (mode {entry.mode:04o})")
        for forbidden in params["forbidden_files"]:
            path = posixpath.join(home, forbidden)
            if listing.get(path) is not None:  # present in any form, a dangling symlink included
                problems.append(f"{path} of {name} exists")
    assert not problems, (f"{'; '.join(problems)}; expected dot files writable by their owner only and no "
                          f"{', '.join(params['forbidden_files'])}")
