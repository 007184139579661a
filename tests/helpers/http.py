"""Calling a `ph serve` over HTTP: `post` returns the response, `call` checks its status
and returns its JSON."""
from __future__ import annotations

import requests


def post(url: str, action: str, **args):
    return requests.post(f"{url}/{action}/", json=args, timeout=60)


def call(url, action, expect=200, **args):
    response = requests.post(f"{url}/{action}/", json=args, timeout=120)
    assert response.status_code == expect, response.text
    return response.json()
