"""Malformed store URLs, at every entry point: one line, naming the setting, no traceback,
exit status 2 for the CLIs, and never a part of the password (each carries SECRET in it).

The CLI corpus runs in one driver process that imports ph once and forks a child per case
(`python -m ph` costs ~2 s of imports each); a few real `python -m ph` runs check that the
driver's children behave as the real command does.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from ph import api
from ph.errors import ConfigError
from ph.stores import RedisParts, mask_url, parse_store_url

SECRET = "S3CR3Txyz"
GOOD_TAIL = "127.0.0.1:6379/0?objects=s3://b"
MALFORMED = {
    "slash in password": f"redis://:ab/{SECRET}@{GOOD_TAIL}",
    "slash in password with a user": f"redis://user:{SECRET}/x@{GOOD_TAIL}",
    "hash in password": f"redis://:ab#{SECRET}@{GOOD_TAIL}",
    "question mark in password": f"redis://:ab?{SECRET}@{GOOD_TAIL}",
    "at in password": f"redis://:ab@{SECRET}@{GOOD_TAIL}",
    "stray bracket": f"redis://:{SECRET}@[127.0.0.1:6379/0?objects=s3://b",
    "stray closing bracket": f"redis://:{SECRET}@127.0.0.1]:6379/0?objects=s3://b",
    "no host": f"redis://:{SECRET}@:6379/0?objects=s3://b",
    "no objects": f"redis://:{SECRET}@127.0.0.1:6379/0",
    "objects not s3": f"redis://:{SECRET}@127.0.0.1:6379/0?objects=http://b",
    "port too large": f"redis://:{SECRET}@127.0.0.1:99999/0?objects=s3://b",
    "port not a number": f"redis://:{SECRET}@127.0.0.1:port/0?objects=s3://b",
    "database not a number": f"redis://:{SECRET}@127.0.0.1:6379/db?objects=s3://b",
    "unknown scheme": f"foo://user:{SECRET}@bar",
    "http": f"http://user:{SECRET}@{GOOD_TAIL}",
    "unknown setting": f"redis://:{SECRET}@{GOOD_TAIL}&colour=red",
    "slash in password and a bad port": f"redis://:a/{SECRET}@127.0.0.1:99999/0?objects=s3://b",
}
CLI_MODES = {  # name: (argv before the URL, whether the URL goes in PH_STORE, setting named)
    "serve --store": (["serve", "--port", "0", "--store"], False, "--store"),
    "worker --store": (["worker", "--store"], False, "--store"),
    "serve PH_STORE": (["serve", "--port", "0"], True, "PH_STORE"),
    "worker PH_STORE": (["worker"], True, "PH_STORE"),
}

DRIVER = r"""
import json, os, runpy, signal, sys, traceback
import ph.adapters.cli  # the slow imports, once, before forking
results = []
for argv, env in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # as `python -m ph ARGV` would run, from here on
        os.close(read)
        os.dup2(write, 1)
        os.dup2(write, 2)
        os.environ.pop("PH_STORE", None)
        os.environ.update(env)
        sys.argv = ["ph", *argv]
        signal.alarm(60)  # a case that starts a server after all ends, and fails
        try:
            runpy.run_module("ph", run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as output:
        out = output.read().decode("utf-8", "replace")
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    results.append({"out": out, "status": status})
print(json.dumps(results))
"""


def cli_case(mode: str, url: str) -> tuple[list[str], dict[str, str]]:
    argv, in_env, _ = CLI_MODES[mode]
    return (argv, {"PH_STORE": url}) if in_env else (argv + [url], {})


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PH_STORE"}


def problems_in(out: str, status: int, setting: str) -> list[str]:
    """What is wrong with one CLI run's output, if anything."""
    found = []
    if SECRET in out:
        found.append("shows the password")
    if "Traceback" in out:
        found.append("ends in a traceback")
    if len(out.strip().splitlines()) != 1:
        found.append(f"prints {len(out.strip().splitlines())} lines")
    if setting not in out or "redis://HOST:PORT/DB" not in out:
        found.append(f"does not name {setting} and a good URL")
    if status != 2:
        found.append(f"exits with {status}")
    return found


def report(failures: dict[str, tuple[list[str], str]]) -> str:
    return "\n".join(f"{case}: {', '.join(why)}\n    {out.strip()[:300]}"
                     for case, (why, out) in failures.items())


# --- the masking ------------------------------------------------------------------------

@pytest.mark.parametrize("url, shown", [
    ("redis://:pw@127.0.0.1:6379/0?objects=s3://b", "redis://***@127.0.0.1:6379/0?objects=s3://b"),
    ("redis://user:pw@h", "redis://***@h"),
    (f"redis://:ab/cd{SECRET}@127.0.0.1:6379/0?objects=s3://b",
     "redis://***@127.0.0.1:6379/0?objects=s3://b"),
    (f"redis://:a@b#c?{SECRET}@h:1/0", "redis://***@h:1/0"),
    (f"redis:{SECRET}@h?objects=s3://b", "***@h?objects=s3://b"),  # :// only after the @
    ("redis://127.0.0.1:6379/0?objects=s3://b", "redis://127.0.0.1:6379/0?objects=s3://b"),
    ("/srv/heads", "/srv/heads"),
    ("", ""),
])
def test_mask_url_hides_everything_between_the_scheme_and_the_last_at(url, shown):
    assert mask_url(url) == shown


# --- parsing ----------------------------------------------------------------------------

@pytest.mark.parametrize("url, parsed", [
    ("redis://127.0.0.1:6379/0?objects=s3://b",
     RedisParts("redis://127.0.0.1:6379/0", "s3://b", None, "ph")),
    ("redis://:p%2Fw@10.0.0.1:6379/2?objects=s3://b/pre/fix&endpoint=http://10.0.0.1:9000"
     "&namespace=team", RedisParts("redis://:p%2Fw@10.0.0.1:6379/2", "s3://b/pre/fix",
                                   "http://10.0.0.1:9000", "team")),
    ("rediss://user:pw@redis.example:6380?objects=s3://b",
     RedisParts("rediss://user:pw@redis.example:6380", "s3://b", None, "ph")),
    ("redis://[::1]:6379/0?objects=s3://b",
     RedisParts("redis://[::1]:6379/0", "s3://b", None, "ph")),
    ("redis://h?objects=s3://b", RedisParts("redis://h", "s3://b", None, "ph")),
    ("/srv/heads", "/srv/heads"),
    ("relative/heads", "relative/heads"),
    ("file:///srv/heads", "/srv/heads"),
])
def test_good_urls_parse_as_before(url, parsed):
    assert parse_store_url(url) == parsed


@pytest.mark.parametrize("url", MALFORMED.values(), ids=MALFORMED.keys())
def test_parse_store_url_names_the_setting_in_one_line_without_the_password(url):
    with pytest.raises(ConfigError) as err:
        parse_store_url(url, "--store")
    message = str(err.value)
    assert SECRET not in message and "\n" not in message
    assert message.startswith("Invalid config in --store: ") and "redis://HOST:PORT/DB" in message


def test_an_ipv6_error_names_the_store_not_urlsplit():
    with pytest.raises(ConfigError, match=r"PH_STORE.*'\['.*IPv6") as err:
        parse_store_url("redis://:pw@[127.0.0.1:6379/0?objects=s3://b", "PH_STORE")
    assert "Invalid IPv6 URL" not in str(err.value)


# --- setup(store=...) and PH_STORE in Python -------------------------------------------

@pytest.mark.parametrize("url", MALFORMED.values(), ids=MALFORMED.keys())
@pytest.mark.parametrize("given", ["store", "PH_STORE"])
def test_setup_raises_a_one_line_config_error(url, given, tmp_path, monkeypatch):
    monkeypatch.delenv("PH_STORE", raising=False)
    if given == "PH_STORE":
        monkeypatch.setenv("PH_STORE", url)
    before = api._registry
    with pytest.raises(ConfigError) as err:
        api.setup(str(tmp_path), store=url if given == "store" else None)
    message = str(err.value)
    assert SECRET not in message and "\n" not in message
    assert message.startswith(f"Invalid config in {given}: ")
    assert api._registry is before  # the registry in use is kept


# --- ph serve and ph worker -------------------------------------------------------------

def test_every_malformed_url_fails_every_cli_in_one_line(tmp_path):
    cases = [(mode, name, *cli_case(mode, url)) for mode in CLI_MODES
             for name, url in MALFORMED.items()]
    good = f"redis://:{SECRET}@{GOOD_TAIL}"  # --help must not show $PH_STORE's password
    helps = [(["serve", "--help"], {"PH_STORE": good}), (["worker", "--help"], {"PH_STORE": good})]
    done = subprocess.run([sys.executable, "-c", DRIVER,
                           json.dumps([c[2:] for c in cases] + helps)],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    failures = {}
    for (mode, name, _, _), result in zip(cases, results):
        why = problems_in(result["out"], result["status"], CLI_MODES[mode][2])
        if why:
            failures[f"{mode} / {name}"] = (why, result["out"])
    assert not failures, report(failures)
    for result in results[len(cases):]:
        assert result["status"] == 0 and SECRET not in result["out"], result["out"]


@pytest.mark.slow  # real `python -m ph` processes
def test_the_real_commands_agree(tmp_path):
    """`python -m ph` itself, in every mode with one of the two URLs, run side by side."""
    names = ["slash in password", "stray bracket"] * 2
    runs = [(mode, name, *cli_case(mode, MALFORMED[name])) for mode, name in zip(CLI_MODES, names)]

    def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ph", *argv], cwd=tmp_path,
                              env={**clean_env(), **env}, capture_output=True, text=True,
                              timeout=120)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        done = list(pool.map(lambda case: run(*case[2:]), runs))
    failures = {}
    for (mode, name, _, _), result in zip(runs, done):
        why = problems_in(result.stdout + result.stderr, result.returncode, CLI_MODES[mode][2])
        if why:
            failures[f"{mode} / {name}"] = (why, result.stdout + result.stderr)
    assert not failures, report(failures)
