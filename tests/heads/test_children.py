"""Child heads (cold start from a shared head): follow the parent until trained, share its
loaded head and stacked pass, copy it on first training, then live on their own."""
from __future__ import annotations

import threading

import pytest
import torch

from helpers.heads import small_config, tiny_custom_config, write_json
from ph.errors import BadInputError, ConfigError, ConflictError, HeadNotFoundError
from ph.heads.service import HeadRegistry

TEXTS = ["I want to order a pizza", "will it rain in Lima", "play some Bach", "wake me at 6"]


def scored_config(**loop) -> dict:
    """A small head that answers label names and class probabilities (to compare closely)."""
    config = small_config(**loop)
    config["Inference"] = {"postprocess": {"type": "PersonalizedHeadPostProcessor",
                                           "args": {"return_label": True, "return_scores": True}}}
    return config


def make_family(registry):
    """A trained shared head 'shared' and three untrained children."""
    registry.create_head("shared", scored_config())
    registry.train("shared")
    for uid in ("kid0", "kid1", "kid2"):
        registry.create_head(uid, parent="shared")
    return registry


@pytest.fixture
def family(registry, train_json):
    return make_family(registry)


@pytest.fixture
def any_family(any_registry, train_json):
    """`family` on each store backend (`any_registry`)."""
    return make_family(any_registry)


def scores(answers) -> torch.Tensor:
    return torch.tensor([a["scores"] for a in answers])


def same_answers(a, b) -> bool:
    return ([x["prediction"] for x in a] == [x["prediction"] for x in b]
            and torch.allclose(scores(a), scores(b), atol=1e-5, rtol=0))


def weights(registry, uid) -> dict:
    record = registry.store.read(uid)
    return registry.store.read_weights(uid, record)


def test_an_untrained_child_answers_as_its_parent_and_check_head_says_so(any_family):
    assert same_answers(any_family.predict("kid0", TEXTS), any_family.predict("shared", TEXTS))
    info = any_family.check_head("kid0")
    parent = any_family.check_head("shared")
    assert info["follows_parent"] == info["parent"] == "shared"
    assert not info["trained"] and info["revision"] == 0 and info["parent_revision"] == 1
    assert info["labels"] == parent["labels"] and "order_food" in info["labels"]
    assert parent["followers"] == 3 and parent["follows_parent"] is None
    one = any_family.predict("kid0", TEXTS[0])  # one input: the parent's answer, by name
    assert one == any_family.predict("shared", TEXTS[0]) and one["prediction"] in info["labels"]
    assert any_family.store.read("kid0")["weights"] is None  # no copy of the weights
    if not any_family.store.distributed:
        assert not list(any_family.store.head_dir("kid0").glob("weights-*"))


def test_untrained_children_follow_the_parents_retraining_in_any_process(family, train_json):
    before = family.predict("kid1", TEXTS)
    other = HeadRegistry(family.store.root)  # another process's registry, same folder
    other.train("shared", {"Trainer": {"trainer": {"epochs": 2}}})
    after = family.predict("kid1", TEXTS)
    assert not same_answers(before, after)
    assert same_answers(after, family.predict("shared", TEXTS))
    assert family.check_head("kid1")["parent_revision"] == 2


def test_untrained_children_share_the_parents_head_and_answer_in_one_stacked_pass(family):
    kids = [family.create_head(f"user{i}", parent="shared") for i in range(40)]
    head = family.loaded("shared")
    assert all(family.loaded(uid) is head for uid in kids)
    assert family.stats()["heads_loaded"] == 1  # no head loaded per child
    bank = head.extra["bank"]
    assert sum(c.used for c in bank.chunks) == 1  # one bank slot, the parent's
    passes = []
    forward = bank.forward
    bank.forward = lambda slots, inputs: passes.append(len(slots)) or forward(slots, inputs)
    answers = family.predict_many([(uid, TEXTS[i % 4]) for i, uid in enumerate(kids)])
    assert passes == [40]  # every child in one stacked pass
    alone = family.predict("shared", TEXTS)
    for i, answer in enumerate(answers):
        assert same_answers([answer], [alone[i % 4]])


