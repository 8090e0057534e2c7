"""The image's software bill of materials: the snapshot's package list as CycloneDX JSON.

Written by a live verify run beside its report (sbom.cdx.json) and sealed with it, so the SBOM
describes the very instance the verdicts were made on. One component per installed package,
named by its package URL (`os/<os>.yaml: sbom`); the image itself is the BOM's subject.
"""
from __future__ import annotations

import json
from typing import Any

from cyclonedx.model import Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

from ga_facts import Snapshot
from ga_system import package_list

SBOM_FILE = "sbom.cdx.json"


def document(facts: Snapshot, sbom_naming: dict[str, str], image: dict[str, str]) -> str:
    """CycloneDX 1.6 JSON. image: id, os, fingerprint, build_id (what the BOM is about).
    Raises FactUnavailable when the snapshot has no package list."""
    subject = Component(
        type=ComponentType.OPERATING_SYSTEM, name=f"golden-{image['os']}", version=image["id"], bom_ref=image["id"],
        properties=[Property(name=f"golden-ami:{key}", value=image[key]) for key in ("fingerprint", "build_id")
                    if image.get(key)])
    bom = Bom()
    bom.metadata.component = subject
    components: dict[str, Component] = {}
    for package in package_list(facts):
        qualifiers = {"distro": sbom_naming["distro"]}
        if package.arch:
            qualifiers["arch"] = package.arch
        purl = PackageURL(type=sbom_naming["purl_type"], namespace=sbom_naming["purl_namespace"], name=package.name,
                          version=package.version, qualifiers=qualifiers)
        ref = purl.to_string()
        # (A snapshot without architectures names a multi-arch package once.)
        components.setdefault(ref, Component(type=ComponentType.LIBRARY, name=package.name, version=package.version,
                                             purl=purl, bom_ref=ref))
    for component in components.values():
        bom.components.add(component)
    bom.register_dependency(subject, components.values())
    return JsonV1Dot6(bom).output_as_string(indent=2)


def summary(text: str) -> dict[str, Any]:
    data = json.loads(text)
    return {"format": f"CycloneDX {data['specVersion']}", "components": len(data.get("components", []))}
