"""Access control as plain data: PAM stacks, pam_faillock / pam_pwquality / pam_pwhistory
settings, sudoers (with its include directives), login.defs, shadow password ageing, umask
values and the login shell's environment.

Pure functions of text: nothing here reads the snapshot or runs anything (sudoers includes are
followed through the `read` and `listdir` callables the caller passes), so each is unit-testable
with literal input. Malformed input a verdict depends on raises FactUnavailable, never an empty
answer.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from ga_facts import FactUnavailable


# --- PAM --------------------------------------------------------------------------------------
PAM_TYPES = ("auth", "account", "password", "session")


@dataclass(frozen=True)
class PamLine:
    kind: str  # auth, account, password, session (lower-case)
    control: str  # "required", "[success=1 default=ignore]", ...
    module: str  # as written: "pam_unix.so" or a full path
    args: tuple[str, ...]
    dash: bool  # "-auth ...": skipped silently when the module is missing

    @property
    def module_name(self) -> str:
        return self.module.rsplit("/", 1)[-1]


def pam_logical_lines(text: str) -> list[str]:
    """The lines libpam reads: a '#' starts a comment wherever it is, a trailing backslash joins
    the next line (blank and comment lines in between are skipped), and an unfinished
    continuation at the end of the file is dropped."""
    lines, pending = [], ""
    for raw in text.splitlines():
        stripped = raw.strip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        if "#" in stripped:
            lines.append(pending + stripped.split("#", 1)[0])
            pending = ""
            continue
        stripped = stripped.rstrip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    return [line.strip() for line in lines if line.strip()]


def _pam_tokens(line: str) -> list[str]:
    """Words of a PAM line; "[...]" (the control, or an argument with spaces) is one word."""
    tokens, i = [], 0
    while i < len(line):
        if line[i] in " \t":
            i += 1
            continue
        if line[i] == "[":
            end = i + 1
            while end < len(line) and line[end] != "]":
                end += 2 if line[end] == "\\" else 1
            tokens.append(line[i:end + 1])
            i = end + 1
            continue
        end = i
        while end < len(line) and line[end] not in " \t":
            end += 1
        tokens.append(line[i:end])
        i = end
    return tokens


def pam_lines(text: str) -> list[PamLine]:
    """The module lines of a PAM service file (include/substack lines and @include left out)."""
    found = []
    for line in pam_logical_lines(text):
        tokens = _pam_tokens(line)
        if len(tokens) < 3:
            continue
        kind = tokens[0].lower()
        dash = kind.startswith("-")
        kind = kind.lstrip("-")
        if kind not in PAM_TYPES:
            continue
        control = tokens[1] if tokens[1].startswith("[") else tokens[1].lower()
        if control in ("include", "substack"):
            continue
        args = tuple(a[1:-1].replace("\\]", "]") if a.startswith("[") and a.endswith("]") else a
                     for a in tokens[3:])
        found.append(PamLine(kind, control, tokens[2], args, dash))
    return found


def pam_module_args(text: str, kind: str, module: str) -> list[list[str]]:
    """The arguments of every line of that kind (auth, password, ...) using module."""
    return [list(line.args) for line in pam_lines(text) if line.kind == kind and line.module_name == module]


def pam_option(arguments: Iterable[str], name: str) -> Optional[str]:
    """The value of name=value among a module's arguments (the last one wins)."""
    values = [arg.split("=", 1)[1] for arg in arguments if arg.startswith(f"{name}=")]
    return values[-1] if values else None


def conf_values(texts: Iterable[str]) -> dict[str, str]:
    """key = value settings of config files read in order (later files and lines win)."""
    settings: dict[str, str] = {}
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            if sep:
                settings[key.strip()] = value.strip()
    return settings


def conf_flags(texts: Iterable[str]) -> set[str]:
    """The bare keywords (a line with no `=`, such as pwquality's enforce_for_root) of config files."""
    flags: set[str] = set()
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" not in line:
                flags.add(line.split()[0])
    return flags


def with_arguments(settings: dict[str, str], arguments: Iterable[str]) -> dict[str, str]:
    """A module's effective settings: its config file's, overridden by its key=value arguments."""
    merged = dict(settings)
    for arg in arguments:
        key, sep, value = arg.partition("=")
        if sep:
            merged[key] = value
    return merged


