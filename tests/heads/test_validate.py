"""ph.heads.validate: a whole config is checked before anything runs, every problem at once."""
from __future__ import annotations

import copy
import resource

import subprocess
import sys

import pytest

from ph.config.components import MODELS, UserCode
from ph.config.schema import DEFAULT_CONFIG
from ph.errors import ConfigError
from ph.heads.validate import validate_config

USER_SOURCE = '''
import torch


class TinyNet(torch.nn.Module):
    def __init__(self, n_in=4, n_out=3):
        super().__init__()
        if n_out < 1:
            raise ValueError("n_out must be >= 1")
        self.fc = torch.nn.Linear(n_in, n_out)

    def forward(self, x):
        return torch.log_softmax(self.fc(x), dim=-1)
'''


def small(**model_args):
    return {"Model": {"type": "PersonalizedHead",
                      "args": {"embedding_length": 16, "n_classes": 4, "ph_ff_dim": 16,
                               "ph_nhead": 2, **model_args}}}


def custom_model(**args):
    return {"Model": {"type": "CustomModel",
                      "args": {"python_file": "user/tiny.py", "module_name": "TinyNet", **args}}}


def problems_of(config, code=None):
    with pytest.raises(ConfigError) as err:
        validate_config(config, code)
    return err.value.problems


def only_problem(config, code=None):
    problems = problems_of(config, code)
    assert len(problems) == 1, problems
    return problems[0]


# --- valid configs -----------------------------------------------------------------------

def test_validate_config_of_an_empty_config_returns_the_defaults():
    assert validate_config({}) == DEFAULT_CONFIG


def test_validate_config_returns_the_config_with_defaults_filled():
    config = small()
    config["Trainer"] = {"trainer": {"epochs": 3}}
    full = validate_config(config)
    assert full["Model"]["args"] == {**DEFAULT_CONFIG["Model"]["args"], **config["Model"]["args"]}
    assert full["Trainer"]["trainer"]["epochs"] == 3
    assert full["Trainer"]["optimizer"] == DEFAULT_CONFIG["Trainer"]["optimizer"]
    assert full["Inference"] == DEFAULT_CONFIG["Inference"]
    assert config["Trainer"] == {"trainer": {"epochs": 3}}  # the input is left alone


def test_validate_config_result_is_a_fresh_copy_every_time():
    first = validate_config(small())
    first["Model"]["args"]["n_classes"] = 999
    first["Trainer"]["metrics"].append("mse")
    second = validate_config(small())
    assert second["Model"]["args"]["n_classes"] == 4
    assert second["Trainer"]["metrics"] == ["accuracy", "top_k_acc"]


def test_validate_config_accepts_a_vector_to_vector_head():
    config = {"Model": {"type": "PHVector2Vector", "args": {"input_dim": 8, "output_dim": 3}},
              "Inference": {"preprocess": {"type": "V2VPreProcessor"},
                            "postprocess": {"type": "V2VPostProcessor"}},
              "Trainer": {"loss": "mse_loss", "metrics": ["mse", "mae"],
                          "trainer": {"monitor": "min val_mae"}}}
    full = validate_config(config)
    assert full["Model"] == config["Model"]  # a new type replaces the default args whole


def test_validate_config_accepts_monitor_off_and_no_scheduler():
    full = validate_config({"Trainer": {"lr_scheduler": None, "trainer": {"monitor": "off"}}})
    assert full["Trainer"]["lr_scheduler"] is None


