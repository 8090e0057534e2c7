"""The command line as a person meets it: one actionable line for bad input, no traceback."""
import json

import pytest

from tests.conftest import invoke_cmd, site_config_file


def _one_line_error(proc, *needles, code=1):
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("args, needles", [
    (["render", "--os=windows"], ["unknown --os 'windows'", "debian12"]),
    (["render", "--os=debian12", "--target=gcp"], ["unknown --target 'gcp'"]),
    (["build", "--os=solaris"], ["unknown --os"]),
    (["latest", "--os=debian12"], ["no approved debian12 image", "invoke build --os=debian12"]),
    (["list", "--status=weird"], ["unknown --status"]),
    (["render"], ["--os is required"]),
    (["rebuild"], ["--os (repeatable) or use --all"]),
    (["rebuild", "--all", "--os=debian12"], ["--os (repeatable) or use --all"]),
    (["prune", "--os=plan9"], ["unknown --os 'plan9'"]),
    (["reap", "--older-than-hours=soon"], ["--older-than-hours must be a number of hours"]),
    (["reap", "--older-than-hours=-1"], ["--older-than-hours must be 0 or more"]),
    (["reap", "--older-than-hours=nan"], ["--older-than-hours must be a number of hours", "'nan'"]),
    (["reap", "--candidates-older-than-hours=inf"], ["--candidates-older-than-hours must be a number of hours"]),
    (["rebuild", "--all", "--jobs=17"], ["--jobs must be between 1 and 16"]),
    (["rebuild", "--all", "--summary-dir=tasks.py"], ["--summary-dir tasks.py is a file"]),
])
def test_bad_input_is_one_actionable_line(state_dir, args, needles):
    _one_line_error(invoke_cmd(*args), *needles)


def test_no_base_image_is_named_with_its_fix(state_dir, tmp_path):
    _one_line_error(invoke_cmd("render", "--os=debian12", "--target=local"),
                    "no base image for debian12", "invoke base-image --os=debian12")
    _one_line_error(invoke_cmd("render", "--os=al2023", "--target=local", f"--config={site_config_file(tmp_path)}"),
                    "--from PATH")


def test_a_value_only_the_site_has_is_asked_for_before_anything_else(state_dir, tmp_path):
    """al2023's 5.1.1.6 needs the site's log host: render and build say so first (before a base
    image or a source AMI is looked for) and write nothing; invoke controls names it too."""
    for task in ("render", "build"):
        _one_line_error(invoke_cmd(task, "--os=al2023", "--target=local"),
                        "controls.5.1.1.6.params.log_host is not set", "exception")
    assert not any(state_dir.rglob("*.sh")), "something was rendered"
    listed = invoke_cmd("controls", "--os=al2023", "--target=aws", "--json")
    assert json.loads(listed.stdout)["unset_site_params"][0].startswith("controls.5.1.1.6.params.log_host is not set")
    configured = invoke_cmd("controls", "--os=al2023", "--target=aws", "--json", f"--config={site_config_file(tmp_path)}")
    assert json.loads(configured.stdout)["unset_site_params"] == []


def test_a_config_value_with_command_substitution_is_refused_and_nothing_is_written(state_dir, tmp_path):
    config = tmp_path / "golden-ami.yaml"
    config.write_text("local:\n  debian_mirror: 'http://deb.debian.org/$(reboot)'\n")
    proc = invoke_cmd("build", "--os=debian12", f"--config={config}")
    _one_line_error(proc, "local.debian_mirror", str(config))
    assert not (state_dir / "store").exists() and not (state_dir / "builds").exists()


def test_a_failing_task_with_json_still_prints_one_json_document(state_dir):
    proc = invoke_cmd("build", "--os=debian12", "--target=local", "--json")
    _one_line_error(proc, "no base image for debian12")
    assert json.loads(proc.stdout) == {"error": "error", "message": proc.stderr.strip().removeprefix("error: ")}


