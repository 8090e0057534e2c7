"""The reaper (golden_ami/reaper.py): what a killed run leaves is found, shown, removed only
with yes, read back, and a second look finds nothing. AWS against moto in-process (the test
instance made by the real boot_test_instance, never torn down: a SIGKILL's view); the local
target with fake disks in tmp_path and harmless stand-in processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import pytest

from golden_ami import config, reaper, sshkeys
from golden_ami.config import Settings
from golden_ami.errors import UserError
from golden_ami.progress import Progress
from golden_ami.targets.aws import images as aws_images
from golden_ami.targets.aws import reap as aws_reap
from golden_ami.targets.aws.target import AwsTarget
from golden_ami.targets.local import processes
from golden_ami.targets.local import reap as local_reap
from golden_ami.targets.local.store import Store

REGION = "us-east-1"
BASE_AMI = "ami-0deb1000000000001"
LATER = timedelta(hours=25)  # past both default thresholds (2 h, and 24 h for candidate images)


@pytest.fixture
def aws(aws_env):
    """moto in-process, seeded by tests/unit/conftest.py's aws_env (Debian 12 AMIs among them)."""
    return boto3.client("ec2", REGION), boto3.client("ssm", REGION)


def _tags(pairs: dict) -> list[dict]:
    return [{"Key": k, "Value": v} for k, v in pairs.items()]


def _packer_name(at: datetime) -> str:
    """Packer 1.6.6's packer_<time-ordered uuid>: unix seconds first, then random."""
    return f"packer_{int(at.timestamp()):08x}-{uuid.uuid4().hex[:4]}-{uuid.uuid4().hex[:4]}-{uuid.uuid4().hex[:4]}-" \
           f"{uuid.uuid4().hex[:12]}"


def _killed_build(ec2, build_id: str) -> dict:
    """What Packer 1.6.6 has made when its run is killed mid-build: an untagged packer_ key pair
    and group, and the build instance carrying run_tags."""
    name = _packer_name(datetime.now(timezone.utc))
    ec2.create_key_pair(KeyName=name)
    group = ec2.create_security_group(GroupName=_packer_name(datetime.now(timezone.utc)),
                                      Description="Temporary group for Packer")["GroupId"]
    instance = ec2.run_instances(ImageId=BASE_AMI, MinCount=1, MaxCount=1, KeyName=name, SecurityGroupIds=[group],
                                 TagSpecifications=[{"ResourceType": "instance", "Tags": _tags({
                                     "ManagedBy": "golden-ami", "BuildId": build_id, "Purpose": "build",
                                     "OS": "debian12"})}])["Instances"][0]["InstanceId"]
    return {"key": name, "group": group, "instance": instance}


