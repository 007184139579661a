"""The soak (bench/soak.py) run short: concurrent clients mixing every action against
`ph serve --workers 2` keep every invariant; `make soak` runs it for minutes."""
from __future__ import annotations

import json
import sys

import pytest

from helpers.paths import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import soak  # noqa: E402

pytestmark = pytest.mark.slow  # ph serve --workers 2 under mixed load

ACTIONS = {"create_head_list", "create_head", "predict", "predict_many", "train_head",
           "train_status", "stop_training", "load_weights", "get_config", "check_head",
           "list_heads", "delete_head", "head_stats", "add_examples", "list_examples",
           "delete_examples"}


def test_mixed_load_on_two_workers_keeps_every_invariant(tmp_path):
    report = soak.run(seconds=20, clients=4, work=tmp_path)
    assert report["ok"], json.dumps({k: report.get(k) for k in ("violations", "server_log_tail")},
                                    indent=1)
    assert report["calls"] >= 200 and report["heads_at_end"] >= 1
    assert {label.split("(")[0] for label in report["by_action"]} == ACTIONS
    assert any(kind.startswith("delete_head 409 conflict (a job)") for kind in report["refusals"])
    assert report["jobs"].get("succeeded", 0) >= 1


def test_the_revision_check_flags_only_a_decrease_seen_after_a_higher_answer():
    # (uuid, created, sent, received, revision)
    overlapping = [("a", 1, 0.0, 2.0, 2), ("a", 1, 1.0, 3.0, 1)]  # in flight together: no order
    assert soak.revision_violations(overlapping) == []
    recreated = [("a", 1, 0.0, 1.0, 3), ("a", 2, 2.0, 3.0, 0)]  # a new head under the same uuid
    assert soak.revision_violations(recreated) == []
    decreased = [("a", 1, 0.0, 1.0, 2), ("a", 1, 1.5, 2.0, 3), ("a", 1, 2.5, 3.0, 1)]
    assert soak.revision_violations(decreased) == ["head a: revision 1 seen after 3"]
