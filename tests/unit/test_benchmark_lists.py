"""Each OS's whole CIS benchmark is listed and every recommendation accounted (issue 12).

The lists are data compiled from public sources (their headers say which); these tests hold the
lists and the catalogue to each other, so that neither can drift without a red test: an entry
nobody accounts for, a catalogue number the benchmark does not have, a control marked both
implemented and not applicable.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest

from golden_ami import benchmarks, catalogue, config, paths
from golden_ami.catalogue import Control, ControlSet
from golden_ami.errors import UserError


def _systems() -> list[str]:
    return config.available_os()


@pytest.mark.parametrize("os_name", _systems())
def test_every_recommendation_is_accounted_and_every_catalogue_number_listed(os_name):
    bench = benchmarks.load(os_name)
    assert bench.recommendations, f"controls/benchmarks/{os_name}.yaml lists nothing"
    assert benchmarks.problems(bench, catalogue.load_catalogue(), os_name) == []


@pytest.mark.parametrize("os_name", _systems())
def test_the_list_is_the_whole_benchmark_not_a_subset(os_name):
    """Both levels, both assessments: a list of only what the pipeline does would flatter."""
    bench = benchmarks.load(os_name)
    levels = {r.server for r in bench.recommendations}
    assessments = {r.assessment for r in bench.recommendations}
    assert {1, 2} <= levels and assessments == {"automated", "manual"}
    assert len(bench.recommendations) > 150, "fewer recommendations than any of these benchmarks has"
    header = (benchmarks.BENCHMARKS_DIR / f"{os_name}.yaml").read_text().split("recommendations:")[0]
    assert re.search(r"20[0-9]{2}-[0-9]{2}-[0-9]{2}", header), "the header says when the list was compiled"
    assert "source" in header.lower(), "the header names its sources"


@dataclass
class _Spec:
    id: str
    refs: dict = field(default_factory=dict)


def _bench(*recs: dict) -> benchmarks.Benchmark:
    return benchmarks.Benchmark.model_validate({"benchmark": {"name": "CIS Test", "version": "v1"},
                                                 "recommendations": list(recs)})


def _rec(number: str, server=1, assessment="automated", **extra) -> dict:
    return {"number": number, "title": f"title {number}", "server": server, "workstation": None,
            "assessment": assessment, **extra}


def test_problems_name_the_unaccounted_the_contradicted_and_the_unknown_number():
    bench = _bench(_rec("1.1"), _rec("1.2", not_applicable="by design"), _rec("1.3"),
                   _rec("1.4", gap="not yet"))
    specs = [_Spec("X-1", {"debian12": "1.2"}), _Spec("X-2", {"debian12": "1.3, 9.9"})]
    found = benchmarks.problems(bench, specs, "debian12")
    assert found == ["1.1 (title 1.1): unaccounted - no control carries it and it gives no not_applicable / manual / gap",
                     "1.2: carried by X-1 yet marked not_applicable",
                     "X-2 carries 9.9, which CIS Test v1 does not have"]


def test_al2023_numbers_are_the_catalogue_ids():
    specs = [_Spec("1.2"), _Spec("GA-OWN-THING"), _Spec("1.3", {"debian12": "4.4"})]
    assert benchmarks.carriers(specs, "al2023") == {"1.2": ["1.2"], "1.3": ["1.3"]}
    assert benchmarks.carriers(specs, "debian12") == {"4.4": ["1.3"]}


@pytest.mark.parametrize("entry, says", [
    (_rec("1.1", not_applicable="a", gap="b"), "give one of"),
    (_rec("1.1", manual="look"), "manual procedure stands in only"),
    (_rec("1.1", server=3), "server"),
    (_rec("1.1", not_applicable=""), "not_applicable"),
    ({**_rec("1.1"), "level": 1}, "level"),
])
def test_a_malformed_entry_is_refused(entry, says):
    with pytest.raises(Exception, match=says):
        _bench(entry)


def test_a_number_listed_twice_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmarks, "BENCHMARKS_DIR", tmp_path)
    (tmp_path / "testos.yaml").write_text(
        'benchmark: {name: T, version: v1}\nrecommendations:\n'
        '  - {number: "1.1", title: a, server: 1, assessment: automated}\n'
        '  - {number: "1.1", title: b, server: 2, assessment: automated}\n')
    with pytest.raises(UserError, match="listed twice: 1.1"):
        benchmarks.load("testos")
    with pytest.raises(UserError, match="no benchmark list for nothere"):
        benchmarks.load("nothere")


def _control(control_id: str, applicable: bool = True, reason: str = "") -> Control:
    return Control(id=control_id, title="t", section="s", level=1, refs={}, remediation="51-x", params={},
                   applicable=applicable, reason=reason)


def test_rows_judge_each_recommendation_against_the_controls_in_force():
    bench = _bench(_rec("1.1"), _rec("1.2"), _rec("1.3", server=2), _rec("1.4", not_applicable="by design"),
                   _rec("1.5", assessment="manual", manual="look at it"), _rec("1.6", gap="later"), _rec("1.7"))
    specs = [_Spec("A", {"debian12": "1.1"}), _Spec("B", {"debian12": "1.2"}), _Spec("C", {"debian12": "1.3"})]
    chosen = ControlSet(os="debian12", target="local", profile="p",
                        controls=(_control("A"), _control("B", applicable=False, reason="no agent")))
    states = {row.number: (row.level, row.state, row.detail) for row in benchmarks.rows(bench, specs, chosen)}
    assert states == {
        "1.1": ("L1", "implemented", "A"),
        "1.2": ("L1", "not_applicable", "B: no agent"),
        "1.3": ("L2", "outside_profile", "C not in profile p"),
        "1.4": ("L1", "not_applicable", "by design"),
        "1.5": ("L1", "manual", "look at it"),
        "1.6": ("L1", "gap", "later"),
        "1.7": ("L1", "unaccounted", ""),
    }
    table = benchmarks.coverage_table(benchmarks.rows(bench, specs, chosen))
    assert table["L1 automated"] == {"implemented": 1, "not_applicable": 2, "manual": 0, "gap": 1,
                                     "outside_profile": 0, "unaccounted": 1, "total": 5}
    assert table["L1 manual"]["manual"] == 1 and table["L2 automated"]["outside_profile"] == 1


@pytest.mark.parametrize("os_name", _systems())
def test_the_coverage_table_counts_every_server_recommendation_once(os_name):
    cfg = config.resolve(os_name, "aws" if os_name == "al2023" else "local")
    chosen = catalogue.controls_for(cfg)
    covered = catalogue.coverage(chosen, cfg.os)
    bench = benchmarks.load(os_name)
    server = [r for r in bench.recommendations if r.server]
    assert sum(cell["total"] for cell in covered["table"].values()) == len(server)
    assert all(cell["unaccounted"] == 0 for cell in covered["table"].values())
    assert covered["benchmark"] == bench.title


def test_proven_on_a_running_system_only_where_the_e2e_tier_boots_that_os():
    e2e = "\n".join(p.read_text() for p in (paths.PROJECT_ROOT / "tests" / "e2e").glob("*.py"))
    booted = set(re.findall(r"--os=([a-z0-9]+)", e2e))
    claimed = {name for name in _systems() if config.load_os_data(name).proven_on_running_system}
    assert claimed == booted, "os/<os>.yaml proven_on_running_system must match the OSes tests/e2e builds"


@pytest.mark.parametrize("os_name", _systems())
def test_each_cis_profile_holds_exactly_the_levels_its_name_says(os_name):
    """cis-level1-server: every control that carries a Level 1 Server number of this OS's
    benchmark, none whose numbers are all Level 2, the GA- controls of level 1; cis-level2-server:
    every CIS control and all of baseline. (Not Level 1 all of baseline: baseline holds the
    auditd and nftables-rule-set controls, which the benchmarks rate Level 2.)"""
    levels = benchmarks.server_levels(os_name)
    specs = catalogue.load_catalogue()
    in_force = {}
    for profile in ("cis-level1-server", "cis-level2-server", "baseline"):
        cfg = config.resolve(os_name, "local", overrides={"profile": profile})
        in_force[profile] = {c.id for c in catalogue.controls_for(cfg).controls}
    for spec in specs:
        server = {levels.get(n) for n in benchmarks.numbers_of(spec.id, spec.refs, os_name)} - {None}
        if "cis" not in spec.profiles or not spec.enabled:
            assert spec.id not in in_force["cis-level2-server"]
            continue
        level1 = 1 in server if server else spec.level == 1
        assert (spec.id in in_force["cis-level1-server"]) == level1, (spec.id, server, spec.level)
        assert spec.id in in_force["cis-level2-server"], spec.id
    assert in_force["baseline"] <= in_force["cis-level2-server"]
