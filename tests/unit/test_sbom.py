"""The SBOM (verify/ga_sbom.py): the snapshot's packages as CycloneDX JSON that the schema accepts."""
from __future__ import annotations

import json
import sys

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from golden_ami import config, paths

sys.path.insert(0, str(paths.VERIFY_DIR))

import ga_facts  # noqa: E402
import ga_sbom  # noqa: E402
import ga_system  # noqa: E402

FACTS = paths.PROJECT_ROOT / "tests" / "data" / "facts"
IMAGE = {"id": "li-0123456789abcdef0", "os": "debian12", "fingerprint": "sha256:" + "f" * 64, "build_id": "b-1"}


def _naming(os_name: str) -> dict[str, str]:
    return config.resolve(os_name, "local").os.sbom.model_dump()


@pytest.mark.parametrize("snapshot, os_name, purl_prefix, distro", [
    ("debian12-hardened.json", "debian12", "pkg:deb/debian/", "debian-12"),   # recorded on a real VM
    ("al2023-synthetic.json", "al2023", "pkg:rpm/amazon/", "amzn-2023"),      # hand-written
])
def test_every_installed_package_is_one_component_and_the_schema_accepts_the_document(snapshot, os_name, purl_prefix,
                                                                                     distro):
    facts = ga_facts.Snapshot.load(FACTS / snapshot)
    text = ga_sbom.document(facts, _naming(os_name), {**IMAGE, "os": os_name})
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    data = json.loads(text)
    # Every installed package once - two installed kernels (rpm) are two components.
    installed = {(p.name, p.version) for p in ga_system.package_list(facts)}
    assert sorted((c["name"], c["version"]) for c in data["components"]) == sorted(installed)
    assert all(c["purl"].startswith(purl_prefix) and f"distro={distro}" in c["purl"] for c in data["components"])
    subject = data["metadata"]["component"]
    assert subject["type"] == "operating-system" and subject["version"] == IMAGE["id"]
    assert {"name": "golden-ami:fingerprint", "value": IMAGE["fingerprint"]} in subject["properties"]
    assert ga_sbom.summary(text) == {"format": "CycloneDX 1.6", "components": len(installed)}


def test_the_architecture_the_collector_records_goes_into_the_package_url():
    facts = ga_facts.Snapshot.load(FACTS / "debian12-hardened.json")
    data = json.loads(ga_sbom.document(facts, _naming("debian12"), IMAGE))
    libc = next(c for c in data["components"] if c["name"] == "libc6")
    assert libc["purl"] == f"pkg:deb/debian/libc6@{libc['version'].replace('+', '%2B')}?arch=amd64&distro=debian-12"
    # A list recorded before the collector asked for the architecture (three fields) still reads
    # the same for the checks.
    older = ga_facts.Snapshot.load(FACTS / "debian12-hardened.json")
    result = older.data["collected"]["commands"]["packages"]
    result["stdout"] = "".join(line.rsplit("\t", 1)[0] + "\n" for line in result["stdout"].splitlines())
    assert ga_system.packages(older) == ga_system.packages(facts)


def test_no_package_list_no_sbom():
    facts = ga_facts.Snapshot.load(FACTS / "debian12-hardened.json")
    facts.data["collected"]["commands"]["packages"].update(rc=2, stdout="", stderr="dpkg-query: error")
    with pytest.raises(ga_facts.FactUnavailable):
        ga_sbom.document(facts, _naming("debian12"), IMAGE)
