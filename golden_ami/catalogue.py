"""The control catalogue (controls/*.yaml) and the controls in force for one build.

A control is in force when its profile is selected and it is enabled; it is then either
applicable (remediated by a hardening script, checked by verify/) or not applicable with a
reason that the report shows. Nothing is skipped silently.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import pickle
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import benchmarks, paths, yamlfiles
from .config import Resolved, available_os, describe_validation_error
from .errors import UserError

CATALOGUE_GLOB = "*.yaml"  # controls/NN-<area>.yaml, read in name order
# baseline: the first hardening set (patching, firewall, SSH, agents, hygiene).
# cis-level1-server: exactly the OS benchmark's Level 1 Server recommendations the catalogue
# implements, plus the pipeline's own level-1 GA- controls; cis-level2-server: Level 1 and 2.
# A control joins the CIS profiles by the level its numbers have in the OS's benchmark list
# (controls/benchmarks/<os>.yaml), so one control can be Level 1 on one OS and 2 on another.
PROFILES = ("baseline", "cis-level1-server", "cis-level2-server")
_CIS_PROFILE_LEVEL = {"cis-level1-server": 1, "cis-level2-server": 2}

# A parameter value ends up in scripts and config files: keep strings to a plain alphabet.
_SAFE_PARAM_STRING = re.compile(r"^[A-Za-z0-9._@/:+-]{1,1024}$")


class Applies(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    targets: Optional[list[Literal["aws", "local"]]] = None
    os: Optional[list[str]] = None
    requires_agent: Optional[Literal["ssm", "cloudwatch"]] = None
    # The disk layouts (settings disk_layout) that have what the control concerns: a separate
    # /var, say, exists only in disk_layout: cis.
    disk_layouts: Optional[list[Literal["single", "cis"]]] = None
    # OS on which the recommendation does not apply, each with the reason the report shows.
    not_on: dict[str, str] = Field(default_factory=dict)


class Bounds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    min: Optional[int] = None
    max: Optional[int] = None
    # A string param's whole value must match this (a format the safe alphabet alone does not
    # pin down, e.g. a password hash's).
    pattern: Optional[str] = None


class ControlSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=r"^([0-9]+(\.[0-9]+)*|GA-[A-Z0-9]+(-[A-Z0-9]+)*)$")
    title: str
    section: str
    level: Literal[1, 2]
    # baseline and/or cis (the CIS profiles, at the level the OS's benchmark gives it)
    profiles: list[Literal["baseline", "cis"]]
    refs: dict[str, str] = Field(default_factory=dict)
    applies: Applies = Applies()
    params: dict[str, Any] = Field(default_factory=dict)
    # Per-OS values of some params (package names, paths that differ): applied before the
    # user's overrides, and checked like them.
    params_by_os: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Per-target values (a decision that differs between aws and local): applied after
    # params_by_os, before the user's overrides.
    params_by_target: dict[Literal["aws", "local"], dict[str, Any]] = Field(default_factory=dict)
    param_bounds: dict[str, Bounds] = Field(default_factory=dict)
    # 00-packer-template: remediated by the Packer template / the pipeline's API calls, not a script.
    remediation: str = Field(pattern=r"^[0-9]{2}-[a-z0-9-]+$")
    # suite: a check in verify/; aws-api: checked through the EC2 API by the aws target.
    check: Literal["suite", "aws-api"] = "suite"
    enabled: bool = True
    # OS whose stock image already complies, each with why (one line): on an unhardened image
    # this control's check must pass there, and every other applicable check must fail
    # (tests/unit/test_checks_offline.py, tests/e2e: the base image).
    default_compliant: dict[str, str] = Field(default_factory=dict)
    # Params only the site can give (the log host logs go to), each with what it is: "" in
    # params until the config sets it. A build that has such a control in force and applicable
    # with the value unset is refused before anything is rendered (ControlSet.unset_site_params).
    site_params: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _site_params_start_unset(self) -> "ControlSpec":
        for name in self.site_params:
            if self.params.get(name) != "":
                raise ValueError(f"{self.id}: site param {name} must be a param whose catalogue value is \"\"")
        return self


@dataclass(frozen=True)
class Control:
    """A control as it stands for one OS, target and profile."""

    id: str
    title: str
    section: str
    level: int
    refs: dict[str, str]
    remediation: str
    params: dict[str, Any]
    applicable: bool
    check: str = "suite"
    reason: str = ""  # why not applicable
    os_id: str = ""  # the OS benchmark's own number, when it has one

    def as_dict(self, shared: bool = False) -> dict[str, Any]:
        """What dataclasses.asdict gives for these fields (no dataclass inside), in a fraction of
        the time. shared: the control's own params and refs, not copies, for a caller that only
        writes the dict out (a render, all controls in force into controls.json)."""
        if shared:
            return {name: getattr(self, name) for name in _CONTROL_FIELDS}
        return {name: _copied(getattr(self, name)) for name in _CONTROL_FIELDS}


_CONTROL_FIELDS = tuple(f.name for f in fields(Control))


def _copied(value: Any) -> Any:
    """A deep copy of plain data (what params and refs hold) without copy.deepcopy's memo:
    several times faster; anything else still goes through copy.deepcopy."""
    kind = type(value)
    if kind is dict:
        return {key: _copied(item) for key, item in value.items()}
    if kind is list:
        return [_copied(item) for item in value]
    if kind in (str, int, bool, float, type(None)):
        return value
    return copy.deepcopy(value)


@dataclass(frozen=True)
class ControlSet:
    os: str
    target: str
    profile: str
    controls: tuple[Control, ...] = field(default_factory=tuple)
    # Controls the profile has in force that the config switches off, each with its exception
    # ({control, kind, justification, expires}): the report, the tags and the statement show them.
    exceptions: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    # What a build needs from the site before it can render (see ControlSpec.site_params): one
    # line each, naming the config key. Not part of controls.json: a rendered build has none.
    unset_site_params: tuple[str, ...] = field(default_factory=tuple)

    @property
    def applicable(self) -> list[Control]:
        return [c for c in self.controls if c.applicable]

    def by_id(self) -> dict[str, Control]:
        return {c.id: c for c in self.controls}

    def params(self, control_id: str) -> dict[str, Any]:
        return self.by_id()[control_id].params

    def as_dict(self, shared: bool = False) -> dict[str, Any]:
        """The controls in force as controls.json holds them (shared: see Control.as_dict)."""
        return {
            "os": self.os,
            "target": self.target,
            "profile": self.profile,
            "controls": [c.as_dict(shared) for c in self.controls],
            "exceptions": [dict(e) for e in self.exceptions],
        }


@dataclass(frozen=True)
class _Validated:
    """One controls/*.yaml file's entries as ControlSpecs: shared (controls_for only reads them)
    and pickled (load_catalogue hands each caller an unpickled copy of its own)."""

    specs: tuple[ControlSpec, ...]
    pickled: bytes


def _validated(path: Path, document: Any) -> _Validated:
    """Validating the catalogue is most of a controls_for: once per version of each file."""
    specs = []
    for index, entry in enumerate(document or []):
        try:
            specs.append(ControlSpec.model_validate(entry))
        except ValidationError as exc:
            raise UserError(describe_validation_error(exc, f"controls/{path.name} entry {index + 1}")) from None
    return _Validated(tuple(specs), pickle.dumps(specs, protocol=pickle.HIGHEST_PROTOCOL))


def _catalogue_files() -> list[_Validated]:
    """Every controls/*.yaml file validated (yamlfiles.derived), in name order, each checked
    against the files before it as it is read: an id listed once, only OS names that exist."""
    files: list[_Validated] = []
    seen: dict[str, str] = {}
    systems = set(available_os())
    for path in sorted(paths.CONTROLS_DIR.glob(CATALOGUE_GLOB)):
        validated = yamlfiles.derived(path, _validated)
        for index, spec in enumerate(validated.specs):
            if spec.id in seen:
                raise UserError(f"controls/{path.name} entry {index + 1}: control {spec.id} is already listed in "
                                f"controls/{seen[spec.id]}")
            unknown = sorted(set(spec.params_by_os) - systems)
            unknown = unknown or sorted(set(spec.applies.not_on) - systems) \
                or sorted(set(spec.default_compliant) - systems)
            if unknown:
                raise UserError(f"controls/{path.name} entry {index + 1}: names an unknown OS {unknown[0]!r}")
            seen[spec.id] = path.name
        files.append(validated)
    return files


def load_catalogue() -> list[ControlSpec]:
    """Every control of every controls/*.yaml file, in file order then entry order.

    Each file is validated once per version of it (yamlfiles.derived); each caller gets specs
    of its own (unpickled), so what one caller edits in them no other caller sees."""
    return [spec for validated in _catalogue_files() for spec in pickle.loads(validated.pickled)]


def _shared_catalogue() -> list[ControlSpec]:
    """What load_catalogue lists, but the specs as validated, the same objects for every caller
    in this process: only for code that never changes them (controls_for)."""
    return [spec for validated in _catalogue_files() for spec in validated.specs]


def _check_param(control_id: str, name: str, default: Any, value: Any, bounds: Optional[Bounds]) -> Any:
    where = f"controls.{control_id}.params.{name}"
    if isinstance(default, bool) or isinstance(value, bool):
        if not (isinstance(default, bool) and isinstance(value, bool)):
            raise UserError(f"{where} must be true or false")
        return value
    if isinstance(default, int):
        if not isinstance(value, int):
            raise UserError(f"{where} must be a whole number (got {value!r})")
        if bounds and bounds.min is not None and value < bounds.min:
            raise UserError(f"{where} must be at least {bounds.min} (got {value})")
        if bounds and bounds.max is not None and value > bounds.max:
            raise UserError(f"{where} must be at most {bounds.max} (got {value})")
        return value
    if isinstance(default, list):
        if not isinstance(value, list) or not value:
            raise UserError(f"{where} must be a non-empty list")
        return [_check_param(control_id, name, default[0], item, bounds) for item in value]
    if isinstance(default, str):
        # A value with a form of its own is checked against it first, and not repeated in the
        # message: it may be something a user should not have pasted there (a password).
        if bounds and bounds.pattern is not None and not (isinstance(value, str) and re.fullmatch(bounds.pattern, value)):
            raise UserError(f"{where} is not in the form this control needs ({bounds.pattern}); "
                            f"see its entry in controls/*.yaml")
        if not isinstance(value, str) or not _SAFE_PARAM_STRING.match(value) or value.startswith("-"):
            raise UserError(
                f"{where} contains characters that are not allowed here "
                f"(letters, digits and ._@/:+- only, not starting with -; got {value!r})"
            )
        return value
    if isinstance(default, dict):
        raise UserError(f"{where} is fixed by the catalogue (what a check matches is not configurable)")
    raise UserError(f"{where}: unsupported parameter type")


# Params whose value can be weaker than the benchmark's, by name: a weaker value needs an
# exception (controls_for). File modes may only drop permission bits, a umask only add them;
# algorithm lists, allowed ports, owning groups, paths allowed to hold a key and the files a
# watch excuses (AIDE's instance_files and not_watched) may only leave entries out; the files a
# check reads, the trees it scans or watches, the attributes it compares and the packages or
# units it wants installed, removed or stopped may only add entries.
_MODE_PARAMS = re.compile(r"^(.+_)?mode$")
# A yes/no allowance (unconfined_mode_profiles_allowed): turning one on where it is off is weaker.
_ALLOWANCE_PARAMS = re.compile(r"^.+_allowed$")
_SUBSET_PARAMS = frozenset({"ciphers", "macs", "kex", "allowed_tcp_ports", "groups", "allowed_paths",
                            "gid0_accounts_allowed", "instance_files", "not_watched", "unconfined_programs_allowed",
                            "modules_kept"})
_COVER_PARAMS = frozenset({"paths", "scan_paths", "watch_paths", "home_paths", "rc_files", "packages", "units",
                           "audit_tools", "attributes", "domains", "relabel_fstypes"})


def _weakens(name: str, benchmark: Any, value: Any) -> str:
    """How value is weaker than the benchmark's value of param name ("" when it is not)."""
    octal = re.compile(r"^[0-7]{3,4}$")
    if name == "umask" and octal.match(str(value)) and octal.match(str(benchmark)):
        dropped = int(str(benchmark), 8) & ~int(str(value), 8)
        return f"masks fewer bits than the benchmark's {benchmark} (it lets {dropped:03o} through)" if dropped else ""
    if _MODE_PARAMS.match(name) and octal.match(str(value)) and octal.match(str(benchmark)):
        added = int(str(value), 8) & ~int(str(benchmark), 8)
        return f"grants bits {added:04o} beyond the benchmark's {benchmark}" if added else ""
    if _ALLOWANCE_PARAMS.match(name) and value is True and benchmark is False:
        return "allows what the benchmark's value does not (false)"
    if name in _SUBSET_PARAMS and isinstance(value, list) and isinstance(benchmark, list):
        extra = [item for item in value if item not in benchmark]
        return f"adds {extra!r} to the benchmark's {benchmark!r}" if extra else ""
    if name in _COVER_PARAMS and isinstance(value, list) and isinstance(benchmark, list):
        dropped = [item for item in benchmark if item not in value]
        return f"leaves out {dropped!r} of the benchmark's {benchmark!r}" if dropped else ""
    return ""


def _applicability(spec: ControlSpec, cfg: Resolved) -> tuple[bool, str]:
    applies = spec.applies
    if applies.targets is not None and cfg.target not in applies.targets:
        return False, f"applies to the {', '.join(applies.targets)} target only"
    if applies.os is not None and cfg.os.name not in applies.os:
        return False, f"applies to {', '.join(applies.os)} only"
    if cfg.os.name in applies.not_on:
        return False, " ".join(applies.not_on[cfg.os.name].split())
    if applies.disk_layouts is not None and cfg.settings.disk_layout not in applies.disk_layouts:
        return False, (f"not a separate filesystem with disk_layout: {cfg.settings.disk_layout} (one root "
                       f"filesystem); disk_layout: {' or '.join(applies.disk_layouts)} makes it one")
    if applies.requires_agent:
        agent = cfg.target_os.agents.get(applies.requires_agent)
        if agent is None:
            return False, f"os/{cfg.os.name}.yaml names no {applies.requires_agent} agent for {cfg.target}"
        if not agent.available:
            return False, " ".join(str(agent.unavailable).split())
    return True, ""


def level_on(spec: ControlSpec, os_name: str, levels: dict[str, Optional[int]]) -> int:
    """The control's Server level on os_name: the lowest level its numbers have in the OS's
    benchmark (a control that meets a Level 1 recommendation is needed at Level 1), else the
    catalogue's own (GA- controls, numbers the benchmark puts in no Server profile)."""
    return _level_of(spec, benchmarks.numbers_of(spec.id, spec.refs, os_name), levels)


def _level_of(spec: ControlSpec, numbers: list[str], levels: dict[str, Optional[int]]) -> int:
    """level_on for the numbers the control carries on that OS (worked out once per control)."""
    known = [levels[n] for n in numbers if levels.get(n)]
    return min(known) if known else spec.level


def in_profile_at(spec: ControlSpec, profile: str, level: int) -> bool:
    if profile in _CIS_PROFILE_LEVEL:
        return "cis" in spec.profiles and level <= _CIS_PROFILE_LEVEL[profile]
    return profile in spec.profiles


def controls_for(cfg: Resolved) -> ControlSet:
    """The controls in force for this OS, target and profile, with user overrides applied."""
    # Only read: what a Control holds of a spec is copied (params, refs) or immutable.
    specs = _shared_catalogue()
    known = {s.id for s in specs}
    for control_id in cfg.settings.controls:
        if control_id not in known:
            raise UserError(f"config names unknown control {control_id!r}: see `invoke controls`")
    chosen: list[Control] = []
    exceptions: list[dict[str, Any]] = []
    unset: list[str] = []
    levels = benchmarks.server_levels(cfg.os.name)
    for spec in specs:
        override = cfg.settings.controls.get(spec.id)
        enabled = spec.enabled if override is None or override.enabled is None else override.enabled
        numbers = benchmarks.numbers_of(spec.id, spec.refs, cfg.os.name)
        level = _level_of(spec, numbers, levels)
        in_profile = in_profile_at(spec, cfg.profile, level)
        if in_profile and spec.enabled and not enabled:
            exceptions.append(_exception(spec.id, override))
        if not in_profile or not enabled:
            continue
        params = {name: _copied(value) for name, value in spec.params.items()}
        for where, values in ((f"params_by_os.{cfg.os.name}", spec.params_by_os.get(cfg.os.name, {})),
                              (f"params_by_target.{cfg.target}", spec.params_by_target.get(cfg.target, {}))):
            for name, value in values.items():
                if name not in spec.params:
                    raise UserError(f"controls: {spec.id} {where}.{name} is not one of its params")
                params[name] = _check_param(spec.id, name, spec.params[name], value, spec.param_bounds.get(name))
        if override is not None:
            for name, value in override.params.items():
                if name not in spec.params:
                    raise UserError(f"controls.{spec.id}.params.{name} is not a parameter of {spec.id}")
                value = _check_param(spec.id, name, spec.params[name], value, spec.param_bounds.get(name))
                weaker = _weakens(name, params[name], value)
                if weaker:
                    exceptions.append({**_exception(spec.id, override, f"{name}: {value!r} {weaker}"),
                                       "param": name, "value": value, "benchmark": params[name]})
                params[name] = value
        applicable, reason = _applicability(spec, cfg)
        if applicable:
            unset.extend(f"controls.{spec.id}.params.{name} is not set: {' '.join(what.split())}"
                         for name, what in spec.site_params.items() if params[name] == "")
        chosen.append(
            Control(
                id=spec.id,
                title=spec.title,
                section=spec.section,
                level=level,
                refs=dict(spec.refs),
                remediation=spec.remediation,
                check=spec.check,
                params=params,
                applicable=applicable,
                reason=reason,
                os_id=", ".join(numbers),  # the number(s) in the OS's own CIS benchmark ('' if none)
            )
        )
    return ControlSet(os=cfg.os.name, target=cfg.target, profile=cfg.profile, controls=tuple(chosen),
                      exceptions=tuple(exceptions), unset_site_params=tuple(unset))


def require_site_params(chosen: ControlSet) -> None:
    """Refuse a build whose controls still need a value only the site has: before anything is
    rendered or started, not after a build whose image the check would reject."""
    if chosen.unset_site_params:
        more = len(chosen.unset_site_params) - 1
        raise UserError(f"{chosen.unset_site_params[0]}{f' (+{more} more: invoke controls)' if more else ''}. "
                        "Set it under controls: in your config, or switch the control off there with an "
                        "exception: {enabled: false, exception: {justification: ..., expires: YYYY-MM-DD}} "
                        "(README: \"Values only your site has\")")


def _exception(control_id: str, override: Any, weakening: str = "") -> dict[str, Any]:
    """A control the profile has in force, switched off or weakened: only with an exception in force."""
    exception = override.exception
    if exception is None:
        what = (f"controls.{control_id}.params.{weakening}" if weakening else
                f"controls.{control_id}: enabled: false switches off a control the profile has in force")
        raise UserError(f"{what}; say why and until when: exception: {{justification: ..., expires: YYYY-MM-DD}}")
    if exception.expires < dt.datetime.now(dt.timezone.utc).date():
        raise UserError(f"controls.{control_id}.exception expired on {exception.expires.isoformat()}: "
                        "renew it or enable the control again")
    return {"control": control_id, "kind": "weakened" if weakening else "disabled",
            "justification": exception.justification,
            "expires": exception.expires.isoformat(), **({"approved_by": exception.approved_by}
                                                         if exception.approved_by else {})}


def coverage(chosen: ControlSet, os_data: Any) -> dict[str, Any]:
    """How the controls in force account for the OS's whole CIS benchmark (see benchmarks.py):
    per Server level and assessment, how many recommendations are implemented and checked, not
    applicable, manual, known gaps, outside this profile, or unaccounted."""
    bench = benchmarks.load(chosen.os)
    table_rows = benchmarks.rows(bench, load_catalogue(), chosen)
    return {
        "os": chosen.os,
        "profile": chosen.profile,
        "in_force": len(chosen.controls),
        "applicable": len(chosen.applicable),
        "not_applicable": len(chosen.controls) - len(chosen.applicable),
        "benchmark": bench.title,
        "table": benchmarks.coverage_table(table_rows),
        "proven_on_running_system": os_data.proven_on_running_system,
        "recommendations": [dataclasses.asdict(row) for row in table_rows],
    }
