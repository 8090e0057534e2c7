"""The fact collector: runs ON the instance under test, as root, and prints one JSON document.

verify/ga_facts.py sends this file's source to the instance in one SSH command (`python3 -c`,
the source and the request as base64 arguments: nothing here is ever interpolated into a
shell), and every check then judges the returned snapshot in-process.

It gathers raw facts only - command outputs with their exit status, file contents, file
metadata and one filesystem walk - and parses nothing it does not have to: verdicts are made
on the pipeline's side, where they can be re-checked offline from the saved snapshot. A
command that fails is recorded with its exit status and stderr; the checks that need it then
fail with that reason. Nothing is ignored; only a systemctl call that timed out reaching PID 1 (a
busy machine, not a fact about the host) is tried again.

Secrets never leave the instance: password hashes in shadow and gshadow are replaced by their
scheme prefix, GRUB's by their iteration count and a digest, private keys and
/etc/security/opasswd are stat'ed but not read, and the secret scan returns file names and the
kind of secret only, never what matched.

Standard library only, Python 3.6 or newer (the oldest python3 among the supported OS).
"""
import base64
import concurrent.futures
import fnmatch
import glob
import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import stat as statmod
import subprocess
import sys
import time
import zlib

SCHEMA = 1
READ_LIMIT = 512 * 1024  # larger files are stat'ed, not read
WALK_SAMPLE = 1000  # findings kept per class of the filesystem walk (the count is kept whole)
COMMAND_TIMEOUT = 180
WALK_TIMEOUT = 900
LONG_COMMANDS = ("aide_check",)
# sudo's secure_path is usually fine; this makes the collector independent of it.
SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Files read for their metadata only: they hold secrets or are not configuration.
NEVER_READ = ("/etc/security/opasswd", "/etc/security/opasswd.old", "/etc/ssh/ssh_host_*_key")
SHADOW_FILES = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-")


# --- small readers ---------------------------------------------------------------------------
def _name(lookup, number):
    try:
        return lookup(number)[0]
    except KeyError:
        return None  # no such user/group: the number is all there is


