"""Jaseci (JSORC) action config for ph: `jsorc actions config ph.deploy ph` registers it,
after which JSORC can run ph as a module or start the remote server in Kubernetes from
the objects in k8s.yaml (which needs a Secret `ph-actions` with key `token` and a
ReadWriteMany PersistentVolumeClaim `ph-heads` shared by the replicas)."""
from __future__ import annotations

from pathlib import Path

import yaml

ACTION_CONFIGS = {
    "ph": {
        "module": "ph",
        "loaded_module": "ph.actions",
        "remote": yaml.safe_load((Path(__file__).with_name("k8s.yaml")).read_text()),
        "local_mem_requirement": 1024,  # MB: torch plus a few default heads
    }
}
