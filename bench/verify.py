#!/usr/bin/env python3
"""Print the verify run's figures on a real VM of an image. Measures; never asserts.

    .venv/bin/python bench/verify.py                       # the newest approved debian12 image
    .venv/bin/python bench/verify.py --image-id li-… --latency-ms 100

One fresh VM of the image (QEMU on an overlay, host key pinned from its console), then the real
verify suite against it: once in full, then three times without the pending-updates simulation
(1.8) - plain, through a loopback proxy adding --latency-ms of round-trip time, plain again -
and the suite offline on the saved snapshot. Printed: remote
commands and payload bytes per run, the collector's own time inside the guest, snapshot time,
check evaluation (checks per second), verify wall time without boot and pending-updates and
its ratio to the collector's time, and the latency run's ratio to the plain runs (their mean:
the guest's caches are warm after the first).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from golden_ami import config, hostkeys, sshkeys, verify_runner  # noqa: E402
from golden_ami.layout import KNOWN_HOSTS_FILE, REPORT_FILE, StateDir  # noqa: E402
from golden_ami.progress import Progress  # noqa: E402
from golden_ami.targets.local.target import LocalTarget  # noqa: E402
from latency_proxy import LatencyProxy  # noqa: E402


def _suite(argv: list[str], log: Path) -> float:
    started = time.monotonic()
    with log.open("w") as handle:
        subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, timeout=3600, check=False)
    return time.monotonic() - started


def _figures(name: str, wall: float, report: dict) -> dict:
    transport, evaluation = report.get("transport", {}), report.get("evaluation", {})
    dynamic = transport.get("dynamic_seconds", 0.0)
    # The collector's own run time inside the guest: the whole remote command as the guest ran
    # it (sudo, the shell, python's start-up, the gathering), from its login-session process.
    collector = transport.get("collector_command_seconds") or transport.get("collector_process_seconds") or 0.0
    verify_wall = wall - dynamic
    return {
        "run": name,
        "remote_commands": transport.get("remote_commands", 0),
        "bytes_sent": transport.get("bytes_sent", 0),
        "bytes_received": transport.get("bytes_received", 0),
        "connect_s": transport.get("connect_seconds", 0.0),
        "snapshot_s": transport.get("snapshot_seconds", 0.0),
        "gathering_s": transport.get("collector_seconds") or 0.0,
        "collector_s": collector,
        "dynamic_s": dynamic,
        "checks": evaluation.get("checks", 0),
        "loop_s": evaluation.get("seconds", 0.0),
        "phases_s": evaluation.get("check_phases_seconds", 0.0),
        "call_s": evaluation.get("call_seconds", 0.0),
        "suite_wall_s": wall,
        "verify_wall_s": verify_wall,
        "ratio_to_collector": verify_wall / collector if collector else float("nan"),
        "summary": report.get("summary", {}),
    }


def _rate(checks: int, seconds: float) -> float:
    return checks / seconds if seconds else float("nan")


def pytest_ceiling(work: Path, tests: int) -> float:
    """Tests per second pytest itself runs here on empty checks with one fixture (same flags as
    the verify suite): the ceiling of any pytest-driven loop on this machine, measured now."""
    suite = work / "ceiling"
    suite.mkdir()
    (suite / "test_empty.py").write_text(
        "import pytest\n\n\n@pytest.fixture\ndef value():\n    return 1\n\n\n"
        + "".join(f"def test_{i}(value):\n    assert value == 1, 'm'\n\n\n" for i in range(tests)))
    (suite / "conftest.py").write_text(
        "import time\nimport pytest\nSEEN = {}\n\n\n@pytest.hookimpl(hookwrapper=True)\n"
        "def pytest_runtestloop(session):\n    started = time.perf_counter()\n    yield\n"
        "    SEEN['loop'] = time.perf_counter() - started\n\n\n"
        "def pytest_unconfigure(config):\n    print('LOOP', SEEN.get('loop'))\n")
    out = subprocess.run([sys.executable, "-m", "pytest", str(suite), "-q", "-p", "no:cacheprovider", "--assert=plain",
                          "--rootdir", str(suite)], capture_output=True, text=True, timeout=600).stdout
    loop = float(next(line.split()[1] for line in out.splitlines() if line.startswith("LOOP")))
    return tests / loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--os", default="debian12", dest="os_name")
    parser.add_argument("--image-id", help="an image in the local store (default: the newest approved one)")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="added round-trip time for the latency run")
    parser.add_argument("--offline-rounds", type=int, default=5)
    args = parser.parse_args()

    cfg = config.resolve(args.os_name, "local")
    target = LocalTarget(cfg.settings, cfg.state_dir)
    if args.image_id:
        image = target.get_image(args.image_id)
    else:
        approved = sorted(target.list_images(args.os_name, "approved"), key=lambda i: i.tags.get("CreatedAt", ""))
        if not approved:
            sys.exit(f"no approved {args.os_name} image in {cfg.state_dir}: run invoke build first, or pass --image-id")
        image = approved[-1]
    controls_file = StateDir(cfg.state_dir).build(image.tags["BuildId"]).controls
    # The ratio runs leave out the pending-updates simulation (1.8), as the figures ask: it waits
    # on the package archive, not on the host; the "full" run keeps it (it overlaps the collector).
    document = json.loads(controls_file.read_text())
    without_updates = {**document, "controls": [c for c in document["controls"] if c["id"] != "1.8"]}
    print(f"verify figures for {image.id} ({args.os_name}, {image.tags.get('Profile', '?')}), "
          f"+{args.latency_ms:.0f} ms RTT for the latency run")

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        work = Path(tmp)
        static_controls = work / "controls-without-1.8.json"
        static_controls.write_text(json.dumps(without_updates))
        key = sshkeys.generate(work / "key", "id_ed25519", "bench-verify")
        progress = Progress(quiet=True)
        boot_started = time.monotonic()
        with target.boot_test_instance(cfg, image, key, work / "instance", progress) as instance:
            known_hosts = work / KNOWN_HOSTS_FILE
            keys = hostkeys.wait_for_console_host_keys(instance.console_text, instance.boot_timeout_seconds)
            hostkeys.write_known_hosts(known_hosts, instance.ssh_host, instance.ssh_port, keys)
            hostkeys.connect_pinned(instance.ssh_host, instance.ssh_port, instance.login_user, key.private_key_path,
                                    known_hosts, timeout_seconds=instance.boot_timeout_seconds).close()
            boot = time.monotonic() - boot_started

            def run(name: str, port: int, hosts_file: Path, controls: Path = static_controls) -> dict:
                out = work / name
                argv = verify_runner.suite_argv(
                    controls_file=controls, report=out / REPORT_FILE, image_id=image.id,
                    fingerprint=image.tags.get("Fingerprint", ""), host="127.0.0.1", port=port,
                    user=instance.login_user, identity=key.private_key_path, known_hosts=hosts_file,
                    instance_id=instance.instance_id, login_public_key=key.public_key, verbose=False)
                out.mkdir()
                wall = _suite(argv, out / "pytest.log")
                return _figures(name, wall, json.loads((out / REPORT_FILE).read_text()))

            full = run("full", instance.ssh_port, known_hosts, controls_file)
            rows.append(run("plain-1", instance.ssh_port, known_hosts))
            with LatencyProxy(("127.0.0.1", instance.ssh_port), args.latency_ms / 2000) as proxy:
                delayed_hosts = work / "known_hosts-proxy"
                hostkeys.write_known_hosts(delayed_hosts, "127.0.0.1", proxy.port, keys)
                rows.append(run("latency", proxy.port, delayed_hosts))
            rows.append(run("plain-2", instance.ssh_port, known_hosts))

        ceiling_rate = pytest_ceiling(work, 233)
        offline = []
        for index in range(args.offline_rounds):
            out = work / f"offline-{index}"
            out.mkdir()
            argv = verify_runner.suite_argv(controls_file=controls_file, report=out / REPORT_FILE,
                                            image_id=image.id, fingerprint=image.tags.get("Fingerprint", ""),
                                            facts=work / "plain-1" / "facts.json", verbose=False)
            wall = _suite(argv, out / "pytest.log")
            offline.append(_figures(f"offline-{index}", wall, json.loads((out / REPORT_FILE).read_text())))

    print(f"\nboot to pinned SSH: {boot:.1f} s (not part of the figures below)")
    print(f"full verify run (pending-updates simulation included, beside the collector): "
          f"{full['suite_wall_s']:.1f} s, {full['remote_commands']} remote commands, outcomes {full['summary']}\n")
    header = (f"  {'run':9} {'cmds':>4} {'sent':>7} {'received':>8} {'collector':>9} {'gathering':>9} {'snapshot':>8} "
              f"{'checks':>6} {'verify':>7} {'/collector':>10}")
    print(header)
    for r in rows:
        print(f"  {r['run']:9} {r['remote_commands']:4d} {r['bytes_sent']:7d} {r['bytes_received']:8d} "
              f"{r['collector_s']:8.1f}s {r['gathering_s']:8.1f}s {r['snapshot_s']:7.1f}s {r['checks']:6d} "
              f"{r['verify_wall_s']:6.1f}s {r['ratio_to_collector']:10.2f}")
    print("  (collector: the remote command's time inside the guest - sudo, shell, python start-up and gathering;"
          "\n   gathering: the collector's own timing of its work; snapshot: the same command seen from here)")
    plain = statistics.mean(r["verify_wall_s"] for r in rows if r["run"].startswith("plain"))
    delayed = next(r["verify_wall_s"] for r in rows if r["run"] == "latency")
    phases = statistics.median(_rate(r["checks"], r["phases_s"]) for r in offline)
    calls = statistics.median(_rate(r["checks"], r["call_s"]) for r in offline)
    loops = statistics.median(_rate(r["checks"], r["loop_s"]) for r in offline)
    print(f"\n  outcomes (plain-1, without 1.8): {rows[0]['summary']}")
    print(f"  remote commands per verify run: {max(r['remote_commands'] for r in [full, *rows])} "
          f"(full run: {full['remote_commands']})")
    print(f"  check evaluation after the snapshot (offline, median of {len(offline)} runs of {offline[0]['checks']} "
          f"checks):\n    {phases:.0f} checks/s - each check's setup, call and teardown as pytest times them "
          f"(fixtures parsing the snapshot included)\n    {calls:.0f} checks/s - the checks' bodies alone\n"
          f"    {loops:.0f} checks/s - pytest's whole loop, its reporting per check included; pytest's own ceiling "
          f"here (empty checks, same flags, this run): {ceiling_rate:.0f} tests/s -> the loop runs at "
          f"{loops / ceiling_rate:.0%} of it")
    ratios = ", ".join(f"{r['ratio_to_collector']:.2f}" for r in rows if r["run"].startswith("plain"))
    print(f"  verify wall time / collector time (plain runs): {ratios}")
    print(f"  +{args.latency_ms:.0f} ms RTT: {delayed:.1f} s vs {plain:.1f} s plain -> {delayed / plain:.2f}x")


if __name__ == "__main__":
    main()