def stat_entry(path, follow=False):
    """Metadata of a path as a dict; {"exists": False} when absent; {"error": ...} otherwise."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        return {"exists": False}
    except OSError as exc:
        return {"error": "%s: %s" % (type(exc).__name__, exc.strerror or exc)}
    mode = st.st_mode
    kinds = ((statmod.S_ISREG, "file"), (statmod.S_ISDIR, "directory"), (statmod.S_ISLNK, "symlink"),
             (statmod.S_ISCHR, "char-device"), (statmod.S_ISBLK, "block-device"), (statmod.S_ISFIFO, "fifo"),
             (statmod.S_ISSOCK, "socket"))
    entry = {
        "exists": True,
        "type": next((name for test, name in kinds if test(mode)), "unknown"),
        "mode": "%04o" % statmod.S_IMODE(mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "user": _name(pwd.getpwuid, st.st_uid),
        "group": _name(grp.getgrgid, st.st_gid),
        "size": st.st_size,
        "mtime": int(st.st_mtime),
    }
    if entry["type"] == "symlink":
        try:
            entry["target"] = os.readlink(path)
        except OSError as exc:
            entry["target_error"] = str(exc)
        entry["follow"] = stat_entry(path, follow=True)
    return entry


def _redact_account_line(line):
    """name:HASH:... -> name:$6$<redacted>:... (the scheme and lock prefix stay: checks need them)."""
    fields = line.split(":")
    if len(fields) < 2:
        return line
    secret = fields[1]
    lock = ""
    while secret[:1] in ("!", "*"):
        lock, secret = lock + secret[0], secret[1:]
    if secret.startswith("$"):
        scheme = secret.split("$")[1] if secret.count("$") >= 2 else ""
        fields[1] = "%s$%s$<redacted>" % (lock, scheme)
    elif secret:
        fields[1] = lock + "<redacted>"
    return ":".join(fields)


def redact_accounts(text):
    return "\n".join(_redact_account_line(line) for line in text.split("\n"))


# A GRUB password hash (grub-mkpasswd-pbkdf2's output) wherever a file holds one (grub.cfg,
# user.cfg): its iteration count stays, salt and hash become a short digest of the whole, which
# tells a configured hash from another without giving anything to guess passwords against.
_GRUB_HASH = re.compile(r"grub\.pbkdf2\.sha512\.([0-9]+)\.[0-9A-Fa-f]+\.[0-9A-Fa-f]+")


def grub_hash_digest(grub_hash):
    return hashlib.sha256(grub_hash.encode("ascii")).hexdigest()[:16]


def redact_grub_hashes(text):
    return _GRUB_HASH.sub(lambda m: "grub.pbkdf2.sha512.%s.<redacted-sha256:%s>"
                          % (m.group(1), grub_hash_digest(m.group(0))), text)


def read_file(path):
    """{"content": text} | {"exists": False} | {"error": why} | {"skipped": why}."""
    if any(fnmatch.fnmatch(path, pattern) for pattern in NEVER_READ):
        return {"skipped": "not read on purpose (secret)"}
    try:
        size = os.stat(path).st_size
        if size > READ_LIMIT:
            return {"skipped": "larger than %d bytes" % READ_LIMIT}
        with open(path, "rb") as handle:
            data = handle.read(READ_LIMIT + 1)
    except FileNotFoundError:
        return {"exists": False}
    except IsADirectoryError:
        return {"skipped": "a directory"}
    except OSError as exc:
        return {"error": "%s: %s" % (type(exc).__name__, exc.strerror or exc)}
    if b"\0" in data:
        return {"skipped": "binary"}
    text = data.decode("utf-8", errors="replace")
    if path in SHADOW_FILES:
        text = redact_accounts(text)
    return {"content": redact_grub_hashes(text)}


def run(argv, timeout=COMMAND_TIMEOUT, env=None):
    """One command: argv list (no shell), with its exit status, stdout and stderr."""
    started = time.monotonic()
    program = shutil.which(argv[0], path=SEARCH_PATH) if not argv[0].startswith("/") else argv[0]
    if program is None:
        return {"argv": argv, "rc": None, "error": "%s: command not found" % argv[0], "stdout": "", "stderr": ""}
    try:
        proc = subprocess.run([program] + argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"argv": argv, "rc": None, "error": "timed out after %d s" % timeout, "stdout": "", "stderr": ""}
    except OSError as exc:
        return {"argv": argv, "rc": None, "error": str(exc), "stdout": "", "stderr": ""}
    return {"argv": argv, "rc": proc.returncode, "stdout": proc.stdout.decode("utf-8", errors="replace"),
            "stderr": proc.stderr.decode("utf-8", errors="replace")[-4000:],
            "seconds": round(time.monotonic() - started, 3)}


# What lists the installed packages for a split verification, per verifier: one name per line
# (dpkg: "status name", of which "not-installed" and "config-files" have no files to check).
PACKAGE_LISTS = {
    "dpkg": ["dpkg-query", "-W", "-f", "${db:Status-Status} ${binary:Package}\\n"],
    "rpm": ["rpm", "-qa", "--qf", "installed %{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}\\n"],
}


def run_split_by_package(argv, parts):
    """A whole-system package verification (`dpkg --verify`, `rpm -Va`) as `parts` processes,
    each over an interleaved slice of the installed packages, merged into one result as if one
    process had run. Each verifier hashes every file on one CPU, and it is the longest command
    of a collection; the output of the slices together is the output of the whole."""
    if parts < 2:
        return run(argv)
    listed = run(PACKAGE_LISTS[argv[0]])
    fields = [line.split() for line in listed["stdout"].splitlines()]
    names = [f[1] for f in fields if len(f) == 2 and f[0] not in ("not-installed", "config-files")]
    if listed["rc"] != 0 or len(names) < parts:
        return run(argv)
    options = [a for a in argv[1:] if a not in ("--verify", "-Va")]
    each = [argv[0], "--verify" if argv[0] == "dpkg" else "-V"] + options
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=parts) as pool:
        results = list(pool.map(lambda part: run(each + ["--"] + names[part::parts]), range(parts)))
    codes = [r["rc"] for r in results]
    failed = [r for r in results if r["rc"] is None]
    merged = {"argv": argv, "rc": None if failed else max(codes),
              "stdout": "".join(r["stdout"] for r in results),
              "stderr": "".join(r["stderr"] for r in results)[-4000:],
              "seconds": round(time.monotonic() - started, 3), "parts": parts}
    if failed:
        merged["error"] = failed[0].get("error", "")
    return merged


def read_sysctls():
    """Every kernel parameter under /proc/sys, by its sysctl name; unreadable ones with why."""
    values, errors = {}, {}
    for directory, _, names in os.walk("/proc/sys"):
        for name in names:
            path = os.path.join(directory, name)
            # sysctl's naming: path components joined by dots, a dot inside one becomes a slash.
            key = ".".join(part.replace(".", "/") for part in path[len("/proc/sys/"):].split("/"))
            try:
                with open(path, "rb") as handle:
                    values[key] = " ".join(handle.read().decode("utf-8", errors="replace").split())
            except OSError as exc:
                errors[key] = exc.strerror or str(exc)
    return {"values": values, "errors": errors}


def ssh_connection():
    """SSH_CONNECTION of the login session this collector runs under ("client port server port";
    sudo drops it from our own environment, our ancestors still have it), and the outermost
    ancestor that has it: the process sshd started for this remote command."""
    found = {}
    pid = os.getppid()
    for _ in range(16):
        try:
            with open("/proc/%d/environ" % pid, "rb") as handle:
                value = next((item.split(b"=", 1)[1].decode() for item in handle.read().split(b"\0")
                              if item.startswith(b"SSH_CONNECTION=")), None)
            if value is None and found:
                break  # above the command: sshd itself
            if value is not None:
                found = {"value": value, "pid": pid}
            with open("/proc/%d/stat" % pid) as handle:
                pid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if pid <= 1:
            break
    return found or {"error": "no ancestor process carries SSH_CONNECTION"}


def network_interfaces():
    interfaces = {}
    for path in sorted(glob.glob("/sys/class/net/*")):
        name = os.path.basename(path)
        entry = {"wireless": os.path.isdir(path + "/wireless") or os.path.exists(path + "/phy80211")}
        flags = read_file(path + "/flags")
        entry["flags"] = flags.get("content", "").strip() or None
        module = path + "/device/driver/module"
        entry["module"] = os.path.basename(os.path.realpath(module)) if os.path.exists(module) else None
        interfaces[name] = entry
    return interfaces


# --- the filesystem walk --------------------------------------------------------------------
def _mounts():
    """[(target, fstype, options)] of /proc/self/mounts, octal escapes decoded."""
    found = []
    with open("/proc/self/mounts") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) >= 4:
                target = fields[1].encode().decode("unicode_escape")
                found.append((target, fields[2], fields[3].split(",")))
    return found


def _nodev_fstypes():
    with open("/proc/filesystems") as handle:
        return {line.split()[1] for line in handle if line.startswith("nodev")}


def walk_roots(request):
    """The two sets of starting points the checks ask for:
    scan: `df --local` filesystems without skipped types and trees (world-writable, unowned);
    suid: filesystems on a block device that allow setuid programs (privileged programs)."""
    scan_req, suid_req = request.get("scan", {}), request.get("suid", {})
    df = run(["df", "--local", "--output=target"] + ["-x%s" % t for t in scan_req.get("skip_fstypes", [])])
    roots = {"df": df}
    scan = []
    if df["rc"] == 0:
        skips = [s.rstrip("/") for s in scan_req.get("skip_paths", [])]
        for line in df["stdout"].splitlines()[1:]:
            mount = line.strip()
            if mount and not any(mount == s or mount.startswith(s + "/") for s in skips):
                scan.append(mount)
    nodev = _nodev_fstypes()
    suid = [target for target, fstype, options in _mounts()
            if fstype not in nodev and fstype not in suid_req.get("skip_fstypes", [])
            and not {"noexec", "nosuid"} & set(options)]
    roots["scan"] = sorted(set(scan))
    roots["suid"] = sorted(set(suid))
    return roots


def _any_of(test, numbers):
    """find's expression for "test is one of numbers": -uid 0 -o -uid 1 ..."""
    expression = []
    for number in numbers:
        expression += (["-o"] if expression else []) + [test, str(number)]
    return expression or ["-false"]


