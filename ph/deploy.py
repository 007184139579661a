"""Jaseci (JSORC) action config for ph: `jsorc actions config ph.deploy ph` registers it.

Module mode (`jsorc actions load ph module`) imports ph into the Jaseci server itself;
it reads the store from $PH_STORE like every ph process (unset: a heads folder on that
machine, $PH_HEADS_DIR).

Remote mode (`jsorc actions load ph remote`) has JSORC create, and on retiring delete,
the objects of k8s.yaml annotated `ph/jsorc: remote`: the Deployment `ph-serve` and the
Service `ph` (JSORC calls http://ph/, port 80). They need the rest of k8s.yaml applied
first (`kubectl apply -f ph/k8s.yaml`: the Secret `ph-secrets`, the ConfigMap
`ph-config`, Redis, the object store and the training workers), which JSORC never
creates or deletes, so retiring the service loses no heads. JSORC's own readiness check
and calls send no token, and ph serve requires one off its machine: load the actions
with `actions load remote http://jaseci:TOKEN@ph/` (see the README).

k8s.yaml holds one Kubernetes object per YAML document; JSORC wants {kind: object}, at
most one object per kind, which `jsorc_remote` builds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MANIFESTS = Path(__file__).with_name("k8s.yaml")
JSORC_ANNOTATION = "ph/jsorc"


def manifests(path: str | Path = MANIFESTS) -> list[dict[str, Any]]:
    """Every Kubernetes object in k8s.yaml, in file order."""
    return [doc for doc in yaml.safe_load_all(Path(path).read_text()) if doc]


def jsorc_remote(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """JSORC's "remote" config: {kind: object} of the objects annotated for JSORC."""
    remote: dict[str, dict[str, Any]] = {}
    for obj in objects:
        annotations = obj.get("metadata", {}).get("annotations") or {}
        if annotations.get(JSORC_ANNOTATION) != "remote":
            continue
        if obj["kind"] in remote:
            raise ValueError(f"k8s.yaml: JSORC takes one object per kind, and two {obj['kind']}s "
                             f"are annotated {JSORC_ANNOTATION}: remote")
        remote[obj["kind"]] = obj
    return remote


ACTION_CONFIGS = {
    "ph": {
        "module": "ph",
        "loaded_module": "ph.adapters.jaseci",
        "remote": jsorc_remote(manifests()),
        "local_mem_requirement": 1024,  # MB: torch plus a few default heads
    }
}
