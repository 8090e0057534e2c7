"""Each OS's CIS benchmark, whole: every recommendation, and how the pipeline accounts for it.

`controls/benchmarks/<os>.yaml` lists every recommendation of the benchmark version the OS is
measured against (number, title, Server / Workstation level, automated or manual). Each one is
accounted in exactly one way:

    implemented      a catalogue control carries its number for this OS (the control's id on
                     al2023, `refs.<os>` elsewhere); it has a hardening block and a check
    not_applicable   by design, with the reason (a firewall the image does not use, a GUI item)
    manual           a review a person does, with the procedure
    gap              it applies and is automatable, and the pipeline does not do it yet

Coverage is counted against this whole list, never against a hand-picked subset, so it cannot
flatter: `invoke controls` prints the table, and tests/unit/test_benchmark_lists.py fails on any
recommendation that is not accounted and on any catalogue number that is not in the list.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import paths, yamlfiles
from .config import describe_validation_error
from .errors import UserError

BENCHMARKS_DIR = paths.CONTROLS_DIR / "benchmarks"
EXPLANATIONS = ("not_applicable", "manual", "gap")
# The order rows and columns of the coverage table come in.
STATES = ("implemented", "not_applicable", "manual", "gap", "outside_profile", "unaccounted")


class Recommendation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    number: str = Field(pattern=r"^[0-9]+(\.[0-9]+)*$")
    title: str = Field(min_length=1)
    server: Optional[Literal[1, 2]] = None  # its level in the Server profiles; None: not in them
    workstation: Optional[Literal[1, 2]] = None
    assessment: Literal["automated", "manual"]
    not_applicable: Optional[str] = Field(default=None, min_length=1)
    manual: Optional[str] = Field(default=None, min_length=1)
    gap: Optional[str] = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_explanation(self) -> "Recommendation":
        given = [name for name in EXPLANATIONS if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"{self.number}: give one of {', '.join(EXPLANATIONS)}, not {' and '.join(given)}")
        if self.manual is not None and self.assessment != "manual":
            raise ValueError(f"{self.number}: a manual procedure stands in only for a recommendation "
                             "the benchmark assesses manually; an automated one is implemented, "
                             "not applicable or a gap")
        return self

    @property
    def explanation(self) -> tuple[str, str]:
        """(state, text) of the entry's own accounting; ("", "") when it gives none."""
        for name in EXPLANATIONS:
            text = getattr(self, name)
            if text is not None:
                return name, text
        return "", ""


