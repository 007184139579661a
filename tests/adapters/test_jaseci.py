"""The ph actions through the real Jaseci runtime: loaded as a module (`actions load
module ph`) and, with the same walkers, from a live `ph serve` (`actions load remote`)."""
from __future__ import annotations

import json
import shutil
import time
import tempfile
from pathlib import Path

import pytest
import yaml

import ph.api
from helpers.heads import small_config
from helpers.intent_data import as_label_lists, make_split
from helpers.jaseci_harness import JacCase, in_dir
from helpers.servers import ph_server

pytestmark = pytest.mark.slow  # the Jaseci runtime, and ph serve for the remote actions

HELD_OUT = make_split(seed=0)[1]
DICT_SOURCE = ("class Named:\n    def process(self, x):\n"
               "        return ['intent-%d' % i for i in x.argmax(1).tolist()]\n")


def write_data(folder: Path) -> None:
    """The seed program's files: train.json and a config.yaml sized to train in seconds."""
    (folder / "train.json").write_text(json.dumps(as_label_lists(make_split(seed=0)[0])))
    config = small_config(epochs=6, save_period=1)
    config["Model"]["args"].update(embedding_length=256, ph_ff_dim=128)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))


class LocalCase(JacCase):
    """Each test runs in a fresh folder with `actions load module ph`."""

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp())
        self.old_cwd = in_dir(self.tmp)
        write_data(self.tmp)
        ph.api.setup(heads_dir=str(self.tmp / "heads"))
        super().setUp()

    def tearDown(self):
        super().tearDown()
        in_dir(self.old_cwd)
        ph.api._registry = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def check(self, uuid: str) -> dict:
        return self.ok("inspect", uuid=uuid)[1]


