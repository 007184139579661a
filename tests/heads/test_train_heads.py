"""Many add-ins trained together (train_heads, rebase_addins): one result per head, in the
foreground or as one background job that reports and stops each head on its own; one
head's failure, stop or kill leaves every other head's run and every head's weights as
they would be without it."""
from __future__ import annotations

import os
import signal

import pytest

from helpers.heads import small_config, wait_job
from ph.errors import BadInputError, ConflictError

pytestmark = pytest.mark.slow  # background jobs run in processes of their own

TEXTS = ["book a table for two", "will it rain in Lima", "play some Bach"]


def user_examples(i: int) -> list[dict]:
    return [{"text": f"book a table for {i + k} people tonight", "label": "book_restaurant"}
            for k in range(4)]


def family(ph, users: dict[str, int]) -> None:
    """A trained shared head and add-in users (name -> epochs), each with examples."""
    ph.create_head(uuid="shared", config=small_config(epochs=2))
    ph.train_head(uuid="shared")
    for i, (uid, epochs) in enumerate(users.items()):
        ph.create_head(uuid=uid, parent="shared", addin="lora",
                       config={"Trainer": {"trainer": {"epochs": epochs}}})
        ph.add_examples(uuid=uid, examples=user_examples(i))


def weights(registry, uid: str):
    record = registry.store.read(uid)
    return record.get("weights"), record["revision"]


def wait_running(ph, job_id: str, uid: str) -> dict:
    return wait_job(lambda j: {**ph.train_status(j), "state": "ready" if
                               ph.train_status(j)["heads"][uid]["epoch"] >= 1 else "waiting"},
                    job_id, ("ready",))


def test_train_heads_gives_each_head_its_result_and_its_error_alone(fresh_api, train_json,
                                                                   workdir):
    import ph
    family(ph, {"u0": 3, "u1": 3})
    out = ph.train_heads(uuids=["u0", "u1", "shared", "missing"],
                         config={"Trainer": {"trainer": {"epochs": 2}}})["heads"]
    assert out["u0"]["updated"] and out["u0"]["epochs_run"] == 2 and out["u0"]["revision"] == 1
    assert out["u1"]["updated"] and out["u1"]["trained_with"] == 2
    assert out["shared"]["error"] == "bad_input" and "not an add-in" in out["shared"]["message"]
    assert out["missing"]["error"] == "not_found"
    assert ph.check_head("u0")["addin"]["parent_revision"] == 1
    (workdir / "blocked").write_text("a file where u2's run would write its checkpoints")
    ph.create_head(uuid="u2", parent="shared", addin="bias",
                   config={"Trainer": {"trainer": {"save_dir": "blocked"}}})
    ph.add_examples(uuid="u2", examples=user_examples(2))
    ph.add_examples(uuid="u0", examples=user_examples(3))
    out = ph.train_heads(uuids=["u2", "u0"])["heads"]
    assert "blocked" in out["u2"]["message"] and out["u0"]["revision"] == 2
    assert ph.check_head("u2")["revision"] == 0 and ph.check_head("shared")["revision"] == 1


def test_a_group_job_stops_one_head_and_trains_the_others(fresh_api, train_json):
    import ph
    family(ph, {"a": 3, "b": 3, "slow": 400})
    job = ph.train_heads(uuids=["a", "b", "slow"], background=True)
    assert job["uuids"] == ["a", "b", "slow"] and job["refused"] == {}
    with pytest.raises(ConflictError, match="already training"):
        ph.train_head(uuid="slow")
    with pytest.raises(BadInputError, match="not trained by job"):
        ph.stop_training(job["job_id"], uuid="shared")
    wait_running(ph, job["job_id"], "slow")
    ph.stop_training(job["job_id"], uuid="slow")
    done = wait_job(ph.train_status, job["job_id"])
    heads = done["heads"]
    assert heads["a"]["state"] == heads["b"]["state"] == "succeeded", done
    assert heads["a"]["summary"]["trained_with"] == 3 and heads["a"]["epoch"] == 3
    assert heads["slow"]["state"] == "stopped" and heads["slow"]["epoch"] < 400
    assert done["state"] == "succeeded" and "slow" in done["error"]
    assert done["summary"] == {"heads": 3, "succeeded": 2}
    assert [ph.check_head(u)["revision"] for u in ("a", "b", "slow")] == [1, 1, 0]
    assert ph.predict(uuid="slow", data=TEXTS) == ph.predict(uuid="shared", data=TEXTS)
    assert ph.train_head(uuid="slow", config={"Trainer": {"trainer": {"epochs": 1}}},
                         incremental=True)["revision"] == 1  # free again


def test_a_busy_head_is_refused_from_a_group_job_alone(fresh_api, train_json):
    import ph
    family(ph, {"busy": 400, "free": 2})
    first = ph.train_head(uuid="busy", background=True, incremental=True)
    job = ph.train_heads(uuids=["busy", "free"], background=True)
    assert job["uuids"] == ["free"] and job["refused"]["busy"]["error"] == "conflict"
    ph.stop_training(first["job_id"])
    assert wait_job(ph.train_status, job["job_id"])["heads"]["free"]["state"] == "succeeded"
    with pytest.raises(BadInputError, match="no head could start training"):
        ph.train_heads(uuids=["shared"], background=True)


def test_a_killed_group_job_fails_every_unfinished_head_and_keeps_their_weights(fresh_api,
                                                                               train_json):
    import ph
    family(ph, {"x": 400, "y": 400})
    before = {u: weights(fresh_api, u) for u in ("x", "y", "shared")}
    job_id = ph.train_heads(uuids=["x", "y"], background=True)["job_id"]
    wait_running(ph, job_id, "x")
    os.kill(fresh_api.store.read_job(job_id)["pid"], signal.SIGKILL)
    done = wait_job(ph.train_status, job_id)
    assert done["state"] == "failed" and "killed or crashed" in done["error"]
    assert {h["state"] for h in done["heads"].values()} == {"failed"}
    assert {u: weights(fresh_api, u) for u in before} == before
    assert not ph.check_head("x")["training"]


def test_rebase_addins_in_the_background_moves_every_addin_in_one_job(fresh_api, train_json):
    import ph
    family(ph, {"p": 2, "q": 2})
    ph.train_heads(uuids=["p", "q"])
    ph.train_head(uuid="shared")  # revision 2: both add-ins are behind
    assert all(ph.check_head(u)["addin"]["behind_parent"] for u in ("p", "q"))
    out = ph.rebase_addins(parent="shared", background=True)
    assert out["revision"] == 2 and set(out["heads"]) == {"p", "q"}
    assert {h["job_id"] for h in out["heads"].values()} == {out["job_id"]}
    done = wait_job(ph.train_status, out["job_id"])
    assert done["state"] == "succeeded" and done["summary"]["succeeded"] == 2, done
    for uid in ("p", "q"):
        addin = ph.check_head(uid)["addin"]
        assert addin["parent_revision"] == 2 and not addin["behind_parent"]
    assert ph.rebase_addins(parent="shared") == {"parent": "shared", "revision": 2, "heads": {}}