def walk(request):
    """ONE find over every root either check needs; world-writable, unowned/ungrouped and
    setuid/setgid entries come out of the same traversal, each with the root it was found under."""
    roots = walk_roots(request)
    starts = sorted(set(roots["scan"]) | set(roots["suid"]))
    result = {"roots": {"scan": roots["scan"], "suid": roots["suid"]}, "df": roots["df"]}
    if not starts:
        result.update(rc=None, error="no filesystem to walk")
        return result
    # "Unowned" is a uid no account has: tested against the accounts NSS enumerates, by number
    # (find's -nouser asks NSS once per file, which costs more than the whole walk).
    known_uids = sorted({entry.pw_uid for entry in pwd.getpwall()})
    known_gids = sorted({entry.gr_gid for entry in grp.getgrall()})
    result["known"] = {"uids": len(known_uids), "gids": len(known_gids)}
    argv = ["find"] + starts + [
        "-xdev",
        "(", "(", "-type", "f", "-perm", "-0002", ")", "-o", "(", "-type", "d", "-perm", "-0002", "!", "-perm",
        "-1000", ")", ")", "-printf", "W\t%H\t%y\t%m\t%p\\0", ",",
        "(", "!", "("] + _any_of("-uid", known_uids) + [")", "-o", "!", "("] + _any_of("-gid", known_gids) + [
            ")", ")", "-printf", "O\t%H\t%u\t%g\t%p\\0", ",",
        "-type", "f", "-perm", "/6000", "-printf", "S\t%H\t%m\t%p\\0",
    ]
    started = time.monotonic()
    program = shutil.which("find", path=SEARCH_PATH)
    try:
        proc = subprocess.run([program] + argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=WALK_TIMEOUT)
    except (subprocess.TimeoutExpired, OSError, TypeError) as exc:
        result.update(rc=None, error="find: %s" % exc)
        return result
    classes = {"W": "world_writable", "O": "unowned", "S": "setid"}
    found = {name: [] for name in classes.values()}
    counts = {name: 0 for name in classes.values()}
    for record in proc.stdout.split(b"\0"):
        if not record:
            continue
        fields = record.decode("utf-8", errors="replace").split("\t")
        kind = classes.get(fields[0])
        if kind is None:
            continue
        counts[kind] += 1
        if len(found[kind]) < WALK_SAMPLE or kind == "setid":  # every setid program: audit rules need them all
            if kind == "world_writable":
                found[kind].append({"root": fields[1], "type": fields[2], "mode": fields[3], "path": fields[4]})
            elif kind == "unowned":
                found[kind].append({"root": fields[1], "user": fields[2], "group": fields[3], "path": fields[4]})
            else:
                found[kind].append({"root": fields[1], "mode": fields[2], "path": fields[3]})
    stderr = proc.stderr.decode("utf-8", errors="replace")
    result.update(argv=argv, rc=proc.returncode, stderr=stderr[-4000:], stderr_truncated=len(stderr) > 4000,
                  counts=counts, seconds=round(time.monotonic() - started, 3), **found)
    return result


