"""Bad input never weakens a control silently and never ends in a traceback.

Each case of tests/hostile/cases.yaml runs one `invoke` command in this process (fast: no
interpreter start-up per case) against a scratch state dir and asserts: the exit status, one
line on stderr naming what was wrong (the key, file or flag), no traceback, and a state dir
exactly as it was. The file's head says how to add a case.
"""
from __future__ import annotations

import contextlib
import io
import shlex
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).parent
CASES = yaml.safe_load((HERE / "cases.yaml").read_text(encoding="utf-8"))
CONFIG_RUN = "controls --os=debian12 --target=aws --config={dir}/golden-ami.yaml"
WAIVERS_RUN = "build --os=debian12 --target=aws --config={dir}/golden-ami.yaml"


def test_the_corpus_is_large_and_every_case_is_named_once():
    ids = [case["id"] for case in CASES]
    assert len(ids) >= 120 and len(set(ids)) == len(ids)


def _invoke(argv: list[str]) -> tuple[int, str, str, str]:
    """(exit status, stdout, stderr, the traceback if one escaped) of `invoke argv`."""
    from invoke import Collection, Program

    import tasks

    out, err = io.StringIO(), io.StringIO()
    program = Program(namespace=Collection.from_module(tasks), binary="invoke")
    code, escaped = 0, ""
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            program.run(["invoke", *argv], exit=True)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception as exc:  # noqa: BLE001 - what the case must never see
            import traceback

            code, escaped = -1, "".join(traceback.format_exception(exc))
    return code, out.getvalue(), err.getvalue(), escaped


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


def _seed_approved(state_dir: Path, tmp_path: Path) -> dict[str, str]:
    from golden_ami import config
    from golden_ami.targets.local.target import LocalTarget
    from tests.unit.test_attest import _approved

    cfg = config.resolve("debian12", "local")
    target = LocalTarget(cfg.settings, cfg.state_dir)
    image, build_dir = _approved(target, tmp_path, "hostile")
    return {"image": image.id, "store": str(target.store.root / image.id), "build": str(build_dir)}


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(case, state_dir, tmp_path, monkeypatch):
    for name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    work = tmp_path / "case"
    work.mkdir()
    names = {"dir": str(work)}
    if case.get("seed") == "approved":
        names.update(_seed_approved(state_dir, tmp_path))
    for name, text in case.get("files", {}).items():
        (work / name).write_text(text)
    run = case.get("run")
    if "waivers" in case:
        waivers = case["waivers"]
        (work / "waivers.yaml").write_bytes(waivers if isinstance(waivers, bytes) else waivers.encode())
        (work / "golden-ami.yaml").write_text(f"waivers_file: {work / 'waivers.yaml'}\n")
        run = run or WAIVERS_RUN
    if "config" in case:
        text = case["config"]
        (work / "golden-ami.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())
        run = run or CONFIG_RUN
    for path, text in case.get("tamper", {}).items():
        Path(path.format(**names)).write_text(text)

    before = _snapshot(state_dir)
    code, stdout, stderr, escaped = _invoke(shlex.split(run.format(**names)))
    assert not escaped, escaped
    assert "Traceback" not in stderr + stdout, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) <= case.get("lines", 1), stderr
    said = lines[-1] if lines else (stdout.strip().splitlines() or [""])[-1]
    assert code == case.get("exit", 1), f"exit {code}: {said}"
    for needle in case.get("says", []):
        assert str(needle) in said, f"{needle!r} not in: {said}"
    assert _snapshot(state_dir) == before, "the state dir changed"
