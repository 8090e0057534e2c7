"""AIDE's configuration and report, read as far as the file-integrity checks need.

Selection lines are regular expressions with an implicit ^; a negative line (!) excludes what
it matches; a line naming a path with = selects that path only; among the lines that select a
path, the first one decides (AIDE searches the deepest tree node that has rules, then the first
matching rule in it: the same answer for a configuration that lists its specific lines first,
as the pipeline's does). tests/integration/test_aide_config.py holds this reading to AIDE's own
on a real tree.
"""
import re
from typing import Optional

# `aide --check` exit status: a sum of 1 (added), 2 (removed) and 4 (changed) when it found
# differences; 14 and above are errors (the configuration, the database, reading a file).
DIFFERENCES = range(1, 8)
# The attributes that compare a file's content.
HASHES = frozenset({"md5", "sha1", "sha256", "sha512", "rmd160", "tiger", "crc32", "crc32b", "haval", "whirlpool",
                    "gost", "stribog256", "stribog512"})

_SELECTION = re.compile(r"^([!=]?)(/\S*)(?:\s+(\S+))?$")
_DEFINITION = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")
# An entry line of the report: what changed ("f+++...", "f =.... i ..H..") and the path.
_ENTRY = re.compile(r"^[^/:]*:\s(/.*)$")
_HEADING = re.compile(r"^(Added|Removed|Changed) entries:$")


class Rule:
    def __init__(self, kind: str, pattern: str, attributes: frozenset):
        self.kind = kind  # "!" excludes, "=" selects this path only, "" this path and below
        self.pattern = pattern
        self.attributes = attributes  # expanded; empty for an excluding line

    def matches(self, path: str) -> bool:
        try:
            found = re.match(self.pattern, path)
        except re.error:
            return False
        if not found:
            return False
        return self.kind != "=" or found.end() == len(path) or path[found.end():] == "/"

    @property
    def path(self) -> str:
        """The path the line names, when it is a plain one (escapes and the end anchor removed)."""
        return self.pattern.replace("\\", "").rstrip("$")

    def __str__(self) -> str:
        return f"{self.kind}{self.pattern}"


def _expand(expression: str, groups: dict) -> frozenset:
    attributes: set = set()
    for term in expression.split("+"):
        term = term.strip()
        if term and not term.startswith("-"):
            attributes |= groups.get(term, {term})
    return frozenset(attributes)


def parse(text: str) -> tuple[dict, list]:
    """(settings, rules) of an aide.conf: its key=value settings, and its selection lines in order."""
    settings: dict = {}
    groups: dict = {}
    rules: list = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "@@")):
            continue  # comments, and macros (the pipeline's configuration uses none)
        selection = _SELECTION.match(line)
        if selection:
            kind, pattern, expression = selection.groups()
            rules.append(Rule(kind, pattern, frozenset() if kind == "!" else _expand(expression or "", groups)))
            continue
        definition = _DEFINITION.match(line)
        if definition:
            # A setting (database_in=...) and a group (Name = p+u+g) look alike: each is kept as
            # both; only a selection line's expression ever names a group.
            name, value = definition.groups()
            settings[name] = value.strip()
            groups[name] = _expand(value, groups)
    return settings, rules


def deciding_rule(rules: list, path: str) -> Optional[Rule]:
    """The line that decides what AIDE records of path: a matching excluding line, else the first
    matching one; None when no line selects it."""
    excluded = next((rule for rule in rules if rule.kind == "!" and rule.matches(path)), None)
    return excluded or next((rule for rule in rules if rule.kind != "!" and rule.matches(path)), None)


def reported_entries(report: str) -> list:
    """'Added: /path', 'Changed: /path', ... for every entry `aide --check` listed."""
    entries, section = [], None
    for line in report.splitlines():
        heading = _HEADING.match(line.strip())
        if heading:
            section = heading.group(1)
            continue
        if line.startswith(("Detailed information", "The attributes of")):
            break  # what follows quotes hashes, which may start with a slash
        entry = _ENTRY.match(line.strip()) if section else None
        if entry:
            entries.append(f"{section}: {entry.group(1)}")
    return entries
