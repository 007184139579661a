"""The ph actions through the real Jaseci runtime (`actions load module ph`)."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import ph.api
from conftest import ROOT, small_config
from intent_data import as_label_lists, make_split
from jaseci_harness import JacCase, in_dir


class ActionsCase(JacCase):
    """Each test runs in a fresh folder holding the intent example's data."""

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp())
        self.old_cwd = in_dir(self.tmp)
        train, self.held_out = make_split(seed=0)
        (self.tmp / "train.json").write_text(json.dumps(as_label_lists(train)))
        config = small_config(epochs=6, save_period=1)
        config["Model"]["args"].update(embedding_length=256, ph_ff_dim=128)
        import yaml
        (self.tmp / "config.yaml").write_text(yaml.safe_dump(config))
        ph.api.setup(heads_dir=str(self.tmp / "heads"))
        super().setUp()

    def tearDown(self):
        super().tearDown()
        in_dir(self.old_cwd)
        ph.api._registry = None
        shutil.rmtree(self.tmp, ignore_errors=True)


class TestSeedProgram(ActionsCase):
    def test_seed_program_runs_as_written_and_twice(self):
        for _ in range(2):  # the second run finds the head and trains it further
            before, after = self.ok("seed_program", input_text="I want to order a pizza")
            assert isinstance(before, int) and isinstance(after, int)
        labels = ph.api.check_head("ph")["labels"]
        assert labels[after] == "order_food"
        assert ph.api.check_head("ph")["revision"] == 4  # two trainings, two load_weights

    def test_trained_head_predicts_the_intent_of_held_out_utterances(self):
        self.ok("seed_program", input_text="hello")
        texts = [r["text"] for r in self.held_out]
        predictions = self.ok("predict", uuid="ph", data=texts)[0]
        labels = ph.api.check_head("ph")["labels"]
        hits = sum(labels[p] == r["label"] for p, r in zip(predictions, self.held_out))
        assert hits / len(texts) >= 0.85


class TestDictForm(ActionsCase):
    def test_positional_dict_form_with_overrides_and_user_python(self):
        source = ("import torch\nclass Named:\n    labels = None\n"
                  "    def process(self, x):\n        return ['intent-%d' % i for i in x.argmax(1).tolist()]\n")
        config = small_config()
        config["Inference"] = {"postprocess": {"type": "CustomProcessor",
                                               "args": {"module_name": "Named"}}}
        summary, config_out, check = self.ok(
            "dict_form", config=config, python=source, uuid="u1",
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
        assert ph.api.get_config(uid)["Model"]["type"] == "PHClassifier"


class TestOtherActions(ActionsCase):
    def test_inspect_load_by_path_and_delete(self):
        self.ok("seed_program", input_text="hi")
        self.ok("create", uuid="twin", config=None)
        weights = "saved/models/PersonalizedHeadTrainer/ph/best_model.pt"
        result = self.ok("load_by_path", uuid="twin", path=weights)[0]
        assert result["revision"] == 1 and "order_food" in result["labels"]
        texts = [r["text"] for r in self.held_out[:10]]
        assert self.ok("predict", uuid="twin", data=texts) == self.ok("predict", uuid="ph", data=texts)
        heads, check, config = self.ok("inspect", uuid="twin")
        assert heads == ["ph", "twin"] and check["trained"] and config["Model"]["type"] == "PersonalizedHead"
        assert self.ok("delete", uuid="twin") == [True, ["ph"]]


class TestErrors(ActionsCase):
    def test_each_bad_call_gives_a_clear_error_and_the_next_call_works(self):
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
        assert isinstance(self.ok("predict", uuid="ph", data="hi")[0], int)
        assert self.ok("train", uuid="ph", overrides=None)[0]["updated"]
        assert ph.api.list_heads() == ["ph"]