class ActionTests:
    """Walker-level tests that must pass the same way locally and remotely."""

    def test_seed_program_runs_as_written_and_twice(self):
        for _ in range(2):  # the second run finds the head and trains it further
            before, after = self.ok("seed_program", input_text="I want to order a pizza")
            assert isinstance(before, int) and isinstance(after, int)
        check = self.check("ph")
        assert check["labels"][after] == "order_food"
        assert check["revision"] == 4  # two trainings, two load_weights

    def test_trained_head_predicts_the_intent_of_held_out_utterances(self):
        self.ok("seed_program", input_text="hello")
        predictions = self.ok("predict", uuid="ph", data=[r["text"] for r in HELD_OUT])[0]
        labels = self.check("ph")["labels"]
        hits = sum(labels[p] == r["label"] for p, r in zip(predictions, HELD_OUT))
        assert hits / len(HELD_OUT) >= 0.85

    def test_positional_dict_form_with_overrides_and_user_python(self):
        config = small_config()
        config["Inference"] = {"postprocess": {"type": "CustomProcessor",
                                               "args": {"module_name": "Named"}}}
        summary, config_out, check = self.ok(
            "dict_form", config=config, python=DICT_SOURCE, uuid="u1",
            overrides={"Trainer": {"trainer": {"epochs": 2}}},
            train_overrides={"Trainer": {"optimizer": {"args": {"lr": 0.002}}}})
        assert summary["updated"] and summary["epochs_run"] == 2
        assert config_out["Trainer"]["trainer"]["epochs"] == 2
        assert config_out["Trainer"]["optimizer"]["args"]["lr"] == 0.001  # not persisted
        assert check["revision"] == 1 and check["trained"]
        assert self.ok("predict", uuid="u1", data="book a flight to Paris")[0].startswith("intent-")

    def test_aliases_build_the_same_heads(self):
        config = small_config()
        config["Model"]["type"] = "PHClassifier"
        config["Inference"] = {"preprocess": {"type": "SnipsPreProcessor"},
                               "postprocess": {"type": "SnipsPostProcessor", "args": {"to_list": True}}}
        uid = self.ok("create", uuid="alias", config=config)[0]
        batch = self.ok("predict", uuid=uid, data=["a", "b"])[0]
        assert isinstance(batch, list) and len(batch) == 2 and all(isinstance(p, int) for p in batch)
        assert self.ok("predict", uuid=uid, data="a")[0] == batch[0]
        assert self.ok("inspect", uuid=uid)[2]["Model"]["type"] == "PHClassifier"

    def test_inspect_load_by_path_and_delete(self):
        self.ok("seed_program", input_text="hi")
        self.ok("create", uuid="twin", config=None)
        weights = "saved/models/PersonalizedHeadTrainer/ph/best_model.pt"
        result = self.ok("load_by_path", uuid="twin", path=weights)[0]
        assert result["revision"] == 1 and "order_food" in result["labels"]
        texts = [r["text"] for r in HELD_OUT[:10]]
        assert self.ok("predict", uuid="twin", data=texts) == self.ok("predict", uuid="ph", data=texts)
        heads, check, config = self.ok("inspect", uuid="twin")
        assert heads == ["ph", "twin"] and check["trained"]
        assert config["Model"]["type"] == "PersonalizedHead"
        assert self.ok("delete", uuid="twin") == [True, ["ph"]]


    def test_many_heads_at_once_background_training_and_stats(self):
        self.ok("create_list", config_file="config.yaml")
        for uid in ("a", "b"):
            self.ok("create", uuid=uid, config=None)
        many = self.ok("many", requests=[["a", "hi"], ["b", ["x", "y"]], ["nobody", "hi"]])[0]
        assert many[0] == self.ok("predict", uuid="a", data="hi")[0]
        assert many[1] == self.ok("predict", uuid="b", data=["x", "y"])[0]
        assert many[2]["error"] == "not_found"
        job, stats = self.ok("background", uuid="a")
        assert job["state"] == "queued" and stats["heads_loaded"] >= 2
        deadline = time.time() + 120
        while (status := self.ok("status", job_id=job["job_id"])[0])["state"] in ("queued", "running"):
            assert time.time() < deadline, status
            time.sleep(0.2)
        assert status["state"] == "succeeded" and status["epoch"] == 6, status
        assert self.ok("stop", job_id=job["job_id"])[0]["state"] == "succeeded"  # nothing to stop
        assert self.check("a")["revision"] == 1

    def test_new_users_start_from_a_shared_head_and_train_their_own_in_the_background(self):
        self.ok("seed_program", input_text="hi")  # 'ph' is trained: the shared head
        texts = [r["text"] for r in HELD_OUT[:6]]
        shared = self.ok("predict", uuid="ph", data=texts)[0]
        check, first = self.ok("new_user", user="ann", shared="ph", input_text=texts[0])
        assert check["follows_parent"] == "ph" and not check["trained"]
        assert check["labels"] == self.check("ph")["labels"] and first == shared[0]
        self.ok("create_child", uuid="bob", parent="ph")
        many = self.ok("many", requests=[["ann", texts], ["bob", texts], ["ph", texts]])[0]
        assert many == [shared, shared, shared]
        job = self.ok("background", uuid="ann")[0]
        deadline = time.time() + 120
        while (status := self.ok("status", job_id=job["job_id"])[0])["state"] in ("queued", "running"):
            assert time.time() < deadline, status
            time.sleep(0.2)
        assert status["state"] == "succeeded", status
        ann = self.check("ann")
        assert ann["trained"] and ann["revision"] == 1 and ann["follows_parent"] is None
        assert self.check("bob")["follows_parent"] == "ph" and self.check("ph")["followers"] == 1
        assert self.ok("predict", uuid="bob", data=texts)[0] == shared


    def test_examples_added_listed_learnt_and_forgotten_through_walkers(self):
        self.ok("create_list", config_file="config.yaml")
        assert self.ok("user_head", uuid="ex") == ["ex"]  # no head yet: the walker creates it
        assert self.ok("user_head", uuid="ex") == ["found"]
        examples = [{"text": t, "label": r["label"]} for r in HELD_OUT[:: 15] for t in [r["text"]]]
        count, page = self.ok("add", uuid="ex", examples=examples)
        assert count == len(examples) == 6
        assert [e["id"] for e in page] == [2, 3] and page[0]["text"] == examples[1]["text"]
        summary, check = self.ok("learn", uuid="ex")
        assert summary["updated"] and summary["examples"]["new"] == 6
        assert check["examples"] == 6 and check["examples_seen"] == 6 and check["trained"]
        deleted, left = self.ok("forget", uuid="ex", ids=[1, 2])
        assert deleted["deleted"] == 2 and [e["id"] for e in left] == [3, 4, 5, 6]
        assert self.ok("forget", uuid="ex", ids=None) == [{"uuid": "ex", "deleted": 4,
                                                          "examples": 0}, []]


