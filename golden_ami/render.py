"""Render: Jinja templates -> a self-contained build directory, plus its fingerprint.

The build directory holds everything Packer needs and nothing that changes from one build to
the next (build ids, keys, ports and paths of this machine are passed at build time), so
rendering the same inputs twice gives byte-identical files and the same fingerprint.

Three Jinja environments, one per output language, each quoting values for that language:
  * shell scripts: every ``{{ value }}`` is shell-quoted (shlex.quote) unless the template
    explicitly asks for ``|raw_shell`` (used only for integers and pre-quoted words);
  * Packer HCL: every value is emitted as an HCL string literal, with ``${`` / ``%{`` escaped;
  * config files (sshd, nftables, chrony...): values may not contain newlines or control
    characters, so a value can never add a directive.
All three use StrictUndefined: a misspelt name fails the render instead of printing nothing.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
import shutil
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, Iterable, Optional

import jinja2

from . import packer, paths, yamlfiles
from .catalogue import ControlSet, controls_for, require_site_params
from .config import Resolved
from .errors import UserError
from .layout import CONTROLS_FILE, RENDER_MANIFEST, SHELL_LIBRARY, TEMPLATE_FILE, VARIABLES_FILE

# Hardening sections run in the order of their number (hardening/NN-name.sh.j2); a section is
# rendered when a control in force names it as its remediation. 15 reboots into a new kernel
# between patching and the rest; 90 cleans the image and runs the in-build gate, always last.
REBOOT_SECTION = "15-reboot-if-kernel-changed"


@dataclass(frozen=True)
class SourceImage:
    """The image a build starts from, as the target resolved it (part of the fingerprint)."""

    id: str  # ami-… or sha256:… of a local base disk
    name: str
    location: str = ""  # local: path of the base disk; aws: region
    checksum: str = ""  # local: "sha256:<hex>" that Packer re-checks before it boots the disk

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "location": self.location, "checksum": self.checksum}


@dataclass(frozen=True)
class RenderResult:
    directory: Path
    fingerprint: str
    files: dict[str, str]  # relative path -> sha256
    source: SourceImage


# --- quoting -------------------------------------------------------------------------------
class RawShell(str):
    """A string already safe for the shell (an int, or words quoted by shell_join)."""


def _shell_finalize(value: Any) -> str:
    if isinstance(value, RawShell):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple, dict)):
        raise jinja2.TemplateError("a list reached a shell template unquoted: use |shell_join")
    return shlex.quote(str(value))


def shell_join(values: Iterable[Any]) -> RawShell:
    return RawShell(" ".join(shlex.quote(str(v)) for v in values))


def raw_shell(value: Any) -> RawShell:
    text = str(value)
    if not re.fullmatch(r"[A-Za-z0-9_./:=@%+-]*", text):
        raise jinja2.TemplateError(f"raw_shell refuses {text!r}: it needs quoting")
    return RawShell(text)


def shell_word(value: Any) -> RawShell:
    """One shell word, quoted (for shell snippets rendered as files, which are not auto-quoted)."""
    return RawShell(shlex.quote(str(value)))


def sudoers_string(value: Any) -> str:
    """A sudoers double-quoted string: backslash and double quote escaped (control characters
    are refused by the config files' finalize)."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def raw_shell_comment(value: Any) -> RawShell:
    """Text for a shell comment: one line, no control characters."""
    text = " ".join(str(value).split())
    if _CONTROL_CHARS.search(text):
        raise jinja2.TemplateError(f"refusing control characters in a comment: {text!r}")
    return RawShell(text)


def hcl_string(value: Any) -> str:
    """An HCL string literal: JSON string syntax with template sequences escaped."""
    return json.dumps(str(value)).replace("${", "$${").replace("%{", "%%{")


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def _config_finalize(value: Any) -> str:
    text = str(value) if not isinstance(value, bool) else ("yes" if value else "no")
    if _CONTROL_CHARS.search(text):
        raise jinja2.TemplateError(f"a value with a newline or control character reached a config file: {text!r}")
    return text


def _bytecode_cache() -> Optional[jinja2.BytecodeCache]:
    """Compiled templates kept between processes: compiling every template again is most of an
    `invoke render` (Jinja checks each cached entry against its template's source). Only a
    directory of this user's that no one else can write: what is in it is loaded as code."""
    directory = yamlfiles.private_directory(paths.template_cache_dir())
    return jinja2.FileSystemBytecodeCache(str(directory)) if directory is not None else None


def _environment(search_path: Path, finalize) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(search_path)),
        bytecode_cache=_bytecode_cache(),
        undefined=jinja2.StrictUndefined,
        finalize=finalize,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        # Shell has "${#array[@]}": move Jinja's comment markers out of its way.
        comment_start_string="{%#",
        comment_end_string="#%}",
    )
    env.filters["shell_join"] = shell_join
    env.filters["raw_shell"] = raw_shell
    env.filters["raw_shell_comment"] = raw_shell_comment
    env.filters["shell_word"] = shell_word
    env.filters["sudoers_string"] = sudoers_string
    env.filters["hcl"] = hcl_string
    env.filters["tojson_sorted"] = lambda v: json.dumps(v, sort_keys=True, indent=2)
    return env