def replaced_code():
    """Processes that run code no longer on disk: the program itself or an executable mapping
    of a file since deleted or replaced (/proc/<pid>/exe and maps end in " (deleted)"), as an
    upgrade leaves them until they restart. Anonymous memory (memfd, SysV) is not a file on
    disk. Processes that end while being read are skipped; kernel threads have no maps."""
    found = []
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        try:
            with open("/proc/%s/comm" % pid) as handle:
                comm = handle.read().strip()
            paths = set()
            try:
                exe = os.readlink("/proc/%s/exe" % pid)
            except OSError:
                exe = ""
            if exe.endswith(" (deleted)"):
                paths.add(exe[:-len(" (deleted)")])
            with open("/proc/%s/maps" % pid) as handle:
                for line in handle:
                    fields = line.rstrip("\n").split(None, 5)
                    if len(fields) == 6 and "x" in fields[1] and fields[5].endswith(" (deleted)"):
                        path = fields[5][:-len(" (deleted)")]
                        if path.startswith("/") and not path.startswith(("/memfd:", "/SYSV")):
                            paths.add(path)
        except OSError:
            continue
        found += [{"pid": int(pid), "comm": comm, "path": path} for path in sorted(paths)]
    return found


def _module_name(path):
    """A module's name as the kernel writes it, from its file's path in modules.dep."""
    return path.rsplit("/", 1)[-1].split(".ko", 1)[0].replace("-", "_")


