"""ph: personalized heads for Jaseci apps.

Every user (tenant, device) gets a small PyTorch model, created from a YAML config,
trained on their data and asked for predictions from JAC walkers
(`actions load module ph`), over HTTP (`ph serve`), or from Python:

    import ph
    ph.create_head_list(config_file="config.yaml")
    uid = ph.create_head(uuid="alice")
    ph.train_head(uid)
    ph.predict(uid, "I want to order a pizza")
"""
from __future__ import annotations

import sys

from . import api  # noqa: F401  (ph.api stays reachable when Jaseci re-imports ph)
from .api import (add_examples, check_head, create_head, create_head_list, delete_examples,
                  delete_head, export_weights, get_config, get_registry, head_stats,
                  list_examples, list_heads, list_revisions, load_weights, predict, predict_many,
                  rebase_addins, rollback_head, setup, stop_training, train_head, train_heads,
                  train_status)
from .errors import (BadInputError, ConfigError, ConflictError, HeadNotFoundError, NotFoundError,
                     PHError, PermissionDeniedError, StoreUnavailableError, TooLargeError,
                     TrainingError, WeightsError)
from .heads.service import HeadRegistry

__version__ = "0.1.0"
__all__ = ["add_examples", "list_examples", "delete_examples", "TooLargeError", "check_head", "create_head", "create_head_list", "delete_head", "get_config",
           "get_registry", "head_stats", "list_heads", "load_weights", "predict", "predict_many", "setup",
           "stop_training", "train_head", "train_heads", "train_status", "rebase_addins",
           "export_weights", "list_revisions", "rollback_head", "serv_actions", "HeadRegistry",
           "PHError",
           "ConfigError", "BadInputError", "ConflictError", "HeadNotFoundError", "NotFoundError",
           "PermissionDeniedError", "StoreUnavailableError", "TrainingError", "WeightsError"]


def serv_actions():
    """ASGI app of the remote action server (`uvicorn ph:serv_actions`, as JSORC runs it)."""
    from .server.app import create_app
    return create_app()


if sys.modules.get("jaseci") is not None:  # loaded by Jaseci: register the actions
    from .adapters import jaseci as _actions

    _actions.register()