# One environment per (language, template directory) for the whole process, so each template
# is compiled once: Jinja keeps compiled templates per environment and, with auto_reload (on by
# default), compiles a template again when its file's modification time changes. Nothing of
# one render is kept on an environment: every value reaches a template as render context.
_ENVIRONMENTS: dict[tuple[str, str], jinja2.Environment] = {}
_ENVIRONMENTS_LOCK = threading.Lock()


def _shared_environment(kind: str, search_path: Path, make) -> jinja2.Environment:
    key = (kind, str(search_path))
    with _ENVIRONMENTS_LOCK:
        env = _ENVIRONMENTS.get(key)
        if env is None:
            env = _ENVIRONMENTS[key] = make(search_path)
    return env


def shell_env() -> jinja2.Environment:
    return _shared_environment("shell", paths.HARDENING_DIR, lambda where: _environment(where, _shell_finalize))


def config_env() -> jinja2.Environment:
    return _shared_environment("config", paths.HARDENING_DIR / "files", lambda where: _environment(where, _config_finalize))


def _hcl_finalize(value: Any) -> str:
    if isinstance(value, HclRaw):
        return str(value)
    return hcl_string(value)


def _make_hcl_env(search_path: Path) -> jinja2.Environment:
    env = _environment(search_path, _hcl_finalize)
    env.filters["hcl_raw"] = HclRaw
    return env


def hcl_env() -> jinja2.Environment:
    return _shared_environment("hcl", paths.TEMPLATES_DIR, _make_hcl_env)


class HclRaw(str):
    """HCL syntax the template builds itself (identifiers, numbers), not a value."""


# --- JSON files -----------------------------------------------------------------------------
class _NotPlain(Exception):
    """A value the fast encoder leaves to json.dumps (a subclass, a non-string key, NaN...)."""


def _float_text(value: float) -> str:
    if not math.isfinite(value):
        raise _NotPlain
    return float.__repr__(value)


# How json.dumps writes each plain scalar type (bool before int: exact types, not isinstance).
_SCALAR_TEXT = {str: encode_basestring_ascii, bool: lambda v: "true" if v else "false",
                int: int.__repr__, float: _float_text, type(None): lambda _: "null"}