class TestLocalActions(ActionTests, LocalCase):
    def test_each_bad_call_fails_the_walker_with_a_clear_error_and_the_next_call_works(self):
        self.fails("predict", "no head with uuid 'ph'", uuid="ph", data="hi")  # before any head list
        self.ok("create_list", config_file="config.yaml")
        self.ok("create", uuid="ph", config=None)
        self.fails("predict", "no head with uuid 'nobody'", uuid="nobody", data="hi")
        for bad in ("../x", "", "x" * 300):
            self.fails("create", "is not valid", uuid=bad, config=None)
        self.fails("create", "already exists with a different config", uuid="ph",
                   config={"Model": {"args": {"n_classes": 3}}})
        self.fails("load_by_file", "not found", uuid="ph", weights_file="nope.pt")
        self.fails("train", "Trainer.trainer.epoch: unknown key (did you mean 'epochs'?)",
                   uuid="ph", overrides={"Trainer": {"trainer": {"epoch": 3}}})
        self.fails("predict", "vectors of 256 numbers", uuid="ph", data=[0.5, 0.5])
        self.fails("create_list", "not found", config_file="missing.yaml")
        self.fails("add", "examples record 1: 'input_ids' has 2 numbers", uuid="ph",
                   examples=[{"text": "hi", "label": "greet"}, {"input_ids": [0.5, 0.5], "label": "greet"}])
        assert ph.api.check_head("ph")["examples"] == 0
        assert isinstance(self.ok("predict", uuid="ph", data="hi")[0], int)
        assert self.ok("train", uuid="ph", overrides=None)[0]["updated"]
        assert ph.api.list_heads() == ["ph"]


class TestRemoteActions(ActionTests, JacCase):
    """The same walkers with the actions served by `ph serve` (paths and code allowed)."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp())
        write_data(cls.tmp)
        cls.server = ph_server(cls.tmp, "--allow-code", "--allow-path", str(cls.tmp))
        cls.remote_url = cls.server.__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.server.__exit__(None, None, None)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        super().setUp()
        heads = self.ok("inspect", uuid="-")[0]  # start each test with no heads
        for uuid in sorted(heads, key=lambda u: not self.check(u)["follows_parent"]):
            self.ok("delete", uuid=uuid)  # children first: a followed parent cannot go
        assert self.ok("inspect", uuid="-")[0] == []
        shutil.rmtree(self.tmp / "saved", ignore_errors=True)

    def check(self, uuid: str) -> dict:
        return self.ok("inspect", uuid=uuid)[1]

    def test_errors_come_back_as_values_with_the_clear_message(self):
        # Jaseci 1.4's remote client returns the response body whatever the status, so an
        # error arrives as {"error", "message"} instead of failing the walker.
        assert self.ok("create", uuid="fine", config=None) == ["fine"]
        cases = [("predict", "no head with uuid 'nobody'", dict(uuid="nobody", data="hi")),
                 ("create", "is not valid", dict(uuid="../x", config=None)),
                 ("load_by_file", "not found", dict(uuid="fine", weights_file="nope.pt")),
                 ("create_list", "outside the folders", dict(config_file="/etc/passwd"))]
        for walker, match, ctx in cases:
            value = self.ok(walker, **ctx)[0]
            assert value["error"] and match in value["message"], value
        assert isinstance(self.ok("predict", uuid="fine", data="hi")[0], int)


class TestRemoteTenants(JacCase):
    """Two tenants' apps reach one `ph serve --tokens-file` through Jaseci's remote
    client (the token in the URL, as `actions load remote http://jaseci:TOKEN@host`):
    each sees only its own heads, and another's head is one that does not exist."""

    TOKENS = {"acme": "acme-jaseci-token-0123", "globex": "globex-jaseci-token-0123"}

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp())
        write_data(cls.tmp)
        (cls.tmp / "tokens.yaml").write_text(yaml.safe_dump({"tenants": {
            name: {"token": token} for name, token in cls.TOKENS.items()}}))
        cls.server = ph_server(cls.tmp, "--tokens-file", "tokens.yaml", "--allow-path", str(cls.tmp))
        cls.base = cls.server.__enter__()
        cls.remote_url = cls.url_for("acme")

    @classmethod
    def url_for(cls, tenant: str) -> str:
        return cls.base.replace("http://", f"http://jaseci:{cls.TOKENS[tenant]}@")

    @classmethod
    def tearDownClass(cls):
        cls.server.__exit__(None, None, None)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_each_tenants_walkers_see_only_its_heads(self):
        from jaseci.jsorc.live_actions import load_remote_actions
        assert self.ok("create", uuid="user-1", config=None) == ["user-1"]
        assert isinstance(self.ok("predict", uuid="user-1", data="hi")[0], int)
        assert self.ok("inspect", uuid="user-1")[0] == ["user-1"]
        assert load_remote_actions(self.url_for("globex"))  # the other tenant's app
        heads, state = self.ok("inspect", uuid="user-1")[:2]
        assert heads == [] and state == {"uuid": "user-1", "exists": False}
        missing = self.ok("predict", uuid="user-1", data="hi")[0]
        assert missing["error"] == "not_found" and "no head with uuid 'user-1'" in missing["message"]
        assert self.ok("create", uuid="user-1", config=None) == ["user-1"]  # its own, same name
        assert self.ok("delete", uuid="user-1") == [True, []]
        assert load_remote_actions(self.url_for("acme"))
        assert self.ok("inspect", uuid="user-1")[0] == ["user-1"]  # acme's is still there