def test_first_training_starts_from_the_parents_weights_and_label_map(any_family, workdir):
    greetings = {"greet": ["hello there", "hi friend", "good morning", "hey you"] * 4,
                 "order_food": ["order a pizza", "get me sushi", "I want noodles", "a burger"] * 4}
    write_json(workdir / "kid.json", greetings)
    frozen = {"Trainer": {"optimizer": {"args": {"lr": 0.0}},
                          "dataloader": {"args": {"train_json": "kid.json"}}}}
    summary = any_family.train("kid0", frozen)  # lr 0: the weights it starts from are kept
    assert summary["updated"] and summary["revision"] == 1
    parent_labels = any_family.check_head("shared")["labels"]
    info = any_family.check_head("kid0")
    assert info["labels"] == parent_labels + ["greet"]  # earlier indices unchanged
    assert info["trained"] and info["follows_parent"] is None and info["parent"] == "shared"
    own, parents = weights(any_family, "kid0"), weights(any_family, "shared")
    assert own.keys() == parents.keys() and all(torch.equal(own[k], parents[k]) for k in own)
    assert any_family.check_head("shared")["followers"] == 2
    assert any_family.loaded("kid0") is not any_family.loaded("shared")


def test_a_trained_child_keeps_its_weights_when_the_parent_trains_again(any_family):
    any_family.train("kid2", {"Trainer": {"optimizer": {"args": {"lr": 0.01}}}})
    mine = any_family.predict("kid2", TEXTS)
    own, parents = weights(any_family, "kid2"), weights(any_family, "shared")
    assert any(not torch.equal(own[k], parents[k]) for k in own)  # it learnt on its own
    any_family.train("shared", {"Trainer": {"optimizer": {"args": {"lr": 0.01}}}})
    assert any_family.check_head("kid2")["revision"] == 1
    assert same_answers(any_family.predict("kid2", TEXTS), mine)
    after = weights(any_family, "kid2")
    assert all(torch.equal(after[k], own[k]) for k in own)
    assert same_answers(any_family.predict("kid0", TEXTS), any_family.predict("shared", TEXTS))


def test_loading_weights_into_a_child_gives_it_its_own(any_family, workdir):
    path = workdir / "w.pt"
    torch.save(weights(any_family, "shared"), path)
    any_family.load_weights("kid1", str(path))
    info = any_family.check_head("kid1")
    assert info["trained"] and info["follows_parent"] is None and info["labels"]
    assert any_family.check_head("shared")["followers"] == 2


def test_a_child_takes_the_parents_config_and_may_change_only_trainer(family):
    family.create_head("slow", {"Trainer": {"trainer": {"epochs": 7}}}, parent="shared")
    config = family.get_config("slow")
    assert config["Trainer"]["trainer"]["epochs"] == 7
    assert config["Model"] == family.get_config("shared")["Model"]
    with pytest.raises(ConfigError, match=r"cannot change Model \(Model.args.n_classes: 8 -> 9\).*only "
                                          "Trainer may differ"):
        family.create_head("wide", {"Model": {"args": {"n_classes": 9}}}, parent="shared")
    with pytest.raises(ConfigError, match="Trainer.trainer.epoch: unknown key"):
        family.create_head("typo", {"Trainer": {"trainer": {"epoch": 2}}}, parent="shared")
    assert not family.store.exists("wide") and not family.store.exists("typo")


@pytest.mark.parametrize("uid, parent, error, match", [
    ("kid9", "nobody", HeadNotFoundError, "parent: no head with uuid 'nobody'; create the shared head"),
    ("kid9", "../etc", BadInputError, "is not valid"),
    ("kid9", 7, BadInputError, "parent: give the uuid of an existing head"),
    ("kid9", "kid0", BadInputError, "'kid0' has not trained yet and itself follows 'shared'; "
                                    "use parent='shared'"),
    ("shared", "shared", BadInputError, "cannot be its own parent"),
])
def test_bad_parents_are_refused_with_what_to_do(family, uid, parent, error, match):
    with pytest.raises(error, match=match):
        family.create_head(uid, parent=parent)
    assert not family.store.exists("kid9")


def test_a_trained_child_can_be_a_parent(family):
    family.train("kid0")
    family.create_head("grandkid", parent="kid0")
    assert same_answers(family.predict("grandkid", TEXTS), family.predict("kid0", TEXTS))