def _indented_parts(value: Any, newline: str, out) -> None:
    scalar = _SCALAR_TEXT.get(type(value))
    if scalar is not None:
        out(scalar(value))
    elif type(value) is dict:
        if not value:
            out("{}")
            return
        inner, separator = newline + "  ", "{"
        for key in sorted(value):
            if type(key) is not str:
                raise _NotPlain
            out(f"{separator}{inner}{encode_basestring_ascii(key)}: ")
            _indented_parts(value[key], inner, out)
            separator = ","
        out(newline + "}")
    elif type(value) in (list, tuple):
        if not value:
            out("[]")
            return
        inner, separator = newline + "  ", "["
        for item in value:
            out(separator + inner)
            _indented_parts(item, inner, out)
            separator = ","
        out(newline + "]")
    else:
        raise _NotPlain


def json_text(value: Any) -> str:
    """Exactly json.dumps(value, sort_keys=True, indent=2), about twice as fast.

    json.dumps leaves its C encoder for pure Python as soon as it indents, and every render writes
    all controls in force into controls.json this way. The rendered files are fingerprinted, so
    the text must stay byte for byte what json.dumps gives: anything but plain dicts with string
    keys, lists, tuples, strings, ints, bools, None and finite floats goes to json.dumps itself."""
    parts: list[str] = []
    try:
        _indented_parts(value, "\n", parts.append)
    except (_NotPlain, TypeError, RecursionError):  # (keys that do not sort, a cycle: json's own error)
        return json.dumps(value, sort_keys=True, indent=2)
    return "".join(parts)


# --- context -------------------------------------------------------------------------------
def _context(cfg: Resolved, controls: ControlSet, source: SourceImage) -> dict[str, Any]:
    applicable = {c.id: c for c in controls.applicable}
    # (00-packer-template controls are remediated by the template itself, not by a script.)
    sections = sorted({c.remediation for c in applicable.values() if c.remediation != "00-packer-template"})
    # Every build cleans the image and runs the in-build gate last, whatever the profile.
    if "90-image-hygiene" not in sections:
        sections.append("90-image-hygiene")
    return {
        "os": cfg.os.model_dump(),
        "target": cfg.target,
        "target_os": cfg.target_os.model_dump(),
        "profile": cfg.profile,
        "settings": cfg.settings.model_dump(),
        "controls": applicable,
        "control_ids": sorted(applicable),
        "sections": sections,
        "reboot_section": REBOOT_SECTION,
        "source": source.as_dict(),
        # Packer's own template syntax, passed through as plain strings.
        # Both name an interpreter rather than executing the uploaded file, because a
        # hardened /tmp (an image rebuilt from a golden image) is mounted noexec.
        "packer_execute_command": "sudo -n env {{ .Vars }} /bin/bash {{ .Path }}",
        "packer_user_execute_command": "env {{ .Vars }} /bin/sh {{ .Path }}",
        "qemu_netdev": "user,id=user.0,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22",
    }


def _packer_variables(cfg: Resolved, source: SourceImage) -> dict[str, Any]:
    """Values the template reads as var.*; deterministic (runtime values come at build time)."""
    variables: dict[str, Any] = {
        "os_name": cfg.os.name,
        "login_user": cfg.target_os.login_user,
        "source_image_id": source.id,
        "source_image_name": source.name,
        "profile": cfg.profile,
    }
    # The target's own (cpus and memory for QEMU, region and instance type for EC2): its
    # settings section, named like the target (config.Settings.local / .aws), says which.
    variables.update(getattr(cfg.settings, cfg.target).template_variables(source.checksum))
    return variables