def integer(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise FactUnavailable(f"{what} is {value!r}, not a number") from None


def pwquality_classes(settings: dict[str, str]) -> int:
    """How many character classes pwquality settings require: minclass, or the credit settings
    that ask for at least one character of a class (a negative credit)."""
    minclass = integer(settings.get("minclass", "0"), "pwquality minclass")
    credits = sum(1 for key in ("dcredit", "ucredit", "lcredit", "ocredit")
                  if integer(settings.get(key, "0"), f"pwquality {key}") < 0)
    return max(minclass, credits)


def faillock_seconds(value: str, what: str) -> int:
    """pam_faillock's unlock_time: seconds, "never" meaning 0 (unlocked by an administrator only)."""
    return 0 if value.strip() == "never" else integer(value, what)


# --- sudoers ----------------------------------------------------------------------------------
_INCLUDE = re.compile(r"^[@#](include|includedir)\s+(.+?)\s*$")
_UID_SPEC = re.compile(r"^#-?\d+\b")  # "#1000 ALL=..." is a user spec by uid, not a comment
INCLUDE_DEPTH = 32


def _include_path(argument: str, including: str) -> str:
    path = argument[1:-1] if len(argument) > 1 and argument[0] == argument[-1] == '"' else argument
    path = path.replace("\\ ", " ")
    if "%h" in path:
        raise FactUnavailable(f"{including} includes {path} (named after the host): not resolved")
    if not path.startswith("/"):
        path = posixpath.join(posixpath.dirname(including), path)  # sudo 1.9.1+: relative to the includer
    return posixpath.normpath(path)


def sudoers_lines(read: Callable[[str], Optional[str]], listdir: Callable[[str], list[str]],
                  path: str = "/etc/sudoers", _depth: int = 0) -> list[tuple[str, str]]:
    """(file, line) of every active line sudo reads: path, then what its @include and
    @includedir (or #include, #includedir) directives name, in place. An included directory
    contributes its regular files (listdir) whose names have no '.' and do not end in '~', in
    sorted order. Continuation lines are joined; whole-line comments are left out (a "#<uid>"
    user spec is not a comment). read(path) -> text, or None when the file does not exist."""
    if _depth > INCLUDE_DEPTH:
        raise FactUnavailable(f"sudoers includes nest deeper than {INCLUDE_DEPTH} levels (a loop?) at {path}")
    text = read(path)
    if text is None:
        raise FactUnavailable(f"{path} does not exist" + (" (it is included by sudoers)" if _depth else ""))
    lines = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if not line:
            continue
        include = _INCLUDE.match(line)
        if include:
            target = _include_path(include.group(2), path)
            if include.group(1) == "include":
                lines += sudoers_lines(read, listdir, target, _depth + 1)
            else:
                for member in sorted(listdir(target)):
                    name = member.rsplit("/", 1)[-1]
                    if "." not in name and not name.endswith("~"):
                        lines += sudoers_lines(read, listdir, member, _depth + 1)
            continue
        if line.startswith("#") and not _UID_SPEC.match(line):
            continue
        lines.append((path, line))
    return lines


@dataclass(frozen=True)
class SudoDefault:
    path: str
    scope: str  # "" for a global Defaults line, else ":user", "@host", "!cmnd", ">runas" and its list
    negated: bool  # "!name"
    name: str
    op: str  # "", "=", "+=", "-="
    value: str  # unquoted

    @property
    def text(self) -> str:
        return f"{'!' if self.negated else ''}{self.name}{self.op}{self.value}"


_DEFAULTS = re.compile(r"^Defaults([@:!>]\S+)?\s+(.*)$")
_SETTING = re.compile(r"^(!*)\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:([+-]?=)\s*(.*))?$")


def _split_settings(text: str) -> list[str]:
    """A Defaults line's settings: split at commas outside double quotes, up to a comment."""
    items, current, quoted, escaped = [], "", False, False
    for char in text:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            current += char
            escaped = True
        elif char == '"':
            quoted = not quoted
            current += char
        elif char == "," and not quoted:
            items.append(current)
            current = ""
        elif char == "#" and not quoted and (not current or current[-1] in " \t"):
            break
        else:
            current += char
    items.append(current)
    return [item.strip() for item in items if item.strip()]


def sudo_defaults(lines: Iterable[tuple[str, str]]) -> list[SudoDefault]:
    """Every setting of every Defaults line, in the order sudo reads them."""
    found = []
    for path, line in lines:
        match = _DEFAULTS.match(line)
        if not match:
            continue
        for item in _split_settings(match.group(2)):
            setting = _SETTING.match(item)
            if not setting:
                raise FactUnavailable(f"{path}: cannot read the Defaults setting {item!r} in: {line}")
            bangs, name, op, value = setting.group(1), setting.group(2), setting.group(3) or "", setting.group(4) or ""
            value = value.strip()
            if len(value) > 1 and value[0] == value[-1] == '"':
                value = value[1:-1]
            found.append(SudoDefault(path, match.group(1) or "", len(bangs) % 2 == 1, name, op, value))
    return found


def sudo_reported_timeout(sudo_v: str) -> Optional[float]:
    """The timestamp timeout `sudo -V` (run as root) reports, in minutes; None if it says none."""
    match = re.search(r"Authentication timestamp timeout: (-?[0-9.]+) minutes", sudo_v)
    if not match:
        return None
    try:
        return float(match.group(1))
    except ValueError:
        return None


# --- login.defs, shadow, useradd ---------------------------------------------------------------
def login_defs_values(text: str, key: str) -> list[str]:
    """Every value login.defs gives key, in order (the last one is in force)."""
    values = []
    for line in text.splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#") and fields[0] == key and len(fields) > 1:
            values.append(fields[1])
    return values


# --- password hashing cost: what pam_unix and shadow really use ----------------------------------
PAM_UNIX_HASHES = ("md5", "bigcrypt", "sha256", "sha512", "blowfish", "gost_yescrypt", "yescrypt")
SHA_CRYPT_DEFAULT_ROUNDS = 5000  # the SHA-crypt specification's default
YESCRYPT_DEFAULT_COST = 5  # libxcrypt's, pam_unix's and shadow's default


def _last_int(text: str, key: str) -> Optional[int]:
    values = login_defs_values(text, key)
    return int(values[-1]) if values and values[-1].lstrip("-").isdigit() else None


def pam_unix_hash_cost(arguments: list[str], login_defs: str) -> tuple[str, int]:
    """(algorithm, cost) of the hashes pam_unix writes with these arguments, as its _set_ctrl
    works them out: login.defs' ENCRYPT_METHOD (and SHA_CRYPT_MAX_ROUNDS) first, then the
    arguments, the last hash named winning; a rounds= value out of the algorithm's range is
    replaced by the default without a word. Cost: the yescrypt / gost-yescrypt / blowfish cost
    factor, the SHA-crypt round count, 0 for the algorithms that have none."""
    methods = login_defs_values(login_defs, "ENCRYPT_METHOD")
    algorithm = methods[-1].lower() if methods and methods[-1].lower() in PAM_UNIX_HASHES else ""
    rounds = _last_int(login_defs, "SHA_CRYPT_MAX_ROUNDS") if algorithm in ("sha256", "sha512") else None
    for argument in arguments:
        if argument in PAM_UNIX_HASHES:
            algorithm = argument
        elif argument.startswith("rounds="):
            value = argument.split("=", 1)[1]
            rounds = int(value) if value.isdigit() else 0
    algorithm = algorithm or "des"  # pam_unix's own default when nothing names one: crypt(3) DES
    if algorithm in ("yescrypt", "gost_yescrypt"):
        return algorithm, rounds if rounds is not None and 3 <= rounds <= 11 else YESCRYPT_DEFAULT_COST
    if algorithm == "blowfish":
        return algorithm, rounds if rounds is not None and 4 <= rounds <= 31 else 5
    if algorithm in ("sha256", "sha512"):
        if rounds is None or rounds < 1000:
            return algorithm, SHA_CRYPT_DEFAULT_ROUNDS
        return algorithm, min(rounds, 9999999)
    return algorithm, 0


def login_defs_hash_cost(login_defs: str) -> tuple[str, int]:
    """(ENCRYPT_METHOD, cost) of the hashes shadow's tools (chpasswd -c, newusers) write: for
    SHA-crypt the lowest round count SHA_CRYPT_MIN/MAX_ROUNDS allow (one alone sets both, a
    minimum above the maximum wins), for yescrypt YESCRYPT_COST_FACTOR; 0 when there is none."""
    methods = login_defs_values(login_defs, "ENCRYPT_METHOD")
    method = methods[-1].upper() if methods else "DES"
    if method in ("SHA256", "SHA512"):
        low, high = _last_int(login_defs, "SHA_CRYPT_MIN_ROUNDS"), _last_int(login_defs, "SHA_CRYPT_MAX_ROUNDS")
        if low is None and high is None:
            return method, SHA_CRYPT_DEFAULT_ROUNDS
        low = high if low is None else low
        return method, min(max(low, 1000), 999999999)
    if method == "YESCRYPT":
        cost = _last_int(login_defs, "YESCRYPT_COST_FACTOR")
        return method, cost if cost is not None and 1 <= cost <= 11 else YESCRYPT_DEFAULT_COST
    return method, 0


def number(text: str, default: int) -> int:
    """A shadow / login.defs number; default when the field is empty or not a number."""
    return int(text) if text.strip().lstrip("-").isdigit() else default


def has_password(entry: list[str]) -> bool:
    """A shadow entry with a usable password hash (locked, empty and '*' entries have none)."""
    return entry[1].startswith("$")


def shell_assignments(text: str) -> dict[str, str]:
    """NAME=value lines (useradd -D)."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


# --- umask ------------------------------------------------------------------------------------
_UMASK = re.compile(r"(?:^|[\s;&|(`])umask\s+(?:-S\s+)?([^\s;&|)`\-][^\s;&|)`]*)")


def umask_values(line: str) -> list[str]:
    """The values `umask VALUE` commands in a shell line set (octal or symbolic)."""
    return _UMASK.findall(line)


_CLASSES = {"u": 0o700, "g": 0o070, "o": 0o007}
_PERMS = {"r": 0o444, "w": 0o222, "x": 0o111}


def umask_mask(value: str) -> Optional[int]:
    """The mask a umask value sets: octal, or symbolic with '=' ("u=rwx,g=rx,o="); None when it
    depends on the mask before it (symbolic '+' / '-') or cannot be read."""
    if re.fullmatch(r"[0-7]{1,4}", value):
        return int(value, 8) & 0o777
    mask = 0o777
    for clause in value.split(","):
        match = re.fullmatch(r"([ugoa]*)=([rwx]*)", clause)
        if not match:
            return None
        who = match.group(1) or "a"
        bits = sum(_CLASSES[c] for c in set(who.replace("a", "ugo")))
        allowed = sum(_PERMS[p] for p in set(match.group(2))) & bits
        mask = (mask & ~bits) | (bits & ~allowed)
    return mask


def umask_is_weaker(mask: int, wanted: str) -> bool:
    required = int(wanted, 8)
    return mask & required != required


def umask_weaker(value: str, wanted: str) -> bool:
    """True when value masks fewer permission bits than wanted. A symbolic value that adds
    permissions ('+') counts as weaker; one that only depends on a variable or takes
    permissions away ('-') is not judged here (the login shell's own umask is checked too)."""
    value = value.strip("'\"")
    mask = umask_mask(value)
    if mask is None:
        return bool(re.fullmatch(r"[ugoa]*[=+-][rwx]*(,[ugoa]*[=+-][rwx]*)*", value)) and "+" in value
    return umask_is_weaker(mask, wanted)


# --- the login shell's environment ------------------------------------------------------------
@dataclass(frozen=True)
class LoginEnv:
    values: dict  # tmout, umask, core_hard as printed ("unset" when TMOUT is unset or empty)
    readonly: tuple[str, ...]  # `readonly -p` lines
    exported: tuple[str, ...]  # `export -p` lines


_MARKED = re.compile(r"^tmout=([^\n]*)\numask=([^\n]*)\ncore_hard=([^\n]*)\n--- readonly\n(.*?)^--- export\n(.*)\Z",
                     re.M | re.S)


def parse_login_shell_env(text: str) -> LoginEnv:
    """The collector's login_shell_env output. Whatever the start-up files print comes first;
    the block this reads is the last "tmout=" ... "--- export" one."""
    starts = [m.start() for m in re.finditer(r"^tmout=", text, re.M)]
    for start in reversed(starts):
        match = _MARKED.match(text, start)
        if match:
            tmout, umask, core_hard, readonly, exported = match.groups()
            return LoginEnv({"tmout": tmout, "umask": umask, "core_hard": core_hard},
                            tuple(readonly.splitlines()), tuple(exported.splitlines()))
    raise FactUnavailable("the login shell's environment is not in the expected form "
                          f"(tmout=, umask=, core_hard=, --- readonly, --- export): {' '.join(text.split())[:200]!r}")


def declares(lines: Iterable[str], variable: str, builtin: str) -> bool:
    """Whether `readonly -p` / `export -p` lines (bash: "declare -rx NAME=...", POSIX shells:
    "readonly NAME=..." / "export NAME=...") declare variable with a value."""
    pattern = re.compile(rf"^(?:declare\s+-\S+|{builtin})\s+{re.escape(variable)}=")
    return any(pattern.match(line) for line in lines)


def sets_variable(text: str, variable: str) -> bool:
    """Whether a shell start-up file assigns variable on a line that is not commented out
    (grep's '^[^#]*NAME=')."""
    pattern = re.compile(rf"^[^#]*\b{re.escape(variable)}=")
    return any(pattern.match(line) for line in text.splitlines())
