#!/usr/bin/env python3
"""Record a fact snapshot of a real VM as test data (how the files beside this one were made).

    .venv/bin/python tests/data/facts/capture.py --disk <state>/base/debian12/base.qcow2 \
        --os debian12 --out tests/data/facts/debian12-base.json

Boots the disk on a throw-away overlay (the local target's VM, host key pinned from its
console), gathers the facts the verify suite reads for the OS's controls of the default profile
(cis-level2-server) on the local target - the same collector, request and dynamic commands as a verify run - and
writes the snapshot. The collector never lets a secret out (password hashes are reduced to
their scheme, private keys are not read); the file is checked for private key material once
more before it is written.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import yaml
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "verify"))

import ga_facts  # noqa: E402
from ga_ssh import pinned_host  # noqa: E402

from golden_ami import catalogue, config, hostkeys, sshkeys  # noqa: E402
from golden_ami.procs import terminate_as_interrupt  # noqa: E402
from golden_ami.progress import Progress  # noqa: E402
from golden_ami.targets.base import Image  # noqa: E402
from golden_ami.targets.local.target import LocalTarget  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--disk", required=True, type=Path, help="a qcow2 disk to boot (never written: an overlay is)")
    parser.add_argument("--os", required=True, dest="os_name")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()

    cfg = config.resolve(args.os_name, "local")
    target = LocalTarget(cfg.settings, cfg.state_dir)
    image = Image(id="capture", tags={}, location=str(args.disk.resolve()))
    controls = [c.as_dict() for c in catalogue.controls_for(cfg).applicable]


    os_data = yaml.safe_load((ROOT / "os" / f"{args.os_name}.yaml").read_text())
    target_os = os_data["targets"]["local"]
    request = ga_facts.build_request(controls, os_data, target_os, {"walk", "secret_scan"})
    with tempfile.TemporaryDirectory(prefix="capture-facts-") as tmp:
        work = Path(tmp)
        key = sshkeys.generate(work / "key", "id_ed25519", "capture-facts")
        with target.boot_test_instance(cfg, image, key, work / "instance", Progress()) as instance:
            known_hosts = work / "known_hosts"
            keys = hostkeys.wait_for_console_host_keys(instance.console_text, instance.boot_timeout_seconds)
            hostkeys.write_known_hosts(known_hosts, instance.ssh_host, instance.ssh_port, keys)
            host = pinned_host(instance.login_user, instance.ssh_host, instance.ssh_port, str(key.private_key_path),
                               str(known_hosts))
            context = {"os": args.os_name, "target": "local", "login_user": instance.login_user, "image_id": "capture",
                       "instance_id": instance.instance_id, "login_public_key": key.public_key,
                       "pinned_host_keys": [f"{kind} {blob}" for kind, blob in keys]}
            updates = f"pending_updates:{os_data['package_manager']}"
            snapshot = ga_facts.take(host, request, context, prefetch=[updates], announce=print)
            snapshot.collected  # noqa: B018 - gathers now; raises with the collector's error if it failed
            snapshot.dynamic(updates)
            timings = snapshot.timings
    data = snapshot.dump().decode()
    if "PRIVATE KEY" in data:
        sys.exit("refusing to write: the snapshot contains private key material")
    args.out.write_text(data)
    print(f"wrote {args.out} ({len(data) // 1024} KiB); collector {snapshot.collected['seconds']} s, {timings}")


if __name__ == "__main__":
    # SIGTERM (a `timeout` around this script) tears the VM down as Ctrl-C does.
    with terminate_as_interrupt():
        main()