def _candidate(ec2, build_id: str) -> tuple[str, list[str]]:
    """A candidate as register_candidate leaves it (Packer's tags and snapshot_tags)."""
    instance = ec2.run_instances(ImageId=BASE_AMI, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    image_id = ec2.create_image(InstanceId=instance, Name=f"golden-{build_id}")["ImageId"]
    ec2.terminate_instances(InstanceIds=[instance])
    snapshots = aws_images.snapshots_of(ec2.describe_images(ImageIds=[image_id])["Images"][0])
    ec2.create_tags(Resources=[image_id, *snapshots], Tags=_tags({
        "ManagedBy": "golden-ami", "BuildId": build_id, "OS": "debian12", "Status": "candidate",
        "CreatedAt": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}))
    return image_id, snapshots


def _killed_verify(image_id: str, tmp_path: Path) -> dict:
    """The real boot_test_instance, entered and never left: the state after a SIGKILL."""
    user = tmp_path / "golden-ami.yaml"
    user.write_text(json.dumps({"aws": {"ssh_cidrs": ["203.0.113.7/32"]}}))
    cfg = config.resolve("debian12", "aws", str(user))
    target = AwsTarget(cfg.settings, cfg.state_dir)
    key = sshkeys.generate(tmp_path / "k", "id", "verify")
    booting = target.boot_test_instance(cfg, target.get_image(image_id), key, tmp_path, Progress(quiet=True))
    instance = booting.__enter__()
    # Held on to: a context manager that is garbage-collected runs its teardown, a killed run's does not.
    return {"instance": instance.instance_id, "key": instance.details["key_pair"],
            "group": instance.details["security_group"], "context": booting}


def _live_instances(ec2) -> list[str]:
    return [i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
            if i["State"]["Name"] != "terminated"]


def test_a_killed_run_is_reaped_completely_and_only_with_yes(aws, tmp_path):
    ec2, ssm = aws
    build = _killed_build(ec2, "debian12-20261129T000000Z-aaaaaa")
    image_id, snapshots = _candidate(ec2, "debian12-20261129T010000Z-bbbbbb")
    verify = _killed_verify(image_id, tmp_path)
    bystander_key = ec2.create_key_pair(KeyName="team-web")["KeyName"]
    bystander = ec2.run_instances(ImageId=BASE_AMI, MinCount=1, MaxCount=1, KeyName=bystander_key)["Instances"][0]
    settings = Settings()

    # Right after the crash everything is young: nothing to reap, all of it listed as kept.
    young = aws_reap.plan_aws(settings, ec2=ec2, ssm=ssm)
    assert young.leftovers == []
    assert {verify["instance"], build["instance"], image_id} <= {k.ident for k in young.kept}

    now = datetime.now(timezone.utc) + LATER
    plan = aws_reap.plan_aws(settings, ec2=ec2, ssm=ssm, now=now)
    found = {(x.kind, x.ident) for x in plan.leftovers}
    assert found == {("instance", verify["instance"]), ("instance", build["instance"]),
                     ("key-pair", verify["key"]), ("key-pair", build["key"]),
                     ("security-group", verify["group"]), ("security-group", build["group"]),
                     ("image", image_id)}
    image_item = next(x for x in plan.leftovers if x.kind == "image")
    assert image_item.details["snapshots"] == snapshots and snapshots

    # Without yes: refused, and nothing changed.
    before = sorted(_live_instances(ec2))
    with pytest.raises(UserError, match="--yes"):
        reaper.apply(plan, yes=False, ec2=ec2, ssm=ssm)
    assert sorted(_live_instances(ec2)) == before and not aws_images.image_gone(ec2, image_id)

    outcomes = reaper.apply(plan, yes=True, settings=settings, ec2=ec2, ssm=ssm)
    assert {o.status for o in outcomes} == {"done"}
    assert _live_instances(ec2) == [bystander["InstanceId"]]
    assert {k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]} == {bystander_key}
    groups = {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    assert not {verify["group"], build["group"]} & groups
    assert aws_images.image_gone(ec2, image_id) and all(aws_images.snapshot_gone(ec2, s) for s in snapshots)

    again = aws_reap.plan_aws(settings, ec2=ec2, ssm=ssm, now=now)
    assert again.leftovers == [], again.describe()


def test_untagged_packer_leftovers_wait_for_the_packer_timeout(aws):
    ec2, ssm = aws
    now = datetime.now(timezone.utc)
    three_hours_old = _packer_name(now - timedelta(hours=3))
    ec2.create_key_pair(KeyName=three_hours_old)
    group = ec2.create_security_group(GroupName=three_hours_old, Description="Temporary group for Packer")["GroupId"]
    # Named like Packer's but not Packer's description: never touched.
    other = ec2.create_security_group(GroupName=_packer_name(now - timedelta(days=9)), Description="hand made")["GroupId"]
    # An old Packer key some other team's live instance still uses: kept.
    busy = _packer_name(now - timedelta(days=9))
    ec2.create_key_pair(KeyName=busy)
    ec2.run_instances(ImageId=BASE_AMI, MinCount=1, MaxCount=1, KeyName=busy)

    # Packer builds may run 3 h here: an untagged 3 h old group might still be a live build's.
    slow = Settings.model_validate({"packer": {"timeout_minutes": 180}})
    assert aws_reap.plan_aws(slow, ec2=ec2, ssm=ssm, now=now).leftovers == []
    # With the default 90 min Packer timeout the 3 h old group is past it; the key pair is not:
    # its CreateTime (now) is younger than its name, and the younger age wins.
    plan = aws_reap.plan_aws(Settings(), ec2=ec2, ssm=ssm, now=now)
    assert {(x.kind, x.ident) for x in plan.leftovers} == {("security-group", group)}
    plan = aws_reap.plan_aws(slow, ec2=ec2, ssm=ssm, now=now + timedelta(hours=4))
    assert {(x.kind, x.ident) for x in plan.leftovers} == {("key-pair", three_hours_old), ("security-group", group)}
    assert "untagged" in " ".join(x.reason for x in plan.leftovers)
    kept = {k.ident: k.why for k in plan.kept}
    assert "use it" in kept[busy] and other not in kept

    reaper.apply(plan, yes=True, ec2=ec2, ssm=ssm)
    assert {k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]} == {busy}
    assert other in {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}