def filesystem_modules(release, root="/lib/modules"):
    """The running kernel's filesystem modules (its modules.dep entries under kernel/fs) and,
    for every module that needs some of them in any installed kernel (the hardening's drop-in
    applies to all of them), which: what loading a module would load with it."""
    path = "%s/%s/modules.dep" % (root, release)
    if not os.path.isfile(path):
        return {"error": "%s: No such file or directory" % path}
    needs = {}
    filesystems = set()
    for dep_file in sorted(glob.glob("%s/*/modules.dep" % root)):
        try:
            with open(dep_file) as handle:
                lines = handle.read().splitlines()
        except OSError as exc:
            return {"error": "%s: %s" % (dep_file, exc.strerror or exc)}
        for line in lines:
            module_path, _, deps = line.partition(":")
            module = _module_name(module_path.strip())
            if dep_file == path and module_path.startswith("kernel/fs/"):
                filesystems.add(module)
            needs.setdefault(module, set()).update(_module_name(dep) for dep in deps.split())
    return {"filesystems": sorted(filesystems),
            "needs": {module: sorted(deps & filesystems) for module, deps in sorted(needs.items())
                      if deps & filesystems}}


def process_labels():
    """The security context (/proc/<pid>/attr/current) and program of every process; the
    context is None where no security module gives one. Kernel threads have no program and are
    left out, as are processes that end while being read."""
    found = []
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        try:
            exe = os.readlink("/proc/%s/exe" % pid)
        except OSError:
            continue
        try:
            with open("/proc/%s/attr/current" % pid) as handle:
                label = handle.read().strip("\0\n ")
        except OSError:
            label = None
        found.append({"pid": int(pid), "exe": exe, "label": label})
    return found


def run_systemctl(argv):
    """systemctl asks PID 1 over D-Bus; on a busy machine that call can time out, which says
    nothing about the host. Such a timeout is tried again (twice); every other failure stands."""
    result = run(argv)
    for attempt in (2, 3):
        if result["rc"] in (0, None) or "timed out" not in result["stderr"]:
            break
        result = dict(run(argv), attempt=attempt)
    return result


def systemd_units(requested):
    """Every loaded unit with its states (`systemctl list-units --all`), and the unit-file and
    active states of every unit the checks name (`systemctl show`: a unit systemd does not have
    says LoadState=not-found). Not `list-unit-files`: it alone costs more than all the rest of
    the collector on a slow machine (it works out every unit file's enablement)."""
    loaded = run_systemctl(["systemctl", "list-units", "--all", "--no-legend", "--no-pager", "--full", "--plain"])
    names = sorted(n for n in set(requested) if "@." not in n)
    show = run_systemctl(["systemctl", "show", "--no-pager", "-p",
                          "Id,Names,LoadState,ActiveState,SubState,UnitFileState", "--"] + names)
    return {"list_units": loaded, "show": show, "names": names}


def secret_scan(request):
    """Files under the scan paths whose text matches a secret's pattern: for each, its name and
    which kinds matched (never the match itself).

    request: {"paths": [...], "patterns": {kind: extended regular expression}}. One grep walk
    finds the files; each file it names is then read line by line here to say which kinds it
    holds (the patterns are written to mean the same to grep -E and to Python's re).
    """
    paths, patterns = request.get("paths", []), request.get("patterns", {})
    existing = [p for p in paths if os.path.exists(p)]
    result = {"paths": paths, "patterns": sorted(patterns), "missing": [p for p in paths if p not in existing],
              "hits": {}}
    if not existing or not patterns:
        return result
    argv = ["grep", "-rIlZE", "-D", "skip"]  # text files only, never a fifo or device; NUL after each name
    for kind in sorted(patterns):
        argv += ["-e", patterns[kind]]
    found = run(argv + ["--"] + existing, timeout=WALK_TIMEOUT)
    names = [name for name in found.pop("stdout").split("\0") if name]
    result.update(found, stdout="")
    # A file that vanished between listing its directory and opening it (the package lists the
    # pending-updates simulation refreshes beside this walk) was never part of the image: the
    # walk still completed. Any other error leaves grep's exit 2, and the check fails on it.
    errors = [line for line in result.get("stderr", "").splitlines() if line.strip()]
    vanished = [line for line in errors if line.endswith(": No such file or directory")]
    if result.get("rc") == 2 and errors and len(vanished) == len(errors):
        result.update(rc=0 if names else 1, vanished=len(vanished), stderr="")
    compiled = {kind: re.compile(pattern) for kind, pattern in patterns.items()}
    for name in names:
        result["hits"][name] = _kinds_in(name, compiled)
    return result