def test_creating_a_child_again_is_idempotent_and_another_parent_is_a_conflict(any_family):
    any_family.create_head("other", scored_config())
    assert any_family.create_head("kid0", parent="shared") == "kid0"
    with pytest.raises(ConflictError, match="already exists \\(it is a child of 'shared'\\).*replace=True"):
        any_family.create_head("kid0", parent="other")
    with pytest.raises(ConflictError, match="it is a child of 'shared'"):
        any_family.create_head("kid0", scored_config())
    any_family.create_head("kid0", parent="other", replace=True)
    assert any_family.check_head("kid0")["follows_parent"] == "other"
    assert any_family.check_head("shared")["followers"] == 2
    assert same_answers(any_family.predict("kid0", TEXTS), any_family.predict("other", TEXTS))


def test_replacing_a_child_keeps_its_parent_link_right_and_waits_for_its_training(any_family):
    any_family.create_head("kid0", parent="shared", replace=True)  # same parent: still followed
    assert any_family.check_head("shared")["followers"] == 3
    any_family.create_head("kid1", scored_config(), replace=True)  # no parent any more
    assert any_family.check_head("shared")["followers"] == 2
    with any_family.store.training("kid2"), pytest.raises(ConflictError, match="already training"):
        any_family.create_head("kid2", parent="shared", replace=True)


def test_a_followed_parent_cannot_be_deleted_or_replaced_until_its_children_train_or_go(any_family):
    for action in (lambda: any_family.delete_head("shared"),
                   lambda: any_family.create_head("shared", scored_config(epochs=9), replace=True)):
        with pytest.raises(ConflictError, match=r"3 untrained child head\(s\) answer with its weights "
                                                r"\('kid0', 'kid1', 'kid2'\)\. Train each child"):
            action()
    assert any_family.check_head("shared")["revision"] == 1
    any_family.train("kid0")
    any_family.delete_head("kid1")
    any_family.store.add_follower("shared", "ghost")  # a crashed create's link
    with pytest.raises(ConflictError, match="1 untrained child"):
        any_family.delete_head("shared")
    any_family.delete_head("kid2")
    assert any_family.delete_head("shared")
    assert any_family.store.followers("shared") == []
    if not any_family.store.distributed:
        assert not (any_family.store.root / "_children" / "shared").exists()
    assert any_family.check_head("kid0")["trained"]  # a trained child lives on without its parent
    assert any_family.predict("kid0", TEXTS)


def test_a_child_whose_parent_vanished_says_so(any_family):
    any_family.create_head("lonely", scored_config())
    any_family.create_head("orphan", parent="lonely")
    any_family.store.delete("lonely")  # as a hand-made removal would (delete_head refuses)
    with pytest.raises(HeadNotFoundError, match="follows its parent 'lonely', which no longer exists"):
        any_family.predict("orphan", "hi")
    with pytest.raises(HeadNotFoundError, match="no weights to start training from"):
        any_family.train("orphan")
    assert any_family.check_head("orphan")["parent_revision"] is None


def test_a_child_of_a_head_with_user_code_keeps_the_parents_code(registry, train_json):
    config = tiny_custom_config(registry)
    registry.create_head("custom", config)
    registry.create_head_list(small_config())  # the head list moves on; the child does not
    registry.create_head("kid", parent="custom")
    alone = registry.predict("custom", TEXTS)
    assert registry.predict_many([("kid", TEXTS), ("custom", TEXTS)]) == [alone, alone]
    assert registry.train("kid")["revision"] == 1
    assert registry.get_config("kid")["Model"]["type"] == "CustomModel"
    assert len(registry.predict("kid", TEXTS)) == len(TEXTS)


def test_creating_children_while_the_parent_is_deleted_never_leaves_an_orphan(any_registry):
    any_registry.create_head("shared", small_config())
    outcomes = []

    def create(i):
        try:
            outcomes.append(any_registry.create_head(f"kid{i}", parent="shared"))
        except HeadNotFoundError:
            outcomes.append("no parent")

    def delete():
        try:
            outcomes.append(any_registry.delete_head("shared"))
        except ConflictError:
            outcomes.append("refused")

    threads = [threading.Thread(target=create, args=(i,)) for i in range(12)]
    threads.insert(5, threading.Thread(target=delete))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kids = [u for u in any_registry.list_heads() if u.startswith("kid")]
    if any_registry.store.exists("shared"):
        assert "refused" in outcomes and True not in outcomes
        assert any_registry.check_head("shared")["followers"] == len(kids) == len(outcomes) - 1
    else:
        assert kids == [] and True in outcomes