def test_an_old_candidate_still_in_use_is_kept(aws):
    ec2, ssm = aws
    image_id, _ = _candidate(ec2, "debian12-20261129T010000Z-cccccc")
    ec2.create_launch_template(LaunchTemplateName="trial", LaunchTemplateData={"ImageId": image_id})
    plan = aws_reap.plan_aws(Settings(), ec2=ec2, ssm=ssm, now=datetime.now(timezone.utc) + LATER)
    assert plan.leftovers == []
    assert "launch template trial" in {k.ident: k.why for k in plan.kept}[image_id]


def test_orphaned_snapshots_and_volumes_are_found(aws):
    ec2, ssm = aws
    image_id, snapshots = _candidate(ec2, "debian12-20261129T010000Z-dddddd")
    ec2.deregister_image(ImageId=image_id)  # a prune that died before deleting the snapshot
    volume = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=8, TagSpecifications=[
        {"ResourceType": "volume", "Tags": _tags({"ManagedBy": "golden-ami", "Purpose": "build"})}])["VolumeId"]
    plan = aws_reap.plan_aws(Settings(), ec2=ec2, ssm=ssm, now=datetime.now(timezone.utc) + LATER)
    assert {(x.kind, x.ident) for x in plan.leftovers} == {("snapshot", s) for s in snapshots} | {("volume", volume)}
    reaper.apply(plan, yes=True, ec2=ec2, ssm=ssm)
    assert aws_reap.plan_aws(Settings(), ec2=ec2, ssm=ssm, now=datetime.now(timezone.utc) + LATER).leftovers == []


def test_packer_name_time():
    assert aws_reap.packer_name_time("packer_5f5e1000-0a1b-2c3d-4e5f-0123456789ab") == datetime(
        2020, 9, 13, 12, 26, 40, tzinfo=timezone.utc)
    assert aws_reap.packer_name_time("packer-5f5e1000") is None
    assert aws_reap.packer_name_time("packer_zzzzzzzz-0a1b-2c3d-4e5f-0123456789ab") is None


# --- local -------------------------------------------------------------------------------------
def _age_tree(path: Path, hours: float) -> None:
    stamp = time.time() - hours * 3600
    for each in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(each, (stamp, stamp), follow_symlinks=False)