class BenchmarkName(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    version: str


class Benchmark(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    benchmark: BenchmarkName
    recommendations: list[Recommendation]

    def by_number(self) -> dict[str, Recommendation]:
        return {r.number: r for r in self.recommendations}

    @property
    def title(self) -> str:
        return f"{self.benchmark.name} {self.benchmark.version}"


def load(os_name: str) -> Benchmark:
    """The OS's benchmark list, validated once per version of its file (yamlfiles.derived, which
    tells a changed file as load_cached does): every render asks for it (levels), and the
    models are frozen, so one validation per process serves them all."""
    path = BENCHMARKS_DIR / f"{os_name}.yaml"
    if not path.is_file():
        raise UserError(f"no benchmark list for {os_name}: controls/benchmarks/{os_name}.yaml")
    return yamlfiles.derived(path, _validated)


def _validated(path: Path, document: Any) -> Benchmark:
    try:
        benchmark = Benchmark.model_validate(document)
    except ValidationError as exc:
        raise UserError(describe_validation_error(exc, f"controls/benchmarks/{path.name}")) from None
    counts = Counter(r.number for r in benchmark.recommendations)
    twice = sorted(n for n, count in counts.items() if count > 1)
    if twice:
        raise UserError(f"controls/benchmarks/{path.name}: listed twice: {', '.join(twice)}")
    return benchmark


def server_levels(os_name: str) -> dict[str, Optional[int]]:
    """Benchmark number -> its level in the Server profiles (None: not in them)."""
    return {r.number: r.server for r in load(os_name).recommendations}


def numbers_of(control_id: str, refs: dict[str, str], os_name: str) -> list[str]:
    """The benchmark numbers a catalogue control carries on os_name. The catalogue's ids are
    CIS Amazon Linux 2023 numbers (GA- ids are the pipeline's own); other OSes map through refs."""
    if os_name == "al2023":
        text = "" if control_id.startswith("GA-") else control_id
    else:
        text = refs.get(os_name, "")
    return [n.strip() for n in text.split(",") if n.strip()]


def carriers(specs: list[Any], os_name: str) -> dict[str, list[str]]:
    """Benchmark number -> the catalogue controls that carry it on os_name."""
    found: dict[str, list[str]] = {}
    for spec in specs:
        for number in numbers_of(spec.id, spec.refs, os_name):
            found.setdefault(number, []).append(spec.id)
    return found


def problems(benchmark: Benchmark, specs: list[Any], os_name: str) -> list[str]:
    """Why this list does not account for the benchmark, or disagrees with the catalogue."""
    carried = carriers(specs, os_name)
    listed = benchmark.by_number()
    found = []
    for rec in benchmark.recommendations:
        state, _ = rec.explanation
        if rec.number in carried and state:
            found.append(f"{rec.number}: carried by {', '.join(carried[rec.number])} yet marked {state}")
        elif rec.number not in carried and not state:
            found.append(f"{rec.number} ({rec.title}): unaccounted - no control carries it and it "
                         f"gives no {' / '.join(EXPLANATIONS)}")
    for number, ids in sorted(carried.items()):
        if number not in listed:
            found.append(f"{', '.join(ids)} carries {number}, which {benchmark.title} does not have")
    return found


def _level_key(rec: Recommendation) -> str:
    return f"L{rec.server}" if rec.server else "workstation only"


@dataclass(frozen=True)
class Row:
    """One recommendation as it stands for the controls in force."""

    number: str
    title: str
    level: str  # "L1", "L2" (Server) or "workstation only"
    assessment: str
    state: str  # one of STATES
    detail: str  # the controls, the reason or the procedure


def rows(benchmark: Benchmark, specs: list[Any], chosen: Any) -> list[Row]:
    """Each recommendation, judged against the controls in force (chosen: a ControlSet)."""
    carried = carriers(specs, chosen.os)
    in_force = chosen.by_id()
    result = []
    for rec in benchmark.recommendations:
        state, detail = rec.explanation
        ids = carried.get(rec.number, [])
        if ids:
            here = [in_force[i] for i in ids if i in in_force]
            applicable = [c.id for c in here if c.applicable]
            if applicable:
                state, detail = "implemented", ", ".join(applicable)
            elif here:
                state, detail = "not_applicable", "; ".join(f"{c.id}: {c.reason}" for c in here)
            else:
                state, detail = "outside_profile", f"{', '.join(ids)} not in profile {chosen.profile}"
        elif not state:
            state = "unaccounted"
        result.append(Row(rec.number, rec.title, _level_key(rec), rec.assessment, state, detail))
    return result


def coverage_table(table_rows: list[Row]) -> dict[str, dict[str, int]]:
    """{"L1 automated": {state: count, ..., "total": n}, ...} for the Server levels."""
    table: dict[str, dict[str, int]] = {}
    for level in ("L1", "L2"):
        for assessment in ("automated", "manual"):
            cell = {state: 0 for state in STATES}
            for row in table_rows:
                if row.level == level and row.assessment == assessment:
                    cell[row.state] += 1
            cell["total"] = sum(cell[s] for s in STATES)
            table[f"{level} {assessment}"] = cell
    return table


def format_table(os_name: str, benchmark_title: str, table: dict[str, dict[str, int]], proven: str) -> list[str]:
    """The coverage table as `invoke controls` prints it."""
    heads = ("implemented", "n/a", "manual", "gap", "not in profile", "unaccounted", "total")
    lines = [f"{os_name}: {benchmark_title}, recommendations of the Server profiles",
             f"  {'':14}" + "".join(f"{h:>15}" for h in heads)]
    for key, cell in table.items():
        lines.append(f"  {key:14}" + "".join(f"{cell[s]:>15}" for s in (*STATES, "total")))
    lines.append(f"  proven on a running system: {proven}")
    return lines