@pytest.mark.parametrize("task", ["prune", "reap"])
def test_prune_and_reap_on_an_empty_store_plan_nothing(state_dir, task):
    proc = invoke_cmd(task, "--target=local", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["applied"] is False and doc["outcomes"] == []
    assert all(not p.get("actions") and not p.get("leftovers") for p in doc["plans"])


def test_an_unreachable_aws_endpoint_is_one_line(state_dir):
    # Port 9 on this machine: nothing listens, so botocore cannot connect.
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
           "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}
    _one_line_error(invoke_cmd("reap", "--target=aws", env=env), "error: ")


def test_list_json_parses_when_empty(state_dir):
    proc = invoke_cmd("list", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_help_explains_every_task():
    listing = invoke_cmd("--list").stdout
    for task in ("render", "base-image", "build", "verify", "approve", "latest", "list", "doctor", "controls",
                 "rebuild", "prune", "reap"):
        assert task in listing
    assert "--target" in invoke_cmd("build", "--help").stdout


def test_controls_json(state_dir):
    proc = invoke_cmd("controls", "--os=ubuntu2404", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["os"] == "ubuntu2404" and {c["id"] for c in doc["controls"]} >= {"4.2.7", "GA-FW-INBOUND"}


def test_doctor_json_names_every_gap_with_a_fix(state_dir):
    proc = invoke_cmd("doctor", "--target=local", "--json")
    findings = json.loads(proc.stdout)
    assert {"area", "ok", "detail", "fix"} <= set(findings[0])
    missing = [f for f in findings if not f["ok"]]
    assert all(f["fix"] for f in missing)
    # A fresh state dir has no base image: doctor says so, with the command that fixes it.
    assert any("invoke base-image --os=debian12" == f["fix"] for f in missing)
    assert proc.returncode == 1


def test_missing_tools_stop_a_build_before_anything_is_written(state_dir, monkeypatch):
    import shutil

    from golden_ami import config, pipeline
    from golden_ami.errors import UserError
    from golden_ami.progress import Progress

    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name.startswith("qemu") else real_which(name))
    with pytest.raises(UserError) as err:
        pipeline.build(config.resolve("debian12", "local"), Progress(quiet=True))
    assert "qemu-system-x86_64 is not installed: apt-get install qemu-system-x86" in str(err.value)
    assert not (state_dir / "builds").exists() and not (state_dir / "store").exists()


def test_sbom_writes_the_sealed_file_and_refuses_one_changed_since(state_dir, tmp_path):
    from golden_ami.targets.local.store import Store
    from golden_ami.verify_runner import report_digest

    verify_dir = state_dir / "builds" / "debian12-b1" / "verify"
    verify_dir.mkdir(parents=True)
    sbom = verify_dir / "sbom.cdx.json"
    sbom.write_text('{"bomFormat": "CycloneDX", "specVersion": "1.6", "components": []}\n')
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"QFI\xfb")
    image = Store(state_dir / "store").add(disk, {"Status": "approved", "OS": "debian12", "BuildId": "debian12-b1",
                                                  "SbomDigest": report_digest(sbom)})
    out = tmp_path / "image.cdx.json"
    proc = invoke_cmd("sbom", f"--image-id={image.id}", f"--out={out}")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == sbom.read_bytes()
    _one_line_error(invoke_cmd("sbom", f"--image-id={image.id}", f"--out={out}"), "exists already")
    assert invoke_cmd("sbom", f"--image-id={image.id}").stdout == sbom.read_text()
    sbom.write_text(sbom.read_text().replace("[]", '[{"name": "forged"}]'))
    _one_line_error(invoke_cmd("sbom", f"--image-id={image.id}"), "is not the file", "SbomDigest")


@pytest.mark.parametrize("text, needles", [
    (b"aws:\n  region: \xff\xfe\n", ["is not UTF-8 text"]),
    (b"aws:\n  ssh_cidrs: ['999.999.999.999/99']\n", ["aws.ssh_cidrs", "999.999.999.999/99", "not a network"]),
    (b"aws:\n  ssh_cidrs: ['10.0.0.1/8']\n", ["aws.ssh_cidrs", "host bits set"]),
])
def test_a_bad_config_value_is_refused_before_any_work(state_dir, tmp_path, text, needles):
    config = tmp_path / "golden-ami.yaml"
    config.write_bytes(text)
    _one_line_error(invoke_cmd("build", "--os=debian12", "--target=aws", f"--config={config}"), str(config), *needles)
    assert not (state_dir / "builds").exists()


def test_a_bad_waiver_date_is_refused_before_the_build(state_dir, tmp_path):
    waivers = tmp_path / "waivers.yaml"
    waivers.write_text("- control: '4.2.16'\n  os: [debian12]\n  target: [aws]\n"
                       "  justification: legacy bastion needs six tries\n  expires: 2027-13-45\n")
    config = tmp_path / "golden-ami.yaml"
    config.write_text(f"waivers_file: {waivers}\naws:\n  ssh_cidrs: ['203.0.113.7/32']\n")
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    _one_line_error(invoke_cmd("build", "--os=debian12", "--target=aws", f"--config={config}", env=env),
                    str(waivers), "expires")
    assert not (state_dir / "builds").exists()


def test_list_shows_the_same_columns_and_the_source_on_both_targets(aws_env, state_dir, tmp_path, capsys):
    """An AMI tagged before the provenance schema was one (SourceAmi) lists its source as
    SourceImage, in the same columns as a local image has."""
    import boto3

    import tasks
    from golden_ami import config
    from golden_ami.progress import Progress
    from golden_ami.render import SourceImage
    from golden_ami.targets.base import BuildContext
    from golden_ami.targets.local.target import LocalTarget

    ec2 = boto3.client("ec2", "us-east-1")
    instance = ec2.run_instances(ImageId="ami-0deb1000000000001", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ami = ec2.create_image(InstanceId=instance, Name="golden-old")["ImageId"]
    ec2.create_tags(Resources=[ami], Tags=[{"Key": k, "Value": v} for k, v in {
        "ManagedBy": "golden-ami", "OS": "debian12", "Status": "candidate", "BuildId": "debian12-old",
        "SourceAmi": "ami-0deb1000000000001", "SourceAmiName": "debian-12-amd64-20261101-1"}.items()])

    cfg = config.resolve("debian12", "local")
    ctx = BuildContext(build_id="debian12-new", build_dir=tmp_path / "build", runtime_dir=tmp_path / "runtime",
                       fingerprint="sha256:" + "f" * 64, commit="abc", progress=Progress(quiet=True),
                       source=SourceImage(id="sha256:" + "1" * 64, name="debian-12-base"),
                       created_at="2026-11-29T12:00:00Z")
    disk = ctx.runtime_dir / "packer-output" / "disk.qcow2"
    disk.parent.mkdir(parents=True)
    disk.write_bytes(b"disk")
    LocalTarget(cfg.settings, cfg.state_dir).register_candidate(cfg, ctx, {})

    rows = {}
    for target in ("aws", "local"):
        tasks.list_.body(None, target=target, json_=True)
        [rows[target]] = json.loads(capsys.readouterr().out)
    assert set(rows["aws"]) == set(rows["local"])
    assert rows["aws"]["SourceImage"] == "ami-0deb1000000000001" and rows["aws"]["BuildId"] == "debian12-old"
    assert rows["local"]["SourceImage"] == "sha256:" + "1" * 64 and rows["local"]["BuildId"] == "debian12-new"
