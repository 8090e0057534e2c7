"""Running the real verify suite offline against fact snapshots, for the unit tier.

`judge` runs it once, in a subprocess of its own, exactly as a build would (`suite_argv`).
`judge_many` runs many snapshots: each its own pytest session (own snapshot, controls.json and
report), several sessions per worker process, workers in parallel - the suite keeps no state
between sessions (callers prove it by judging an untouched snapshot last in every worker).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from golden_ami import catalogue, config, verify_runner

FACTS = Path(__file__).resolve().parents[1] / "data" / "facts"

_DRIVER = "import gc, json, sys\nimport pytest\nfor argv in json.load(open(sys.argv[1])):\n    pytest.main(argv)\n    gc.freeze()\n"


def controls_document(os_name: str, target: str = "local", **settings) -> dict:
    """The controls in force for os_name/target with the default profile, or the settings given
    (disk_layout="cis"); config resolution needs a state dir: the caller's environment names one."""
    return catalogue.controls_for(config.resolve(os_name, target, overrides=settings or None)).as_dict()


def _prepare(work: Path, name: str, snapshot: Path | dict, document: dict) -> tuple[list[str], Path]:
    directory = work / name.replace(":", "-").replace("/", "-")
    directory.mkdir(parents=True)
    if isinstance(snapshot, dict):
        (directory / "facts.json").write_text(json.dumps(snapshot))
        snapshot = directory / "facts.json"
    (directory / "controls.json").write_text(json.dumps(document))
    report = directory / "report.json"
    argv = verify_runner.suite_argv(controls_file=directory / "controls.json", report=report, image_id="offline",
                                    fingerprint="none", facts=snapshot, verbose=False)
    return argv, report


def _rows(report: Path, log: Path) -> dict[str, dict]:
    assert report.is_file(), f"no report {report}: {log.read_text(errors='replace')[-3000:]}"
    return {row["id"]: row for row in json.loads(report.read_text())["controls"]}


def judge(work: Path, snapshot: Path | dict, document: dict, name: str = "run",
          options: tuple[str, ...] = ()) -> dict[str, dict]:
    """The report's rows by control id, from one suite run in a subprocess (options: more
    suite options, e.g. --ga-mode=audit)."""
    argv, report = _prepare(work, name, snapshot, document)
    argv += list(options)
    log = report.with_name("pytest.log")
    with log.open("w") as out:
        subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=600, check=False)
    return _rows(report, log)


def judge_many(work: Path, runs: dict[str, tuple[Path | dict, dict]]) -> dict[str, dict[str, dict]]:
    """name -> rows for every (snapshot, controls document) in runs."""
    workers = max(1, min(4, os.cpu_count() or 1))
    sessions: list[list[list[str]]] = [[] for _ in range(workers)]
    reports = {}
    for index, (name, (snapshot, document)) in enumerate(runs.items()):
        argv, report = _prepare(work, name, snapshot, document)
        assert argv[1:3] == ["-m", "pytest"], argv[:3]
        sessions[index % workers].append(argv[3:])
        reports[name] = (report, work / f"worker-{index % workers}.log")
    processes = []
    for worker, argvs in enumerate(sessions):
        if not argvs:
            continue
        (work / f"worker-{worker}.json").write_text(json.dumps(argvs))
        with (work / f"worker-{worker}.log").open("w") as out:
            processes.append((subprocess.Popen([sys.executable, "-c", _DRIVER, str(work / f"worker-{worker}.json")],
                                               stdout=out, stderr=subprocess.STDOUT), work / f"worker-{worker}.log"))
    for process, log in processes:
        try:
            process.wait(timeout=900)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError(f"the verify suite did not finish within 900 s: {log}") from None
    return {name: _rows(*where) for name, where in reports.items()}
