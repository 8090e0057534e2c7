"""A test double of EC2: moto's API, with every instance a real QEMU VM.

moto answers the EC2 and SSM APIs but runs no machines, prints a fixed console text and does
not reflect some attributes. This harness runs moto's server in this process and completes
it where the pipeline needs a real machine behind the API:

  * run_instances boots a VM from the AMI's disk (an overlay), with a NoCloud seed that
    authorises the instance's key pair and carries its instance id; SSH is forwarded to
    127.0.0.1:<ssh_port>, and the instance's public IP reads 127.0.0.1;
  * stop_instances powers the VM off (ACPI), create_image captures its disk as the new
    AMI's disk, copy_image shares the disk, terminate_instances removes the VM;
  * get_console_output returns the VM's serial console (cloud-init's host-key block);
  * an instance metadata service answers at 169.254.169.254 inside the VM and, like EC2,
    refuses token-less requests when the instance was launched with HttpTokens=required;
  * ImdsSupport, EBS encryption and image deprecation (EnableImageDeprecation, which moto
    lacks) are remembered and shown, as EC2 does.

None of this is in the product: golden_ami talks to this exactly as it talks to AWS.
"""
from __future__ import annotations

import datetime as dt
import http.server
import json
import secrets
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from moto.core.responses import ActionResult
from moto.ec2.models.amis import Ami, AmiBackend
from moto.ec2.models.instances import Instance, InstanceBackend
from moto.ec2.responses.amis import AmisResponse
from moto.ec2.responses.general import General
from moto.ec2.utils import Base64EncodedString

from golden_ami.targets.local.seed import make_iso, write_seed_files

BRIDGE = Path(__file__).with_name("imds_bridge.py")


@dataclass
class Vm:
    instance_id: str
    process: subprocess.Popen
    overlay: Path
    serial: Path
    qmp: Path
    tokens_required: bool
    tokens: set[str] = field(default_factory=set)


