"""ph.settings: every PH_* variable in one table, read by one parser; the README's table
is that table; a bad value is one line (naming the setting and what is accepted) and
exit status 2 for the commands, never a traceback or a secret."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from helpers.paths import ROOT
from ph import settings
from ph.errors import ConfigError

SECRET = "S3CR3Tsettingxyz"


def test_the_readme_settings_table_is_the_code_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert settings.markdown_table() in readme, (
        "README.md's settings table differs from ph.settings; paste ph.settings.markdown_table()")


def test_every_ph_variable_the_code_reads_is_in_the_table():
    read = set()
    for path in (ROOT / "ph").rglob("*.py"):
        read |= set(re.findall(r"[\"'](PH_[A-Z0-9_]+)[\"']", path.read_text(encoding="utf-8")))
    assert read - set(settings.BY_ENV) == set()


def test_only_the_settings_module_reads_ph_variables_from_the_environment():
    readers = [str(p.relative_to(ROOT)) for p in (ROOT / "ph").rglob("*.py")
               if p.name != "settings.py" and re.search(
                   r"environ(?:\.get)?\(\s*[\"']PH_|environ\[[\"']PH_", p.read_text(encoding="utf-8"))]
    assert readers == []


@pytest.mark.parametrize("env, raw, accepted", [
    ("PH_MEMORY_BUDGET", "lots", "a size"),
    ("PH_MAX_EXAMPLES_PER_HEAD", "-5", "a whole number >= 1"),
    ("PH_JOB_RETRIES", "2.5", "a whole number >= 0"),
    ("PH_TRAIN_LEASE_S", "0", "a number >= 0.1"),
    ("PH_ALLOW_CODE", "maybe", "1/true/yes/on"),
    ("PH_LOG_LEVEL", "bogus", "debug, info"),
    ("PH_SWEEP_INTERVAL_S", "nan", "a whole number >= 1"),
])
def test_a_bad_value_names_the_setting_the_value_and_what_is_accepted(env, raw, accepted):
    with pytest.raises(ConfigError) as err:
        settings.value(env, environ={env: raw})
    message = str(err.value)
    assert env in message and repr(raw) in message and accepted in message
    assert "\n" not in message


def test_values_defaults_and_flags_override_the_environment():
    assert settings.value("PH_MEMORY_BUDGET", environ={"PH_MEMORY_BUDGET": "2GB"}) == 2 * 2**30
    assert settings.value("PH_MEMORY_BUDGET", environ={}) is None
    assert settings.value("PH_WORKERS", "3", environ={"PH_WORKERS": "2"}) == 3
    assert settings.value("PH_ALLOW_CODE", environ={"PH_ALLOW_CODE": "yes"}) is True
    assert settings.value("PH_TRAIN_QUEUES", environ={"PH_TRAIN_QUEUES": "ph-train,ph-gpu"}) == \
        ("ph-train", "ph-gpu")
    assert settings.value("PH_HEADS_DIR", environ={"PH_HEADS_DIR": ""}) == "heads"  # empty: unset


def test_a_secret_is_never_shown_in_a_message():
    for env in (s.env for s in settings.SETTINGS if s.secret):
        try:
            settings.parse(env, SECRET)
        except ConfigError as exc:
            assert SECRET not in str(exc)


CASES = [  # (command, extra environment, what the one line must name)
    (["serve", "--memory-budget", "lots"], {}, "--memory-budget"),
    (["serve", "--log-level", "bogus"], {}, "--log-level"),
    (["serve", "--store", "foo://bar"], {}, "--store"),
    (["serve", "--workers", "0"], {}, "--workers"),
    (["serve", "--no-such-flag"], {}, "--no-such-flag"),
    (["serve", "--port", "x"], {}, "--port"),
    (["serve"], {"PH_MEMORY_BUDGET": "lots"}, "PH_MEMORY_BUDGET"),
    (["serve"], {"PH_MAX_EXAMPLES_PER_CALL": "-1"}, "PH_MAX_EXAMPLES_PER_CALL"),
    (["serve"], {"PH_STORE": f"redis://:ab/cd{SECRET}@127.0.0.1:6379/0?objects=s3://b"},
     "PH_STORE"),
    (["worker", "--log-level", "bogus"], {}, "--log-level"),
    (["worker"], {"PH_JOB_RETRIES": "-1"}, "PH_JOB_RETRIES"),
    (["worker", "--queues", ","], {}, "--queues"),
]


def test_every_bad_flag_or_variable_is_one_line_and_exit_status_2(tmp_path):
    """All cases in one driver process (the imports once), each command in a fork."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PH_")}
    out = subprocess.run([sys.executable, str(driver), repr(CASES)], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    results = eval(out.stdout)  # noqa: S307  (our own driver's repr of its results)
    assert len(results) == len(CASES)
    for (argv, _, names), (code, text) in zip(CASES, results):
        lines = [line for line in text.splitlines() if line.strip()]
        assert code == 2, (argv, code, text)
        assert len(lines) == 1 and names in lines[0], (argv, text)
        assert "Traceback" not in text and SECRET not in text


@pytest.mark.slow  # three `python -m ph` processes
def test_version_and_help_show_each_default_once():
    out = subprocess.run([sys.executable, "-m", "ph", "--version"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("ph ")
    helped = subprocess.run([sys.executable, "-m", "ph", "serve", "--help"], capture_output=True,
                            text=True, timeout=120)
    text = " ".join(helped.stdout.split())
    assert helped.returncode == 0 and text.count("(default: ") == 0
    assert text.count("default 32MiB") == 1 and "$PH_MAX_BODY_BYTES" in text


DRIVER = '''
import ast, io, os, sys, contextlib
import ph.adapters.cli
cases = ast.literal_eval(sys.argv[1])
results = []
for argv, extra, _ in cases:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.dup2(write, 1)
        os.dup2(write, 2)
        os.environ.update(extra)
        try:
            code = ph.adapters.cli.main(argv)
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 99
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)
    os.close(write)
    with os.fdopen(read) as fh:
        text = fh.read()
    _, status = os.waitpid(pid, 0)
    results.append((os.waitstatus_to_exitcode(status), text))
print(repr(results))
'''
