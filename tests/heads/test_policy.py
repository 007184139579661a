"""PathPolicy: which files a caller may name."""
from __future__ import annotations

import os

import pytest

from ph.errors import BadInputError, PermissionDeniedError
from ph.heads.policy import PathPolicy, check_stored_path, merge_limits


def test_the_local_module_may_use_any_path_relative_to_the_working_folder(workdir):
    assert PathPolicy().resolve("data/x.json", "k") == workdir / "data" / "x.json"
    assert str(PathPolicy().resolve("/etc/hosts", "k")) == os.path.realpath("/etc/hosts")


def test_a_restricted_policy_allows_only_paths_inside_its_folders(workdir):
    (workdir / "ok").mkdir()
    policy = PathPolicy.restricted([workdir / "ok"])
    assert policy.resolve("ok/train.json", "k") == workdir / "ok" / "train.json"
    for outside in ("/etc/passwd", "ok/../secret", "other/x"):
        with pytest.raises(PermissionDeniedError, match="outside the folders"):
            policy.resolve(outside, "Trainer.dataloader.args.train_json")


def test_a_link_inside_an_allowed_folder_cannot_lead_outside(workdir):
    (workdir / "ok").mkdir()
    (workdir / "ok" / "escape").symlink_to("/etc")
    with pytest.raises(PermissionDeniedError):
        PathPolicy.restricted([workdir / "ok"]).resolve("ok/escape/passwd", "k")


def test_no_allowed_folders_means_no_files_and_says_how_to_allow(workdir):
    with pytest.raises(PermissionDeniedError, match="--allow-path") as err:
        PathPolicy.restricted([]).resolve("saved/", "Trainer.trainer.save_dir")
    assert "Trainer.trainer.save_dir" in str(err.value)


def test_unusable_path_strings_are_bad_input(workdir):
    with pytest.raises(BadInputError, match="not a usable path"):
        PathPolicy().resolve("a\0b", "weights_file")


def test_user_code_needs_permission():
    PathPolicy().check_code("python")
    with pytest.raises(PermissionDeniedError, match="--allow-code"):
        PathPolicy.restricted([], allow_code=False).check_code("python")


def test_a_stored_path_must_lie_inside_the_folders_of_every_restricted_caller_that_stored_it(
        workdir):
    a, b = workdir / "a", workdir / "a" / "b"
    limits = merge_limits(PathPolicy.restricted([a]).limits(), PathPolicy().limits(),
                          PathPolicy.restricted([b]).limits(), PathPolicy.restricted([a]).limits())
    assert limits == [[str(a)], [str(b)]]  # an unrestricted caller adds none; each caller once
    check_stored_path(b / "x.json", limits, "k")
    check_stored_path(workdir / "anywhere", [], "k")  # stored by unrestricted callers only
    with pytest.raises(PermissionDeniedError, match=f"k: '{a}/x.json' comes from a config that a "
                                                    f"restricted caller .* \\({b}\\)"):
        check_stored_path(a / "x.json", limits, "k")