# --- rendering -----------------------------------------------------------------------------
def _render_files(cfg: Resolved, controls: ControlSet, source: SourceImage,
                  packer_plugins: Future[bool]) -> dict[str, bytes]:
    """Every file of the build directory. packer_plugins is waited for only when the Packer
    template, the one file that depends on it, is rendered (last)."""
    ctx = _context(cfg, controls, source)
    out: dict[str, str] = {}
    try:
        sh = shell_env()
        out[SHELL_LIBRARY] = sh.get_template("lib/golden-ami.sh.j2").render(ctx)
        for section in ctx["sections"]:
            out[f"scripts/{section}.sh"] = sh.get_template(f"{section}.sh.j2").render(ctx, section=section)
        conf = config_env()
        for name in sorted(conf.list_templates(filter_func=lambda n: n.endswith(".j2"))):
            rendered = conf.get_template(name).render(ctx)
            if rendered.strip():  # a file template renders empty when nothing in force needs it
                out[f"files/{name[:-3]}"] = rendered
        out[TEMPLATE_FILE] = hcl_env().get_template(f"{cfg.target}.pkr.hcl.j2").render(
            ctx, packer_plugins=packer_plugins.result())
    except jinja2.TemplateError as exc:
        # A template bug or a value refused by a quoting rule: both stop the render.
        raise UserError(f"render failed for {cfg.os.name}/{cfg.target}: {exc}") from exc
    out[VARIABLES_FILE] = json_text(_packer_variables(cfg, source)) + "\n"
    # shared: the controls' own params, not copies - they are only written out here.
    out[CONTROLS_FILE] = json_text(controls.as_dict(shared=True)) + "\n"
    return {path: text.encode("utf-8") for path, text in out.items()}


def fingerprint_of(files: dict[str, bytes], source: SourceImage) -> str:
    """sha256 over every rendered byte (path and content) plus the resolved source image."""
    return _fingerprint(_file_digests(files), source)


def _file_digests(files: dict[str, bytes]) -> dict[str, str]:
    """Relative path -> sha256 of its bytes, in path order (the fingerprint's and render.json's)."""
    return {rel: hashlib.sha256(files[rel]).hexdigest() for rel in sorted(files)}


def _fingerprint(digests: dict[str, str], source: SourceImage) -> str:
    digest = hashlib.sha256()
    for rel in sorted(digests):
        digest.update(rel.encode() + b"\0" + digests[rel].encode() + b"\n")
    digest.update(f"source\0{source.id}\0{source.name}\0{source.checksum}\n".encode())
    return "sha256:" + digest.hexdigest()


def read_rendered(directory: Path) -> dict[str, bytes]:
    """Every file of a build directory that the fingerprint covers (not render.json itself)."""
    files: dict[str, bytes] = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if path.is_symlink():  # it would bring whatever it points at into the image
            raise UserError(f"{directory}: {rel} is a symbolic link; a build directory holds files only")
        if path.is_file() and rel != RENDER_MANIFEST and rel.split("/")[0] in _FINGERPRINTED_TOP:
            files[rel] = path.read_bytes()
    return files


_FINGERPRINTED_TOP = {"scripts", "files", TEMPLATE_FILE, VARIABLES_FILE, CONTROLS_FILE}


def load_for_build(directory: Path, cfg: Resolved) -> tuple[dict[str, Any], str, SourceImage]:
    """A rendered directory to build from (--from-render): rendered for this OS and target, and
    still exactly what was rendered (its files hash to render.json's fingerprint; the OS and
    target are in controls.json, which the fingerprint covers). Returns the manifest, the
    fingerprint and the source image."""
    if directory.is_symlink() or not directory.is_dir():
        raise UserError(f"--from-render {directory} is not a directory (run invoke render --out=DIR)")
    manifest, fingerprint = load_render(directory)
    if (manifest["os"], manifest["target"]) != (cfg.os.name, cfg.target):
        raise UserError(f"{directory} was rendered for {manifest['os']}/{manifest['target']}, "
                        f"not {cfg.os.name}/{cfg.target}")
    if manifest.get("fingerprint") != fingerprint:
        raise UserError(f"{directory} no longer hashes to the fingerprint in its {RENDER_MANIFEST} (edited after "
                        "invoke render): render it again")
    src = manifest["source_image"]
    return manifest, fingerprint, SourceImage(str(src["id"]), str(src["name"]), str(src.get("location", "")),
                                              str(src.get("checksum", "")))