class QemuEc2:
    def __init__(self, work: Path, ssh_port: int, login_user: str, cpus: int = 2, memory_mb: int = 1024):
        self.work = work
        self.ssh_port = ssh_port
        self.login_user = login_user
        self.cpus, self.memory_mb = cpus, memory_mb
        self.disks: dict[str, Path] = {}  # AMI id -> qcow2 disk
        self.vms: dict[str, Vm] = {}  # instance id -> running VM
        self.imds_support: dict[str, str] = {}
        self.encrypted_amis: set[str] = set()
        self.deprecations: dict[str, str] = {}  # image id -> DeprecationTime
        self.silence_console = False  # a test flips this to present a console that never shows the host keys
        self.lock = threading.Lock()
        self.imds_port = 0
        self._imds_server: Optional[http.server.ThreadingHTTPServer] = None
        work.mkdir(parents=True, exist_ok=True)

    # --- VMs ---------------------------------------------------------------------------
    def boot(self, instance: Instance) -> None:
        disk = self.disks.get(instance.image_id)
        if disk is None:
            return  # an AMI without a disk (moto's own): the instance stays API-only
        if any(vm.process.poll() is None for vm in self.vms.values()):
            raise RuntimeError("one VM at a time: the forwarded SSH port is shared")
        key = instance.ec2_backend.key_pairs[instance.key_name]
        public_key = key.material_public.decode() if isinstance(key.material_public, bytes) else key.material_public
        vm_dir = self.work / instance.id
        vm_dir.mkdir()
        overlay, serial, qmp = vm_dir / "disk.qcow2", vm_dir / "serial.log", vm_dir / "qmp.sock"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(disk), str(overlay)],
                       check=True)
        write_seed_files(vm_dir / "seed", instance.id, instance.id, self.login_user, public_key.strip())
        make_iso(vm_dir / "seed", vm_dir / "seed.iso")
        netdev = (f"user,id=n0,net=169.254.169.0/24,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22,"
                  f"guestfwd=tcp:169.254.169.254:80-cmd:{sys.executable} {BRIDGE} {self.imds_port}")
        argv = ["qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", str(self.cpus),
                "-m", str(self.memory_mb), "-nodefaults", "-display", "none", "-vga", "none",
                "-serial", f"file:{serial}", "-qmp", f"unix:{qmp},server=on,wait=off",
                "-drive", f"file={overlay},format=qcow2,if=virtio",
                "-drive", f"file={vm_dir / 'seed.iso'},format=raw,if=virtio,readonly=on",
                "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0"]
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=(vm_dir / "qemu.log").open("wb"), start_new_session=True)
        try:
            # QEMU that cannot start (a forwarded port taken meanwhile, a bad disk) ends within
            # a moment: refuse the launch then, as EC2 would, rather than leave an instance
            # whose console stays empty until the pipeline's console timeout.
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        else:
            raise RuntimeError(f"QEMU for {instance.id} exited at once (status {process.returncode}): "
                               + (vm_dir / "qemu.log").read_text(errors="replace").strip())
        required = instance.metadata_options.http_tokens == "required"
        self.vms[instance.id] = Vm(instance.id, process, overlay, serial, qmp, required)
        instance.nics[0].public_ip = "127.0.0.1"

    def power_off(self, instance_id: str, timeout: float = 180) -> None:
        vm = self.vms.get(instance_id)
        if vm is None or vm.process.poll() is not None:
            return
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(10)
                sock.connect(str(vm.qmp))
                sock.recv(4096)
                for command in ({"execute": "qmp_capabilities"}, {"execute": "system_powerdown"}):
                    sock.sendall(json.dumps(command).encode() + b"\n")
                    sock.recv(4096)
            vm.process.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            vm.process.kill()
            vm.process.wait()

    def destroy(self, instance_id: str) -> None:
        vm = self.vms.pop(instance_id, None)
        if vm is None:
            return
        if vm.process.poll() is None:
            vm.process.kill()
            vm.process.wait()
        vm.overlay.unlink(missing_ok=True)

    def capture(self, instance_id: str, ami_id: str) -> None:
        vm = self.vms.get(instance_id)
        if vm is None:
            return
        self.power_off(instance_id)
        disk = self.work / f"{ami_id}.qcow2"
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(vm.overlay), str(disk)], check=True)
        self.disks[ami_id] = disk

    def console(self, instance_id: str) -> str:
        vm = self.vms.get(instance_id)
        if vm is None or not vm.serial.exists():
            return ""
        text = vm.serial.read_text(errors="replace")
        if self.silence_console:
            # The boot goes on, but its console never shows the key block (as a console whose
            # buffer scrolled past it, or an image that does not print it).
            return "\n".join(line for line in text.splitlines() if "SSH HOST KEY" not in line
                             and not line.startswith(("ssh-", "ecdsa-")))
        return text

    def diagnostics(self, lines: int = 20) -> str:
        """How every VM of this harness ended: QEMU's own messages and the end of its serial
        console. A failed test prints this, so a CI log shows where a boot stopped."""
        parts = []
        for vm_dir in sorted(self.work.glob("i-*"), key=lambda d: d.stat().st_mtime):
            qemu_log, serial = vm_dir / "qemu.log", vm_dir / "serial.log"
            qemu = qemu_log.read_text(errors="replace").strip() if qemu_log.exists() else ""
            tail = serial.read_text(errors="replace").splitlines()[-lines:] if serial.exists() else []
            parts.append(f"--- {vm_dir.name}: QEMU said {qemu or 'nothing'!r}; its console ends with:\n"
                         + "\n".join(tail))
        return "\n".join(parts)

    def running(self) -> list[str]:
        return [i for i, vm in self.vms.items() if vm.process.poll() is None]

    def close(self) -> None:
        for instance_id in list(self.vms):
            self.destroy(instance_id)
        if self._imds_server:
            self._imds_server.shutdown()

    # --- the instance metadata service -------------------------------------------------------
    def start_imds(self) -> None:
        harness = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _vm(self) -> Optional[Vm]:
                live = [vm for vm in harness.vms.values() if vm.process.poll() is None]
                return live[0] if live else None

            def do_PUT(self):  # noqa: N802 - http.server's naming
                vm = self._vm()
                if vm is None or self.path != "/latest/api/token" or \
                        not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    self.send_response(400)
                    self.end_headers()
                    return
                token = secrets.token_urlsafe(24)
                vm.tokens.add(token)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(token.encode())

            def do_GET(self):  # noqa: N802
                vm = self._vm()
                token = self.headers.get("X-aws-ec2-metadata-token")
                if vm is None or (vm.tokens_required and token not in vm.tokens) or \
                        (token is not None and token not in vm.tokens):
                    self.send_response(401)
                    self.end_headers()
                    return
                body = {"/latest/meta-data/": "ami-id\ninstance-id\n",
                        "/latest/meta-data/instance-id": vm.instance_id}.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.end_headers()
                self.wfile.write((body or "").encode())

        self._imds_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.imds_port = self._imds_server.server_address[1]
        threading.Thread(target=self._imds_server.serve_forever, daemon=True).start()

    # --- moto, completed ---------------------------------------------------------------------
    def install(self, monkeypatch) -> None:
        harness = self
        run_instances = InstanceBackend.run_instances
        stop, terminate = Instance.stop, Instance.terminate
        create_image, copy_image = AmiBackend.create_image, AmiBackend.copy_image
        modify_attribute, copy_response = AmisResponse.modify_image_attribute, AmisResponse.copy_image
        mappings = Ami.block_device_mappings

        def patched_run_instances(self, *args, **kwargs):
            reservation = run_instances(self, *args, **kwargs)
            with harness.lock:
                for instance in reservation.instances:
                    harness.boot(instance)
            return reservation

        def patched_stop(self, *args, **kwargs):
            harness.power_off(self.id)
            return stop(self, *args, **kwargs)

        def patched_terminate(self, *args, **kwargs):
            harness.destroy(self.id)
            return terminate(self, *args, **kwargs)

        def patched_create_image(self, instance_id, *args, **kwargs):
            ami = create_image(self, instance_id, *args, **kwargs)
            harness.capture(instance_id, ami.id)
            return ami

        def patched_copy_image(self, source_image_id, *args, **kwargs):
            ami = copy_image(self, source_image_id, *args, **kwargs)
            if source_image_id in harness.disks:
                harness.disks[ami.id] = harness.disks[source_image_id]
            return ami

        def patched_copy_response(self):
            # CopyImage(Encrypted=true) makes an encrypted copy, as EC2 does (moto drops the flag).
            result = copy_response(self)
            if str(self._get_param("Encrypted")).lower() == "true":
                harness.encrypted_amis.add(result.result["ImageId"])
            return result

        def patched_modify_attribute(self):
            value = (self._get_param("ImdsSupport") or {}).get("Value")
            if value:
                harness.imds_support[self._get_param("ImageId")] = value
            return modify_attribute(self)

        def block_device_mappings(self):
            result = mappings.fget(self)
            for mapping in result:
                mapping["Ebs"]["Encrypted"] = self.id in harness.encrypted_amis
            return result

        def imds(self):
            return harness.imds_support.get(self.id)

        def enable_image_deprecation(self):
            # moto has no EnableImageDeprecation: keep the time, and show it as DescribeImages does.
            image_id = self._get_param("ImageId")
            self.ec2_backend.describe_images(ami_ids=[image_id])  # InvalidAMIID.NotFound as EC2 says it
            when = dt.datetime.fromisoformat(str(self._get_param("DeprecateAt")).replace("Z", "+00:00"))
            harness.deprecations[image_id] = when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            return ActionResult({"Return": True})

        def deprecation_time(self):
            return harness.deprecations.get(self.id)

        def get_console_output(self):
            instance_id = self._get_param("InstanceId")
            self.ec2_backend.get_instance(instance_id)
            return ActionResult({"InstanceId": instance_id, "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                 "Output": Base64EncodedString.from_raw_string(harness.console(instance_id))})

        monkeypatch.setattr(InstanceBackend, "run_instances", patched_run_instances)
        monkeypatch.setattr(Instance, "stop", patched_stop)
        monkeypatch.setattr(Instance, "terminate", patched_terminate)
        monkeypatch.setattr(AmiBackend, "create_image", patched_create_image)
        monkeypatch.setattr(AmiBackend, "copy_image", patched_copy_image)
        monkeypatch.setattr(AmisResponse, "copy_image", patched_copy_response)
        monkeypatch.setattr(AmisResponse, "modify_image_attribute", patched_modify_attribute)
        monkeypatch.setattr(Ami, "block_device_mappings", property(block_device_mappings))
        monkeypatch.setattr(Ami, "imds", property(imds), raising=False)
        monkeypatch.setattr(AmisResponse, "enable_image_deprecation", enable_image_deprecation, raising=False)
        monkeypatch.setattr(Ami, "deprecation_time", property(deprecation_time), raising=False)
        monkeypatch.setattr(General, "get_console_output", get_console_output)
