#!/usr/bin/env python3
"""Print the pipeline's speed and size figures. Measures; never asserts.

    .venv/bin/python bench/figures.py            # render timings + recorded builds
    .venv/bin/python bench/figures.py --builds 0 # render timings only

Render timings are measured now (every OS x target, N rounds). Build figures come from the
build.json records that `invoke build` writes into each build directory of the state dir
(steps: render, packer_build, verify_and_approve), with image sizes from the store.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from golden_ami import config, render  # noqa: E402

SOURCES = {
    "local": render.SourceImage(id="sha256:" + "0" * 64, name="bench", location="/bench.qcow2",
                                checksum="sha256:" + "0" * 64),
    "aws": render.SourceImage(id="ami-0123456789abcdef0", name="bench", location="us-east-1"),
}


def render_figures(rounds: int) -> None:
    print(f"render (all {len(config.available_os()) * 2} OS x target combinations, {rounds} rounds)")
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(rounds):
            started = time.perf_counter()
            for os_name in config.available_os():
                for target in config.TARGETS:
                    render.render(config.resolve(os_name, target), SOURCES[target], Path(tmp) / f"{index}-{os_name}-{target}")
            samples.append(time.perf_counter() - started)
        sizes = [p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file()]
    per = statistics.median(samples) / (len(config.available_os()) * 2)
    print(f"  median {statistics.median(samples) * 1000:.0f} ms per round, {per * 1000:.1f} ms per build directory")
    print(f"  {len(sizes) // rounds} files, {sum(sizes) / rounds / 1024:.0f} KiB per round")


def build_figures(state_dir: Path, limit: int) -> None:
    records = []
    for path in sorted((state_dir / "builds").glob("*/build.json")):
        records.append(json.loads(path.read_text()))
    records = records[-limit:]
    print(f"\nrecorded builds in {state_dir} (newest {len(records)})")
    if not records:
        print("  none: run invoke build first")
    else:
        print(f"  {'build id':44} {'status':9} {'render':>7} {'packer':>8} {'verify':>8} {'total':>8} {'image':>9}")
        for r in records:
            s = r.get("seconds", {})
            size = f"{r['image_bytes'] / 2**20:.0f} MiB" if r.get("image_bytes") else "-"
            print(f"  {r['build_id']:44} {r.get('status', '?'):9} {s.get('render', 0):7.1f} "
                  f"{s.get('packer_build', 0):8.1f} {s.get('verify_and_approve', 0):8.1f} {s.get('total', 0):8.1f} {size:>9}")
    for meta in sorted((state_dir / "base").glob("*/base.json")):
        data = json.loads(meta.read_text())
        disk = meta.with_name("base.qcow2")
        print(f"  base image {data['os']}: {disk.stat().st_size / 2**20:.0f} MiB qcow2, kernel {data.get('kernel', '?')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="render rounds to time")
    parser.add_argument("--builds", type=int, default=10, help="how many recorded builds to show (0: none)")
    args = parser.parse_args()
    render_figures(args.rounds)
    if args.builds:
        build_figures(config.resolve(config.available_os()[0]).state_dir, args.builds)


if __name__ == "__main__":
    main()
