"""`ph heads ...` from a shell on a store with no server: list (a tenant's by prefix),
check, revisions, rollback, export and delete; a missing head exits 1 with one line, a
bad flag or store URL exits 2 with one line."""
from __future__ import annotations

import json
import subprocess

import pytest
import torch

from helpers.heads import small_config, write_json
from helpers.intent_data import make_split
from helpers.servers import BIN
from ph.heads.service import HeadRegistry

TEXTS = ["order a pizza", "play some jazz"]


def ph(cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ph"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def heads(workdir):
    registry = HeadRegistry(workdir / "heads")
    train, _ = make_split(seed=2, per_intent=5)
    data = str(write_json(workdir / "train.json", train))
    for uuid in ("acme.a", "acme.b", "globex.a"):
        registry.create_head(uuid, small_config())
    for seed in (1, 2):
        registry.train("acme.a", {"Trainer": {"seed": seed, "dataloader": {
            "args": {"train_json": data}}}})
    return registry


def test_list_check_revisions_rollback_export_and_delete(heads, workdir):
    listed = ph(workdir, "heads", "list", "--heads-dir", "heads")
    assert listed.returncode == 0 and listed.stdout.split() == ["acme.a", "acme.b", "globex.a"]
    assert ph(workdir, "heads", "list", "--prefix", "acme.").stdout.split() == ["acme.a", "acme.b"]
    check = json.loads(ph(workdir, "heads", "check", "acme.a").stdout)
    assert check["exists"] and check["revision"] == 2
    revisions = json.loads(ph(workdir, "heads", "revisions", "acme.a").stdout)
    assert [r["revision"] for r in revisions] == [2, 1]
    first_answers = None
    rolled = json.loads(ph(workdir, "heads", "rollback", "acme.a", "1").stdout)
    assert rolled["revision"] == 3 and rolled["rolled_back_to"] == 1
    first_answers = HeadRegistry(workdir / "heads").predict("acme.a", TEXTS)
    assert first_answers is not None
    exported = ph(workdir, "heads", "export", "acme.a", "out.pt")
    assert exported.returncode == 0
    state = torch.load(workdir / "out.pt", weights_only=True)["state_dict"]
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    assert json.loads(ph(workdir, "heads", "delete", "acme.b").stdout) is True
    assert ph(workdir, "heads", "list").stdout.split() == ["acme.a", "globex.a"]


def test_a_missing_head_exits_1_and_a_bad_flag_exits_2_each_with_one_line(heads, workdir):
    missing = ph(workdir, "heads", "check", "nobody")
    assert missing.returncode == 0 and json.loads(missing.stdout)["exists"] is False
    gone = ph(workdir, "heads", "rollback", "acme.a", "9")
    assert gone.returncode == 1 and gone.stderr.count("\n") == 1
    assert "keeps no revision 9" in gone.stderr and "Traceback" not in gone.stderr
    for args, match in ((["heads", "rollback", "acme.a", "one"], "invalid int value"),
                        (["heads", "list", "--store", "foo://bar"], "unknown kind"),
                        (["heads", "dance"], "invalid choice")):
        done = ph(workdir, *args)
        assert done.returncode == 2 and match in done.stderr and "Traceback" not in done.stderr
