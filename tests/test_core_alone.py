"""The core runs with only torch, torchvision and pyyaml: the GPU machines have no Jaseci,
fastapi or uvicorn. A child process where those cannot be imported trains and serves."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers.heads import small_config
from helpers.paths import ROOT

pytestmark = pytest.mark.slow  # a child process trains and serves

BLOCKED = ["jaseci", "jaseci_serv", "fastapi", "uvicorn", "starlette", "pydantic", "requests",
           "django", "tensorboard", "torch.utils.tensorboard"]

SCRIPT = f"""
import json, logging, sys
for name in {BLOCKED!r}:
    sys.modules[name] = None  # importing it now raises ImportError
logging.basicConfig(level=logging.WARNING)
import ph
config = json.loads(sys.argv[1])
config["Trainer"]["trainer"]["tensorboard"] = True  # missing: one warning, no failure
ph.setup(heads_dir="heads")
ph.create_head(uuid="alone", config=config)
summary = ph.train_head("alone")
print(json.dumps({{"updated": summary["updated"], "predict": ph.predict("alone", "order a pizza"),
                  "many": ph.predict_many([["alone", "order a pizza"]]),
                  "jaseci_loaded": "ph.adapters.jaseci" in sys.modules}}))
"""


def test_train_and_predict_without_jaseci_fastapi_uvicorn_or_tensorboard(workdir, train_json):
    out = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(small_config())], cwd=workdir,
                         capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["updated"] and isinstance(result["predict"], int)
    assert result["many"] == [result["predict"]]
    assert not result["jaseci_loaded"]
    assert out.stderr.count("tensorboard is not installed") == 1