@pytest.mark.slow  # a child process under a memory limit
def test_validate_config_does_not_allocate_the_model():
    # Built-in models are checked on the meta device: a 400M-parameter (1.6 GB) head costs
    # no memory. Measured in a fresh process (VmHWM: its own peak resident size).
    script = ("from ph.heads.validate import validate_config\n"
              "huge = {'Model': {'args': {'embedding_length': 8192, 'ph_ff_dim': 8192,"
              " 'ph_nhead': 8, 'n_classes': 10}}}\n"
              "assert validate_config(huge)['Model']['args']['embedding_length'] == 8192\n"
              "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    peak_mib = int(out.stdout.strip()) / 1024
    assert peak_mib < 1200, f"validating peaked at {peak_mib:.0f} MiB (the model alone is 1600)"


# --- every problem at once ---------------------------------------------------------------

def test_validate_config_reports_many_problems_in_one_error():
    config = {
        "Modle": {},
        "Model": {"args": {"n_clases": 3}},
        "Trainer": {"loss": "nll_los",
                    "metrics": ["accuracy", "acuracy"],
                    "optimizer": {"args": {"lr": -1}},
                    "trainer": {"epochs": 0, "monitor": "maximize accuracy"}},
    }
    with pytest.raises(ConfigError) as err:
        validate_config(config, source="head.yaml")
    problems = err.value.problems
    by_path = {p.split(":")[0]: p for p in problems}
    assert len(problems) == 7 and len(by_path) == 7, problems
    assert "did you mean 'Model'?" in by_path["Modle"]
    assert "must be a whole number >= 1, got 0" in by_path["Trainer.trainer.epochs"]
    assert "unknown loss 'nll_los' (did you mean 'nll_loss'?)" in by_path["Trainer.loss"]
    assert ("unknown metric 'acuracy' (did you mean 'accuracy'?); known: accuracy, mae, mse, "
            "top_k_acc") in by_path["Trainer.metrics[1]"]
    assert "Invalid learning rate: -1" in by_path["Trainer.optimizer"]
    assert "'min <metric>' or 'max <metric>'" in by_path["Trainer.trainer.monitor"]
    assert "PersonalizedHead does not take these arguments" in by_path["Model.args"]
    assert "(did you mean 'n_classes'?)" in by_path["Model.args"]
    message = str(err.value)
    assert message.startswith("Invalid config in head.yaml, 7 problems:")
    assert all(f"  - {p}" in message for p in problems)


def test_validate_config_reports_component_problems_of_every_section_together():
    config = {"Inference": {"preprocess": {"type": "NoSuchPre"}},
              "Trainer": {"dataloader": {"args": {"batch_size": 0}},
                          "lr_scheduler": {"type": "StepLR", "args": {"step": 5}}}}
    problems = problems_of(config)
    by_path = {p.split(":")[0]: p for p in problems}
    assert set(by_path) == {"Inference.preprocess.type", "Trainer.dataloader.args.batch_size",
                            "Trainer.lr_scheduler.args"}, problems
    assert "unknown pre-processor 'NoSuchPre'" in by_path["Inference.preprocess.type"]
    assert "StepLR does not take these arguments" in by_path["Trainer.lr_scheduler.args"]
    assert "did you mean 'step_size'?" in by_path["Trainer.lr_scheduler.args"]


def test_validate_config_invalid_config_fails_every_time():
    config = {"Trainer": {"loss": "nope"}}
    for _ in range(2):  # only valid configs are remembered
        assert "Trainer.loss" in only_problem(config)


# --- models ------------------------------------------------------------------------------

def test_validate_config_unknown_model_type_lists_known_types():
    problem = only_problem({"Model": {"type": "PersonalHead"}})
    assert problem.startswith("Model.type: unknown model 'PersonalHead'")
    assert "(did you mean 'PersonalizedHead'?)" in problem
    assert "known: " + ", ".join(MODELS.names()) in problem


def test_validate_config_wrong_constructor_argument_names_class_and_accepted_args():
    problem = only_problem(small(hidden=3))
    assert problem.startswith("Model.args: PersonalizedHead does not take these arguments")
    assert "'hidden'" in problem
    assert ("it accepts: embedding_length, n_classes, ph_ff_dim, ph_nhead, ph_nlayers, "
            "batch_first, dropout") in problem


def test_validate_config_reports_a_model_constructor_value_error():
    problem = only_problem(small(embedding_length=10, ph_nhead=4))
    assert problem.startswith("Model: building PersonalizedHead")
    assert "embedding_length (10) must be divisible by ph_nhead (4)" in problem


def test_validate_config_custom_model_from_user_code_validates():
    code = UserCode({"user/tiny.py": USER_SOURCE})
    full = validate_config(custom_model(n_out=5), code)
    assert full["Model"] == custom_model(n_out=5)["Model"]


def test_validate_config_custom_model_wrong_argument_names_the_user_class():
    code = UserCode({"user/tiny.py": USER_SOURCE})
    problem = only_problem(custom_model(n_outs=5), code)
    assert problem.startswith("Model.args: TinyNet does not take these arguments")
    assert "(did you mean 'n_out'?)" in problem
    assert problem.endswith("it accepts: n_in, n_out")


def test_validate_config_custom_model_constructor_error_is_reported():
    code = UserCode({"user/tiny.py": USER_SOURCE})
    problem = only_problem(custom_model(n_out=0), code)
    assert "Model: building TinyNet" in problem and "n_out must be >= 1" in problem


def test_validate_config_custom_model_without_its_source_is_reported():
    problem = only_problem(custom_model())
    assert problem.startswith("Model.args.python_file: 'user/tiny.py' has no source")


def test_validate_config_custom_model_missing_class_is_reported():
    code = UserCode({"user/tiny.py": USER_SOURCE})
    config = copy.deepcopy(custom_model())
    config["Model"]["args"]["module_name"] = "TinyNett"
    problem = only_problem(config, code)
    assert "has no class 'TinyNett' (did you mean 'TinyNet'?)" in problem


# --- monitor -----------------------------------------------------------------------------

def test_validate_config_monitor_of_a_metric_that_is_not_logged():
    problem = only_problem({"Trainer": {"metrics": ["accuracy"],
                                        "trainer": {"monitor": "max val_top_k_acc"}}})
    assert problem.startswith("Trainer.trainer.monitor: 'val_top_k_acc' is not a logged metric")
    assert "choose one of loss, accuracy, val_loss, val_accuracy, or 'off'" in problem


@pytest.mark.parametrize("monitor", ["min loss", "min val_loss", "max accuracy",
                                     "max val_top_k_acc"])
def test_validate_config_monitor_of_a_logged_metric_is_accepted(monitor):
    full = validate_config({"Trainer": {"trainer": {"monitor": monitor}}})
    assert full["Trainer"]["trainer"]["monitor"] == monitor


# --- malformed input ---------------------------------------------------------------------

@pytest.mark.parametrize("config", [None, [], "config.yaml", 3])
def test_validate_config_of_a_non_mapping_is_one_clear_error(config):
    with pytest.raises(ConfigError) as err:
        validate_config(config, source="x.yaml")
    assert len(err.value.problems) == 1
    assert "must be a mapping with sections Inference, Model, Trainer" in str(err.value)
    assert f"got {type(config).__name__}" in str(err.value)
    assert "in x.yaml" in str(err.value)


@pytest.mark.parametrize("config, path", [
    ({"Model": None}, "Model"),
    ({"Inference": None}, "Inference"),
    ({"Trainer": None}, "Trainer"),
    ({"Trainer": {"trainer": None}}, "Trainer.trainer"),
    ({"Trainer": {"optimizer": None}}, "Trainer.optimizer"),
    ({"Trainer": {"dataloader": "SnipsDataLoader"}}, "Trainer.dataloader"),
    ({"Trainer": {"metrics": None}}, "Trainer.metrics"),
    ({"Inference": {"postprocess": None}}, "Inference.postprocess"),
    ({"Model": {"args": [16]}}, "Model.args"),
])
def test_validate_config_broken_part_is_one_problem_not_a_crash(config, path):
    problem = only_problem(config)
    assert problem.split(":")[0] == path
    assert "must be" in problem


def test_unknown_optimizer_and_scheduler_names_list_what_torch_has():
    with pytest.raises(ConfigError) as err:
        validate_config({"Trainer": {"optimizer": {"type": "Adamw"}}})
    message = str(err.value)
    assert "unknown optimizer 'Adamw' (did you mean 'AdamW'?)" in message and "SGD" in message
    with pytest.raises(ConfigError) as err:
        validate_config({"Trainer": {"lr_scheduler": {"type": "StepLr", "args": {}}}})
    assert "unknown LR scheduler 'StepLr' (did you mean 'StepLR'?)" in str(err.value)
