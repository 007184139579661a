"""End to end with a real Jaseci server: jsserv + `ph serve` on 127.0.0.1, driven by jsctl."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from helpers.json_stream import parse_json_stream
from helpers.paths import ROOT
from helpers.servers import BIN, jaseci_server, ph_server

pytestmark = pytest.mark.slow  # jsserv, ph serve and jsctl processes


def jsctl(session, *args, cwd):
    out = subprocess.run([str(BIN / "jsctl"), "-f", str(session), *args], cwd=cwd,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_walker_on_a_jaseci_server_creates_trains_and_queries_a_head_through_ph_serve(tmp_path):
    app = tmp_path / "app"
    shutil.copytree(ROOT / "jac_examples" / "intent_head", app,
                    ignore=shutil.ignore_patterns("heads", "saved", "js.session"))
    config = (app / "config.yaml").read_text().replace("epochs: 100", "epochs: 8")
    (app / "config.yaml").write_text(config.replace("save_period: 1", "save_period: 50"))
    (tmp_path / "db").mkdir()
    session = tmp_path / "js.session"
    with ph_server(app, "--allow-path", str(app)) as ph_url, \
            jaseci_server(tmp_path / "db") as (url, email, password):
        jsctl(session, "login", url, "--username", email, "--password", password, cwd=app)
        loaded = jsctl(session, "actions", "load", "remote", ph_url, cwd=app)
        assert json.loads(loaded[loaded.index("{"):])["success"]
        jsctl(session, "sentinel", "register", "main.jac", "-set_active", "true", cwd=app)
        out = jsctl(session, "walker", "run", "init", "-ctx",
                    json.dumps({"input_text": "I want to order a pizza"}), cwd=app)
        result = parse_json_stream(out)[-1]
        assert result["success"], result
        before, after, label = result["report"]
        assert isinstance(before, int) and label == "order_food"
        assert (app / "heads" / "ph" / "head.json").is_file()  # written by ph serve
        assert (app / "saved/models/PersonalizedHeadTrainer/ph/best_model.pt").is_file()
