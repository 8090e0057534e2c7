"""The reaper: find and remove what crashed or killed runs left behind.

A run that ends normally removes its own temporary things in ``finally`` blocks; a SIGKILL,
a lost machine or a failed API call at teardown does not. The reaper looks for them by the
marks the pipeline puts on everything it makes, shows a plan, and acts only with yes=True.
What it looks for is the target's: targets/aws/reap.py (instances, key pairs, security groups,
candidate AMIs, snapshots, volumes) and targets/local/reap.py (QEMU and Packer processes that
lost their pipeline, candidate store images, build runtime and test VM leftovers).
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from .config import Settings
from .errors import UserError
from .plans import DEFAULT_CANDIDATES_OLDER_THAN_HOURS, DEFAULT_OLDER_THAN_HOURS, ChangeResult, ReapPlan
from .targets import get_target


def plan(settings: Settings, target: str, state_dir: Path, older_than_hours: float = DEFAULT_OLDER_THAN_HOURS,
         candidates_older_than_hours: float = DEFAULT_CANDIDATES_OLDER_THAN_HOURS, *,
         now: Optional[datetime] = None) -> ReapPlan:
    if older_than_hours < 0 or candidates_older_than_hours < 0:
        raise UserError("--older-than-hours must be 0 or more")
    return get_target(target, settings, state_dir).reap_plan(older_than_hours, candidates_older_than_hours, now=now)


def apply(plan: ReapPlan, *, yes: bool, settings: Optional[Settings] = None, ec2: Any = None, ssm: Any = None,
          grace_seconds: Optional[float] = None) -> list[ChangeResult]:
    """Remove what the plan lists, then read each back; raise NotApplied if anything is left.

    settings (aws): names the SSM pointers checked once more before a candidate image goes (the
    plan's own by default). ec2, ssm (aws) and grace_seconds (local) are for tests."""
    if not yes:
        raise UserError("the reaper changes nothing without --yes: read the plan, then run it again with --yes")
    overrides = {k: v for k, v in dict(settings=settings, ec2=ec2, ssm=ssm, grace_seconds=grace_seconds).items()
                 if v is not None}
    return plan.apply(**overrides)