def _kinds_in(path, compiled):
    """Which of the patterns match a line of the file (["unreadable"] if it cannot be read again)."""
    kinds = set()
    try:
        with open(path, "rb") as handle:
            for raw in handle:
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                kinds.update(kind for kind, pattern in compiled.items() if kind not in kinds and pattern.search(line))
                if len(kinds) == len(compiled):
                    break
    except OSError as exc:
        return ["unreadable: %s" % (exc.strerror or exc)]
    return sorted(kinds) or ["unclassified"]


# --- what to gather ---------------------------------------------------------------------------
def expand(patterns):
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        paths.extend(matches)
    return paths


def tree(root, depth):
    """Metadata of everything under root, depth levels down (root itself included)."""
    entries = {root: stat_entry(root)}
    if not entries[root].get("type") == "directory" or depth < 1:
        return entries
    base = root.rstrip("/").count("/")

    def unreadable(error):
        # A directory root cannot list must not look empty: its entry carries why.
        where = getattr(error, "filename", None) or root
        if where in entries:
            entries[where] = dict(entries[where], list_error="%s: %s" % (type(error).__name__, error.strerror or error))

    for directory, dirs, names in os.walk(root, onerror=unreadable):
        level = directory.rstrip("/").count("/") - base
        for name in sorted(dirs + names):
            path = os.path.join(directory, name)
            entries[path] = stat_entry(path)
        if level + 1 >= depth:
            dirs[:] = []
    return entries


def _interactive_homes(login_shells):
    homes = set()
    for entry in pwd.getpwall():
        if entry.pw_shell in login_shells or entry.pw_dir == "/root" or entry.pw_dir.startswith("/home/"):
            if entry.pw_dir.startswith("/") and entry.pw_dir != "/":
                homes.add(entry.pw_dir)
    return sorted(homes)


def _login_shells():
    found = read_file("/etc/shells").get("content", "")
    return {line.strip() for line in found.splitlines()
            if line.strip().startswith("/") and not line.strip().endswith("/nologin")}