def _killed_local_run(state: Path, tmp_path: Path) -> dict:
    store = Store(state / "store")
    disk = tmp_path / "candidate.qcow2"
    disk.write_bytes(b"QFI\xfb candidate")
    created = (datetime.now(timezone.utc) - timedelta(hours=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    candidate = store.add(disk, {"Status": "candidate", "OS": "debian12", "CreatedAt": created})
    disk = tmp_path / "approved.qcow2"
    disk.write_bytes(b"QFI\xfb approved")
    approved = store.add(disk, {"Status": "approved", "OS": "debian12", "CreatedAt": created})
    partial = store.root / ".incoming-li-0123456789abcdef0"
    partial.mkdir()
    (partial / "disk.qcow2").write_bytes(b"half")
    build = state / "builds" / "debian12-20261129T000000Z-eeeeee"
    runtime = build / "runtime"
    (runtime / "packer-output").mkdir(parents=True)
    (runtime / "packer-output" / "disk.qcow2").write_bytes(b"QFI\xfb")
    (runtime / "build-key").mkdir()
    (runtime / "build-key" / "id_ed25519").write_text("PRIVATE")
    instance = build / "verify" / "instance"
    (instance / "seed").mkdir(parents=True)
    (instance / "overlay.qcow2").write_bytes(b"QFI\xfb overlay")
    (instance / "seed.iso").write_bytes(b"iso")
    (instance / "serial.log").write_text("console")  # evidence: stays
    (build / "verify" / "key").mkdir()
    (build / "verify" / "key" / "id_ed25519_li-x").write_text("PRIVATE")
    (build / "verify" / "key" / "id_ed25519_li-x.pub").write_text("ssh-ed25519 AAAA")
    (build / "verify" / ".run-k1ll3d" / "key").mkdir(parents=True)  # a verify run's own directory
    (build / "verify" / ".run-k1ll3d" / "key" / "id_ed25519").write_text("PRIVATE")
    (build / "verify" / ".run-k1ll3d" / "junit.xml").write_text("<half")
    for path in (partial, build):
        _age_tree(path, 3)
    return {"candidate": candidate, "approved": approved, "partial": partial, "build": build}


def test_a_killed_local_run_is_reaped_completely(state_dir, tmp_path):
    made = _killed_local_run(state_dir, tmp_path)
    plan = local_reap.plan_local(state_dir, processes={})
    assert {(x.kind, x.ident) for x in plan.leftovers} == {
        ("store-image", made["candidate"].id), ("store-partial", made["partial"].name),
        ("runtime-dir", made["build"].name), ("verify-leftover", made["build"].name)}

    with pytest.raises(UserError, match="--yes"):
        reaper.apply(plan, yes=False)
    assert made["candidate"].path.exists() and (made["build"] / "runtime").exists()

    outcomes = reaper.apply(plan, yes=True)
    assert {o.status for o in outcomes} == {"done"}
    build = made["build"]
    assert not (build / "runtime").exists() and not made["partial"].exists()
    assert not (build / "verify" / "instance" / "overlay.qcow2").exists()
    assert not (build / "verify" / "key" / "id_ed25519_li-x").exists()
    assert not (build / "verify" / ".run-k1ll3d").exists()
    assert (build / "verify" / "instance" / "serial.log").exists() and (build / "verify" / "key" / "id_ed25519_li-x.pub").exists()
    assert [i.id for i in Store(state_dir / "store").list()] == [made["approved"].id]
    assert local_reap.plan_local(state_dir, processes={}).leftovers == []


def test_young_leftovers_and_a_live_build_are_kept(state_dir, tmp_path):
    made = _killed_local_run(state_dir, tmp_path)
    plan = local_reap.plan_local(state_dir, older_than_hours=5, candidates_older_than_hours=48, processes={})
    assert plan.leftovers == []
    # A live process working in the build directory (Packer does: its cwd) protects it, however old.
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=made["build"])
    try:
        plan = local_reap.plan_local(state_dir)
        assert {x.kind for x in plan.leftovers} == {"store-image", "store-partial"}
        assert f"PID {worker.pid}" in {k.ident: k.why for k in plan.kept}[made["build"].name]
    finally:
        worker.kill()
        worker.wait()


def _process(pid, ppid, argv, started_hours_ago=3.0, state="S"):
    started = datetime.now(timezone.utc) - timedelta(hours=started_hours_ago)
    return processes.ProcessInfo(pid, ppid, tuple(argv), state, 1000 + pid, started)


def test_which_qemu_and_packer_processes_lost_their_pipeline(state_dir):
    state = str(state_dir.resolve())
    state_dir.mkdir(parents=True)
    table = {p.pid: p for p in [
        _process(1, 0, ["/sbin/init"]),
        _process(50, 1, ["/usr/bin/python3", "/venv/bin/invoke", "build"]),
        # a live build: invoke -> packer -> packer -> plugin -> qemu
        _process(60, 50, ["/usr/bin/packer", "build", f"-var-file={state}/builds/b1/runtime/runtime.pkrvars.json"]),
        _process(61, 60, ["/usr/bin/packer", "build", f"-var-file={state}/builds/b1/runtime/runtime.pkrvars.json"]),
        _process(62, 61, ["/usr/bin/packer", "plugin", "packer-builder-qemu"]),
        _process(63, 62, ["/usr/bin/qemu-system-x86_64", "-drive", f"file={state}/builds/b1/runtime/packer-output/disk.qcow2"]),
        # a killed build: packer handed to init, its QEMU still running
        _process(70, 1, ["/usr/bin/packer", "build", f"-var-file={state}/builds/b2/runtime/runtime.pkrvars.json"]),
        _process(71, 70, ["/usr/bin/packer", "plugin", "packer-builder-qemu"]),
        _process(72, 71, ["qemu-system-x86_64", "-drive", f"file={state}/builds/b2/runtime/packer-output/disk.qcow2"]),
        # a killed verify, its test VM under a service manager now
        _process(80, 5, ["qemu-system-x86_64", "-drive", f"file={state}/builds/b3/verify/instance/overlay.qcow2"]),
        _process(5, 1, ["/lib/systemd/systemd", "--user"]),
        # orphaned but only just: kept
        _process(90, 1, ["qemu-system-x86_64", "-serial", f"file:{state}/builds/b4/logs/build-console.log"], 0.1),
        # not ours: another state dir whose name starts like ours, and an unrelated VM
        _process(95, 1, ["qemu-system-x86_64", "-drive", f"file={state}2/builds/b5/disk.qcow2"]),
        _process(96, 1, ["qemu-system-x86_64", "-drive", "file=/srv/vm.qcow2"]),
        _process(97, 1, ["qemu-system-x86_64", f"{state}/x"], state="Z"),
    ]}
    plan = local_reap.plan_local(state_dir, processes=table)
    assert [x.ident for x in plan.leftovers] == ["70", "72", "80"]  # Packer first: it stops its own VM
    kept = {k.ident: k.why for k in plan.kept}
    assert set(kept) == {"60", "61", "63", "90"}
    assert "belongs to live PID 50" in kept["63"] and "only" in kept["90"]
    assert plan.leftovers[0].details["start_ticks"] == 1070


def test_a_leaked_vm_is_stopped_by_pid_with_sigkill_if_it_ignores_sigterm(state_dir):
    state_dir.mkdir(parents=True)
    disk = f"file={state_dir.resolve()}/builds/b1/verify/instance/overlay.qcow2"
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"
    vm = subprocess.Popen(["qemu-system-x86_64", "-c", stubborn, "-drive", disk], executable=sys.executable,
                          stdout=subprocess.PIPE, text=True)
    try:
        assert vm.stdout.readline() == "ready\n"  # SIGTERM is ignored from here on
        table = processes.read_processes()
        seen = table[vm.pid]
        assert seen.argv[0] == "qemu-system-x86_64"
        # As found for real: its parent (this test) is alive, so it is not touched.
        live = local_reap.plan_local(state_dir, older_than_hours=0)
        assert [k.ident for k in live.kept if k.kind == "process"] == [str(vm.pid)] and live.leftovers == []
        # Its pipeline gone (handed to init): reaped, and a wrong start time protects a reused PID.
        orphaned = {**table, vm.pid: replace(seen, ppid=1)}
        plan = local_reap.plan_local(state_dir, older_than_hours=0, processes=orphaned)
        assert [(x.kind, x.ident) for x in plan.leftovers] == [("process", str(vm.pid))]
        processes.stop_process(vm.pid, seen.start_ticks + 1, grace_seconds=0.2)
        assert vm.poll() is None
        started = time.monotonic()
        outcomes = reaper.apply(plan, yes=True, grace_seconds=1.0)
        assert [o.status for o in outcomes] == ["done"]
        assert vm.wait(timeout=10) == -9 and time.monotonic() - started >= 1.0  # SIGTERM ignored, then SIGKILL
    finally:
        if vm.poll() is None:
            vm.kill()
            vm.wait()


def test_reaper_entry_point_checks_its_input(state_dir):
    with pytest.raises(UserError, match="older-than-hours"):
        reaper.plan(Settings(), "local", state_dir, older_than_hours=-1)
    with pytest.raises(UserError, match="--target"):
        reaper.plan(Settings(), "gcp", state_dir)
    plan = reaper.plan(Settings(), "local", state_dir)
    assert plan.leftovers == [] and plan.describe()[0].endswith("nothing left behind")
    json.dumps(plan.as_dict())
