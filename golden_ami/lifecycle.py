"""Image lifecycle: retire older approved images, never one that is still in use.

Per OS, after each approval (after_approval) and with ``invoke prune``:

    approved images, newest first:   newest | 2nd ... keep_approved-th | older ...

The newest approved image is always kept; only approvals that verify are counted (as
`invoke latest` counts them), so the image prune keeps as the newest is the one latest prints
(plans.PrunePlan.rank). What happens to the older ones, and what else keeps an image, is the
target's: targets/aws/prune.py (deprecate, then deregister with snapshots; never what the SSM
pointer, a launch template or an instance uses) and targets/local/prune.py (delete from the
store; never a disk a running process uses).

plan() only reads. apply() acts, checks again right before each removal, then reads everything
back and raises plans.NotApplied if any change did not land.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import botocore.exceptions

from . import attest
from .config import Settings, available_os
from .errors import UserError
from .plans import ChangeResult, PrunePlan
from .targets import get_target


def plan(settings: Settings, target: str, state_dir: Path, os_names: Optional[list[str]] = None, *,
         now: Optional[datetime] = None) -> list[PrunePlan]:
    """One plan per OS (and, on aws, per region: aws.region and every copy region)."""
    names = os_names or available_os()
    chosen = get_target(target, settings, state_dir or Path("."))
    refused = {name: attest.approved_images(chosen, name)[1] for name in names}
    return chosen.prune_plans(names, refused, now=now)


def apply(plan: PrunePlan, **clients: Any) -> list[ChangeResult]:
    """Carry out a plan, read every change back; raise NotApplied if one did not land.
    clients (aws, tests): ec2=, ssm= to use instead of new ones."""
    return plan.apply(**clients)


def after_approval(cfg: Any, progress: Any) -> list[PrunePlan]:
    """Run the lifecycle for the OS a build just approved (called by the pipeline after publish).

    The new image is approved and published whatever happens here, so a failure is reported
    with the command that finishes the job instead of failing the build (botocore's errors
    too: an unreachable or refusing registry API must not fail an approved build)."""
    try:
        plans = plan(cfg.settings, cfg.target, cfg.state_dir, [cfg.os.name])
        for each in plans:
            for line in each.describe():
                progress.say(line)
            if each.has_work:
                for result in apply(each):
                    if result.status != "done":
                        progress.say(f"prune: {result.action}: {result.status} ({result.detail})")
        return plans
    except (UserError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        progress.say(f"WARNING: pruning older {cfg.os.name} images did not finish: {str(exc)[:300]} "
                     f"(invoke prune --os={cfg.os.name} --target={cfg.target} --yes)")
        return []