def commands_for(request, connection):
    """name -> argv of every command this request asks for."""
    login_user = request["login_user"]
    commands = {
        "uname_r": ["uname", "-r"],
        "modprobe_showconfig": ["modprobe", "--showconfig"],
        "systemd_journald": ["systemd-analyze", "cat-config", "systemd/journald.conf"],
        "systemd_coredump": ["systemd-analyze", "cat-config", "systemd/coredump.conf"],
        # Every tmpfiles.d line in effect, each file under a "# path" header.
        "systemd_tmpfiles": ["systemd-tmpfiles", "--cat-config"],
        "sshd_T": ["sshd", "-T"],
        "nft_json": ["nft", "-j", "list", "ruleset"],
        "auditctl_l": ["auditctl", "-l"],
        "auditctl_s": ["auditctl", "-s"],
        "ss_listen": ["ss", "-H", "-l", "-n", "-t", "-u", "-p"],
        "sudo_V": ["sudo", "-V"],
        "useradd_D": ["useradd", "-D"],
        "getent_passwd": ["getent", "passwd"],
        "getent_group": ["getent", "group"],
        "getent_shadow": ["getent", "shadow"],
        "id_login_user": ["id", "-nG", "--", login_user],
        # The login environment as an SSH login gets it (/etc/profile and profile.d read).
        "login_shell_env": ["runuser", "-l", login_user, "-c",
                            'printf "tmout=%s\\n" "${TMOUT:-unset}"; printf "umask=%s\\n" "$(umask)"; '
                            'printf "core_hard=%s\\n" "$(ulimit -H -c)"; echo "--- readonly"; readonly -p; '
                            'echo "--- export"; export -p'],
        "root_login_path": ["runuser", "-l", "root", "-c", "printenv PATH"],
        "chronyc_sources": ["chronyc", "-n", "sources"],
        "chronyc_activity": ["chronyc", "-n", "activity"],
        # The user each chronyd process runs as (it drops root after start-up).
        "chronyd_user": ["ps", "-C", "chronyd", "-o", "user="],
    }
    if "address" in connection:
        # What sshd applies to the login user's connection, Match blocks included.
        address = connection["address"]
        commands["sshd_T_login"] = ["sshd", "-T", "-C", "user=%s,host=%s,addr=%s" % (login_user, address, address)]
    if request.get("nftables_conf"):
        commands["nft_check_conf"] = ["nft", "--check", "--file", request["nftables_conf"]]
    manager = request.get("package_manager")
    verify = request.get("verify_packages")
    if manager == "apt":
        commands["packages"] = ["dpkg-query", "-W", "-f", "${Package}\\t${Status}\\t${Version}\\t${Architecture}\\n"]
        commands["apt_config"] = ["apt-config", "dump"]
        if verify:
            commands["package_verify"] = ["dpkg", "--verify"]
    elif manager == "dnf":
        if verify:
            commands["package_verify"] = ["rpm", "-Va", "--nomtime", "--nomode", "--nouser", "--nogroup", "--nordev",
                                          "--nocaps", "--noghost"]
        commands["packages"] = ["rpm", "-qa", "--qf",
                                "%{NAME}\\tinstall ok installed\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\t%{ARCH}\\n"]
        commands["kernels"] = ["rpm", "-q", "kernel", "--qf", "%{VERSION}-%{RELEASE}.%{ARCH}\\n"]
    # Present on some OS only: run when installed, recorded as absent otherwise.
    for name, argv in (("authselect_current", ["authselect", "current", "--raw"]),
                       ("authselect_check", ["authselect", "check"]),
                       ("crypto_policy", ["update-crypto-policies", "--show"]),
                       ("grubby_info", ["grubby", "--info=ALL"]),
                       ("aa_status", ["aa-status"]),
                       ("postconf_inet_interfaces", ["postconf", "-h", "inet_interfaces"])):
        commands[name] = argv
    for module in request.get("modules", []):
        commands["modprobe_dry_run:" + module] = ["modprobe", "-n", "-v", "--", module]
    if request.get("selinux_denials"):
        # Exits 1 with "<no matches>" on stderr when nothing was denied since boot.
        commands["selinux_denials"] = ["ausearch", "--message", "AVC,USER_AVC,SELINUX_ERR", "--start", "boot",
                                       "--interpret"]
    integrity = request.get("file_integrity")
    if integrity:
        # Reads, never writes: --check compares and reports (the database is only read).
        commands["aide_check"] = [integrity["binary"], "--config", integrity["config"], "--check"]
    return commands


