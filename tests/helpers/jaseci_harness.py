"""Run ph through the real Jaseci runtime: a CoreTest master with `ph` loaded the way
`actions load module ph` loads it (or remote actions from a live `ph serve`)."""
from __future__ import annotations

import os

from jaseci.jsorc.live_actions import live_actions, load_module_actions, load_remote_actions
from jaseci.utils.test_core import CoreTest

from helpers.paths import FIXTURES

ACTION_NAMES = {"ph.create_head_list", "ph.create_head", "ph.predict", "ph.predict_many", "ph.train_head",
                "ph.train_status", "ph.stop_training", "ph.load_weights", "ph.get_config", "ph.check_head",
                "ph.list_heads", "ph.delete_head", "ph.head_stats", "ph.add_examples",
                "ph.list_examples", "ph.delete_examples"}


class JacCase(CoreTest):
    """A CoreTest that registers a fixture JAC file and runs its walkers with a context."""

    jac_file = "ph_actions.jac"  # in tests/fixtures/
    remote_url: str | None = None  # set to run the same walkers against `ph serve`

    def setUp(self):
        super().setUp()
        if self.remote_url:
            assert load_remote_actions(self.remote_url)
        else:
            assert load_module_actions("ph")
        missing = ACTION_NAMES - set(live_actions)
        assert not missing, f"actions not loaded: {missing}"
        ret = self.call(self.mast, ["sentinel_register", {"code": self.load_jac(self.jac_file)}])
        assert isinstance(ret, list) and ret[0].get("j_type") == "sentinel", ret

    def load_jac(self, fn: str) -> str:
        return (FIXTURES / fn).read_text()

    def tearDown(self):
        # CoreTest's tearDown (TestCaseHelper) calls unittest internals that Python 3.11
        # removed (_feedErrorsToResult); do only what it does besides printing.
        self.logger_on()

    def walk(self, name: str, **ctx) -> dict:
        return self.call(self.mast, ["walker_run", {"name": name, "ctx": ctx}])

    def ok(self, name: str, **ctx) -> list:
        """Run a walker that must succeed; returns its reports."""
        ret = self.walk(name, **ctx)
        assert ret["success"], ret.get("errors")
        return ret.get("report", [])

    def fails(self, name: str, match: str, **ctx) -> str:
        """Run a walker that must fail with `match` in its errors; returns the error text."""
        ret = self.walk(name, **ctx)
        errors = " ".join(ret.get("errors", []))
        assert not ret["success"], ret
        assert match in errors, errors
        return errors


def in_dir(path):
    """Change the working folder (tests here are unittest-style, without monkeypatch)."""
    old = os.getcwd()
    os.chdir(path)
    return old
