"""`invoke render --target=aws` against moto's server: the source resolves through AWS's own
SSM parameter, the template validates under the installed Packer and opens nothing to 0.0.0.0/0;
no credentials or a wrong endpoint give one actionable line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from golden_ami import packer, render
from tests.conftest import free_port, invoke_cmd, provenance_vars, required_tool, site_config_file, wait_for_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory):
    binary = Path(sys.executable).with_name("moto_server")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _aws_env(state_dir, endpoint):
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint, "GOLDEN_AMI_STATE_DIR": str(state_dir)}


def test_render_al2023_resolves_through_ssm_and_validates(state_dir, tmp_path, moto_endpoint):
    required_tool("packer", "scripts/install.sh")
    out = tmp_path / "al2023-aws"
    proc = invoke_cmd("render", "--os=al2023", "--target=aws", f"--out={out}", "--json",
                      f"--config={site_config_file(tmp_path)}", env=_aws_env(state_dir, moto_endpoint))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["source_image"]["id"].startswith("ami-")
    assert "al2023" in result["source_image"]["name"]
    template = (out / "template.pkr.hcl").read_text()
    assert "0.0.0.0/0" not in template
    runtime = packer.write_runtime_vars(tmp_path / "rt", {
        "build_id": "b", "fingerprint": result["fingerprint"], "ami_name": "golden-b", "runner_cidrs": ["203.0.113.7/32"],
        "ec2_endpoint": moto_endpoint,
        "provenance": provenance_vars(render.SourceImage(result["source_image"]["id"], result["source_image"]["name"]))})
    ok, output = packer.validate(out, runtime)
    assert ok, output


def test_no_credentials_is_one_line(state_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"HOME": str(tmp_path), "GOLDEN_AMI_STATE_DIR": str(state_dir),
                "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                "AWS_EC2_METADATA_DISABLED": "true"})
    proc = subprocess.run([str(Path(sys.executable).with_name("invoke")), "--search-root", str(Path(__file__).parents[2]),
                           "render", "--os=al2023", "--target=aws", f"--config={site_config_file(tmp_path)}"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "no AWS credentials" in proc.stderr


def test_a_wrong_endpoint_is_one_line(state_dir, tmp_path):
    proc = invoke_cmd("render", "--os=al2023", "--target=aws", f"--config={site_config_file(tmp_path)}",
                      env=_aws_env(state_dir, f"http://127.0.0.1:{free_port()}"), timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "cannot reach" in proc.stderr and "AWS_ENDPOINT_URL" in proc.stderr