def collect(request):
    started = time.monotonic()
    snapshot = {"schema": SCHEMA, "collected_at": int(time.time()), "python": sys.version.split()[0]}
    connection = ssh_connection()
    if "value" in connection:
        connection["address"] = connection["value"].split()[0]
    snapshot["ssh_connection"] = connection
    uname_r = os.uname().release
    snapshot["interfaces"] = network_interfaces()
    # A wireless interface's driver must not be loadable either: ask modprobe about it too.
    wireless = [i["module"] for i in snapshot["interfaces"].values() if i["wireless"] and i["module"]]
    # Every filesystem module of the running kernel, when its check asks: modprobe is asked too.
    found = []
    if request.get("filesystem_modules"):
        snapshot["filesystem_modules"] = filesystem_modules(uname_r)
        found = snapshot["filesystem_modules"].get("filesystems", [])
    request = dict(request, modules=sorted(set(request.get("modules", [])) | set(wireless) | set(found)))
    commands = commands_for(request, connection)
    optional = set(request.get("optional", []))

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        # The walk is the slowest part: it starts first and runs beside everything else.
        walk_future = pool.submit(walk, request.get("walk", {})) if "walk" in optional else None
        scan_future = (pool.submit(secret_scan, request.get("secret_scan", {}))
                       if "secret_scan" in optional else None)
        units_future = pool.submit(systemd_units, request.get("units", []))
        # AIDE hashes every watched file: like the walk, it gets the walk's time limit.
        command_futures = {name: pool.submit(run, argv, WALK_TIMEOUT if name in LONG_COMMANDS else COMMAND_TIMEOUT)
                           for name, argv in commands.items() if name != "package_verify"}
        if "package_verify" in commands:
            command_futures["package_verify"] = pool.submit(
                run_split_by_package, commands["package_verify"], min(os.cpu_count() or 1, 4))

        shells = _login_shells()
        homes = _interactive_homes(shells)
        snapshot["homes"] = homes
        read_paths = expand(request.get("read", []))
        for home in homes:
            read_paths += [home + "/.ssh/authorized_keys", home + "/.ssh/authorized_keys2"]
        read_paths += ["/lib/modules/%s/modules.builtin" % uname_r]
        files = {}
        for path in sorted(set(read_paths)):
            files[path] = {"stat": stat_entry(path), **read_file(path)}
        for path in sorted(set(expand(request.get("stat", []))) - set(files)):
            files[path] = {"stat": stat_entry(path)}
        snapshot["files"] = files
        snapshot["globs"] = {pattern: sorted(glob.glob(pattern)) for pattern in request.get("read", []) +
                             request.get("stat", []) if any(c in pattern for c in "*?[")}
        trees = {}
        for root, depth in request.get("trees", []):
            trees[root] = tree(root, depth)
        for home in homes:
            for root in (home, home + "/.ssh"):
                trees[root] = tree(root, 1)
            trees[home + "/.aws"] = tree(home + "/.aws", 3)  # down to the files in .aws/sso/cache
        snapshot["trees"] = trees
        snapshot["sysctl"] = read_sysctls()
        snapshot["replaced_code"] = replaced_code()
        if request.get("process_labels"):
            snapshot["process_labels"] = process_labels()
        snapshot["commands"] = {name: future.result() for name, future in command_futures.items()}
        snapshot["units"] = units_future.result()
        if "sshd_T_login" not in snapshot["commands"]:
            snapshot["commands"]["sshd_T_login"] = {
                "argv": ["sshd", "-T", "-C", "user=%s,host=?,addr=?" % request["login_user"]], "rc": None,
                "error": "the login connection's address is unknown: %s" % connection.get("error"),
                "stdout": "", "stderr": ""}
        # Each directory of root's login PATH, as the PATH check needs it (stat follows links).
        root_path = snapshot["commands"]["root_login_path"]
        if root_path["rc"] == 0 and root_path["stdout"].strip():
            entries = root_path["stdout"].replace("\r", "").strip().splitlines()[-1].split(":")
            snapshot["root_path_entries"] = {e: stat_entry(e, follow=True) for e in entries if e.startswith("/")}
        if walk_future is not None:
            snapshot["walk"] = walk_future.result()
        if scan_future is not None:
            snapshot["secret_scan"] = scan_future.result()
    snapshot["seconds"] = round(time.monotonic() - started, 3)
    return snapshot


def process_seconds(pid):
    """How long a process has lived (interpreter start-up and imports included, which collect()
    cannot time itself): its start time in /proc/<pid>/stat against /proc/uptime."""
    try:
        with open("/proc/%s/stat" % pid) as handle:
            started = int(handle.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as handle:
            return round(float(handle.read().split()[0]) - started, 3)
    except (OSError, ValueError, IndexError):
        return None


def main(argv):
    request = json.loads(base64.b64decode(argv[1]).decode()) if len(argv) > 1 else json.load(sys.stdin)
    snapshot = collect(request)
    # Up to here (encoding the output comes after): this process, and the whole remote command
    # as the guest ran it - sudo and the shell included - from its login-session process.
    snapshot["process_seconds"] = process_seconds("self")
    if "pid" in snapshot["ssh_connection"]:
        snapshot["command_seconds"] = process_seconds(snapshot["ssh_connection"]["pid"])
    document = json.dumps(snapshot, sort_keys=True).encode()
    # Compressed on the wire: the snapshot is mostly repetitive text.
    sys.stdout.write(base64.b64encode(zlib.compress(document, 6)).decode() + "\n")


if __name__ == "__main__":
    main(sys.argv)
