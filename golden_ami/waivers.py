"""Waivers: a documented, expiring exception for one control on some OSes and targets.

A failing control with a waiver that covers this OS and target and has not expired is
"waived": it does not block approval, and the report shows the waiver next to the failure.
An expired waiver blocks like the failure it covered. Every waiver in the file is listed in
the report - used, unused or expired - so none hides.

    # waivers.yaml (config: waivers_file)
    - control: "1.1.2.1"
      os: [debian12]               # optional: all OSes
      target: [local]              # optional: both targets
      justification: /tmp is a tmpfs mounted by systemd on this image family
      expires: 2027-03-31
      approved_by: security-team   # optional
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .catalogue import load_catalogue
from .config import TARGETS, available_os, describe_validation_error
from .errors import UserError


class Waiver(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    control: str = Field(pattern=r"^[A-Za-z0-9.-]{1,40}$")
    os: Optional[list[str]] = None
    target: Optional[list[str]] = None
    justification: str = Field(min_length=10)
    expires: dt.date
    approved_by: Optional[str] = None

    def covers(self, control_id: str, os_name: str, target: str) -> bool:
        return (self.control == control_id and (self.os is None or os_name in self.os)
                and (self.target is None or target in self.target))

    def expired(self, today: dt.date) -> bool:
        return self.expires < today

    def as_dict(self) -> dict[str, Any]:
        data = self.model_dump()
        data["expires"] = self.expires.isoformat()
        return data


def load(path: Optional[Path]) -> list[Waiver]:
    if path is None:
        return []
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    except FileNotFoundError:
        raise UserError(f"waivers file {path} does not exist (config: waivers_file)") from None
    except (IsADirectoryError, UnicodeDecodeError):
        raise UserError(f"waivers file {path} is not a UTF-8 text file") from None
    except yaml.YAMLError:
        raise UserError(f"waivers file {path} is not valid YAML") from None
    except ValueError as exc:  # a value YAML reads as a date that is none: 2027-13-45
        raise UserError(f"waivers file {path}: {exc} (a date there is not a real date: expires: YYYY-MM-DD)") from None
    if not isinstance(raw, list):
        raise UserError(f"waivers file {path} must be a list of waivers")
    waivers = []
    for index, entry in enumerate(raw):
        try:
            waivers.append(Waiver.model_validate(entry))
        except ValidationError as exc:
            raise UserError(describe_validation_error(exc, f"{path} waiver {index + 1}")) from None
    _refuse_what_matches_nothing(path, waivers)
    return waivers


def _refuse_what_matches_nothing(path: Path, waivers: list[Waiver]) -> None:
    """A waiver for a control, OS or target that does not exist excuses nothing and hides a
    typo; two waivers of one control for the same OS and target leave which one counts open."""
    controls, systems = {spec.id for spec in load_catalogue()}, set(available_os())
    for index, waiver in enumerate(waivers, start=1):
        where = f"{path} waiver {index}"
        if waiver.control not in controls:
            raise UserError(f"{where}: unknown control {waiver.control!r} (see invoke controls)")
        for name in waiver.os or []:
            if name not in systems:
                raise UserError(f"{where}: unknown os {name!r} (one of {', '.join(sorted(systems))})")
        for name in waiver.target or []:
            if name not in TARGETS:
                raise UserError(f"{where}: unknown target {name!r} (aws or local)")
        for earlier, other in enumerate(waivers[:index - 1], start=1):
            if other.control == waiver.control and _overlap(other.os, waiver.os) and _overlap(other.target, waiver.target):
                raise UserError(f"{where}: waives {waiver.control} again for an OS and target waiver {earlier} "
                                "already covers: keep one")


def _overlap(first: Optional[list[str]], second: Optional[list[str]]) -> bool:
    return first is None or second is None or bool(set(first) & set(second))


def apply(rows: list[dict[str, Any]], waivers: list[Waiver], os_name: str, target: str,
          today: Optional[dt.date] = None) -> list[dict[str, Any]]:
    """Mark covered failures waived (or note an expired waiver); return the waiver listing."""
    today = today or dt.date.today()
    used: dict[int, str] = {}
    for row in rows:
        if row["outcome"] != "fail":
            continue
        for index, waiver in enumerate(waivers):
            if not waiver.covers(row["id"], os_name, target):
                continue
            if waiver.expired(today):
                row["message"] = f"waiver expired on {waiver.expires.isoformat()}: {row['message']}"
                used[index] = "expired"
            else:
                row["outcome"] = "waived"
                row["waiver"] = waiver.as_dict()
                used[index] = "used"
            break
    listing = []
    for index, waiver in enumerate(waivers):
        if index in used:
            state = used[index]
        elif waiver.expired(today):
            state = "expired"
        elif any(waiver.covers(r["id"], os_name, target) for r in rows):
            state = "unused (the control passed)"
        else:
            state = "not for this OS/target"
        listing.append({**waiver.as_dict(), "state": state})
    return listing