def packer_plugins_wanted(cfg: Resolved) -> bool:
    """Whether the template needs Packer >= 1.7's required_plugins (see packer.syntax)."""
    syntax = cfg.settings.packer.syntax
    if syntax != "auto":
        return syntax == "plugins"
    try:
        return packer.version(cfg.settings.packer.binary) >= (1, 7, 0)
    except UserError:
        return False  # no Packer here: render for the version this project installs (1.6)


def _settled(value: bool) -> Future[bool]:
    future: Future[bool] = Future()
    future.set_result(value)
    return future


def render(cfg: Resolved, source: SourceImage, out_dir: Path, controls: Optional[ControlSet] = None,
           packer_plugins: Optional[bool] = None) -> RenderResult:
    """Write the build directory atomically: into a sibling temp dir, then one rename."""
    with ThreadPoolExecutor(max_workers=1) as helper:
        # Asking Packer its version starts a process (~0.1 s), and only the Packer template,
        # rendered last, needs the answer: Packer answers while the rest is worked out.
        wanted = helper.submit(packer_plugins_wanted, cfg) if packer_plugins is None else _settled(packer_plugins)
        controls = controls or controls_for(cfg)
        require_site_params(controls)
        files = _render_files(cfg, controls, source, wanted)
    packer_plugins = wanted.result()
    digests = _file_digests(files)  # once: the fingerprint, render.json and the result all name them
    fingerprint = _fingerprint(digests, source)
    out_dir = out_dir.resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} is a file, not a directory: choose another --out")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir} exists and is not empty: choose another --out or remove it")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot make {out_dir.parent} for --out: {exc.strerror}") from None
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _write_files(staging, files)
        manifest = {
            "fingerprint": fingerprint,
            "os": cfg.os.name,
            "target": cfg.target,
            "profile": cfg.profile,
            "source_image": source.as_dict(),
            "packer_plugins": packer_plugins,
            "files": digests,
        }
        _write_staged(os.path.join(staging, RENDER_MANIFEST), (json_text(manifest) + "\n").encode("utf-8"))
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return RenderResult(directory=out_dir, fingerprint=fingerprint, files=dict(digests), source=source)


def _write_files(staging: Path, files: dict[str, bytes]) -> None:
    """Every rendered file into the (new, empty) staging directory; scripts executable."""
    made = {str(staging)}
    for rel, data in files.items():
        target = os.path.join(staging, rel)
        parent = os.path.dirname(target)
        if parent not in made:  # each directory once, not once a file (~80 files, 3 directories)
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        _write_staged(target, data, 0o755 if rel.startswith("scripts/") else None)


def _write_staged(path: str, data: bytes, mode: Optional[int] = None) -> None:
    """A new file with these bytes (mode: set exactly, whatever the umask; else the umask's default).
    One open, write and close of a descriptor: with each directory made once (_write_files), half
    the time of pathlib's mkdir, write_bytes and chmod for each file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def load_render(directory: Path) -> tuple[dict[str, Any], str]:
    """Read a build directory's manifest and recompute its fingerprint from the files on disk.

    A build directory edited by hand (to test a broken script, say) gets the fingerprint of
    what is really there, so provenance never names content the image does not have.
    """
    manifest_path = directory / RENDER_MANIFEST
    if not manifest_path.is_file():
        raise UserError(f"{directory} is not a rendered build directory (no {RENDER_MANIFEST}): run invoke render")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        src = manifest["source_image"]
        source = SourceImage(id=str(src["id"]), name=str(src["name"]), location=str(src.get("location", "")),
                             checksum=str(src.get("checksum", "")))
        manifest["os"], manifest["target"]  # noqa: B018 - both are read by every caller
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{manifest_path} is not a render manifest ({type(exc).__name__}: {exc}): "
                        "render the directory again with invoke render") from None
    return manifest, fingerprint_of(read_rendered(directory), source)
