"""The shipped JAC examples, run as a user runs them: `jsctl -m script run.jsctl` in the
example's folder (here a copy of it), with `actions load module ph`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.json_stream import parse_json_stream
from helpers.paths import FIXTURES, ROOT

pytestmark = pytest.mark.slow  # jsctl runs each shipped example

JSCTL = Path(sys.executable).with_name("jsctl")


def copy_example(name: str, dest: Path) -> Path:
    target = dest / name
    shutil.copytree(ROOT / "jac_examples" / name, target,
                    ignore=shutil.ignore_patterns("heads", "saved", "js.session"))
    return target


def jsctl_script(folder: Path, *commands: str) -> list[dict]:
    """Run jsctl commands in one in-memory session; returns each command's JSON output."""
    script = folder / "test.jsctl"
    script.write_text("\n".join(commands) + "\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PH_HEADS_DIR", None)
    out = subprocess.run([str(JSCTL), "-m", "script", str(script)], cwd=folder, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return parse_json_stream(out.stdout)


def run_example(folder: Path) -> dict:
    """The walker result of the example's own run.jsctl."""
    commands = (folder / "run.jsctl").read_text().splitlines()
    results = jsctl_script(folder, *commands)
    assert results[0] == {"success": True}, results[0]  # actions load module ph
    result = results[-1]
    assert result["success"], result.get("errors")
    return result


def test_intent_head_example_runs_as_written_and_a_new_process_finds_the_head(tmp_path):
    folder = copy_example("intent_head", tmp_path)
    before, after, label = run_example(folder)["report"]
    assert isinstance(before, int) and isinstance(after, int)
    assert label == "order_food"
    assert (folder / "saved/models/PersonalizedHeadTrainer/ph/best_model.pt").is_file()
    # a new jsctl process, no create_head: the head is found and answers the same
    ctx = json.dumps({"uuid": "ph", "input_text": "I want to order a pizza"})
    result = jsctl_script(folder, "actions load module ph",
                          f"jac run {FIXTURES / 'predict_only.jac'} -ctx '{ctx}'")[-1]
    assert result["success"], result.get("errors")
    assert result["report"] == [["ph"], after]


def test_custom_model_example_trains_user_code_and_reads_the_digit_image(tmp_path):
    folder = copy_example("custom_model", tmp_path)
    assert run_example(folder)["report"] == [[7]]
    # and it learned digits: images it never saw (another seed) are mostly right
    subprocess.run([sys.executable, "make_data.py", "unseen", "3", "123"], cwd=folder, check=True)
    from ph.heads.service import HeadRegistry
    images = sorted((folder / "unseen").glob("*/*.png"))
    predictions = HeadRegistry(folder / "heads").predict("mnist", [str(p) for p in images])
    right = sum(p == int(image.parent.name) for p, image in zip(predictions, images))
    assert right / len(images) >= 0.8, f"{right} of {len(images)} unseen digits right"
    (folder / "user_input.py").unlink()  # the head keeps the code it was created with
    ctx = json.dumps({"uuid": "mnist", "input_text": "digit7.png"})
    result = jsctl_script(folder, "actions load module ph",
                          f"jac run {FIXTURES / 'predict_only.jac'} -ctx '{ctx}'")[-1]
    assert result["success"], result.get("errors")
    assert result["report"] == [["mnist"], [7]]


@pytest.mark.parametrize("runs", [2])
def test_dict_api_example_runs_and_runs_again(tmp_path, runs):
    folder = copy_example("dict_api", tmp_path)
    for revision in range(1, runs + 1):
        trained, prediction, epochs, rev = run_example(folder)["report"]
        assert trained is True and epochs == 20 and rev == revision
        assert prediction["intent"] == "get_weather" and 0.5 < prediction["confidence"] <= 1.0


def test_feedback_loop_example_learns_a_users_correction_and_new_users_start_shared(tmp_path):
    folder = copy_example("feedback_loop", tmp_path)
    results = jsctl_script(folder, *(folder / "run.jsctl").read_text().splitlines())
    assert all(r["success"] for r in results), [r.get("errors") for r in results]
    labels, first, corrected, after, bob, weather = [r["report"][0] for r in results[1:]]
    assert "play_music" in labels and "get_weather" in labels
    assert first["follows"] == "shared"  # a new user answers with the shared head
    assert corrected == {"user": "alice", "examples": 1, "training": "succeeded"}
    assert after == {"user": "alice", "text": "spin my chill vibes", "answer": "play_music",
                     "follows": None}  # alice's own head now, with her correction learnt
    assert bob["follows"] == "shared" and bob["answer"] == first["answer"]  # bob is unchanged
    assert weather["answer"] == "get_weather"  # and alice's head kept the rest


def test_user_addins_example_users_learn_as_addins_and_are_pinned_to_the_shared_revision(tmp_path):
    folder = copy_example("user_addins", tmp_path)
    results = jsctl_script(folder, *(folder / "run.jsctl").read_text().splitlines())
    assert results[0] == {"success": True}, results[0]  # actions load module ph
    assert all(r["success"] for r in results[1:]), [r.get("errors") for r in results[1:]]
    (shared,), personalize, (behind, rebased) = [r["report"] for r in results[1:]]
    assert shared["revision"] == 1 and "add_to_list" not in shared["labels"]
    probes = personalize[0]["probes"]
    taught = {r["user"]: r for r in personalize[1:3]}
    answers = {r["head"]: r for r in personalize[3:6]}
    sizes = personalize[6]
    alice_own = [i for i, p in enumerate(probes) if "buy" in p]    # alice: add_to_list
    bob_own = [i for i, p in enumerate(probes) if "with some" in p]  # bob: play_music
    untouched = [i for i in range(len(probes)) if i not in alice_own + bob_own]
    assert len(alice_own) == len(bob_own) == len(untouched) == 2
    assert taught["alice"]["revision"] == taught["bob"]["revision"] == 1
    assert taught["alice"]["new"] == 8 and taught["bob"]["new"] == 5
    shared_answers = answers["shared"]["before"]
    # the shared head is not trained here; an untrained add-in answers as the shared head
    assert answers["shared"]["after"] == shared_answers and answers["shared"]["unchanged"]
    assert answers["alice"]["before"] == answers["bob"]["before"] == shared_answers
    alice, bob = answers["alice"]["after"], answers["bob"]["after"]
    assert [alice[i] for i in alice_own] == ["add_to_list"] * 2  # a label the shared head lacks
    assert [bob[i] for i in bob_own] == ["play_music"] * 2       # bob's correction, and its kin
    assert all(shared_answers[i] != "play_music" for i in bob_own)  # it was a correction
    # alice keeps every other answer (bob's probes included), bob the ones nobody taught
    assert all(alice[i] == shared_answers[i] for i in bob_own + untouched)
    assert all(bob[i] == shared_answers[i] for i in untouched)
    assert all(bob[i] != "add_to_list" for i in alice_own)  # alice's label is hers alone
    for user in ("alice", "bob"):
        assert sizes["addin_bytes"][user] / sizes["full_head_bytes"] < 0.02
    # pinned: the shared head trains again, the add-ins are behind until rebased
    assert behind == {"shared_revision": 2, "alice_parent_revision": 1, "behind_parent": True}
    assert sorted(rebased["rebased"]) == ["alice", "bob"]
    assert rebased["alice_parent_revision"] == 2 and rebased["behind_parent"] is False
    assert rebased["answers"] == {
        "alice": {"asked": "remind me to buy milk", "answer": "add_to_list"},
        "bob": {"asked": "wake me up with some Coldplay", "answer": "play_music"}}
