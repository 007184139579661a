"""ph/k8s.yaml and ph/deploy.py checked against the code they run: the env variables ph
reads, the flags `ph serve` / `ph worker` take, the store URL rules, the server's open
health path, and the structure Jaseci's JSORC creates objects from. Nothing connects
anywhere: the manifests are parsed, cross-referenced and fed to ph's own parsers."""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import types
from pathlib import Path
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from helpers.paths import ROOT
import ph.adapters.cli
import ph.deploy
from ph import settings
import ph.server.app
from ph import stores

DOCS = ph.deploy.manifests()
WORKLOADS = ("Deployment", "StatefulSet", "Job")
SECRET_KEYS = {"token", "redis-password", "aws-access-key-id", "aws-secret-access-key"}
QUEUES = {"ph-train", "ph-gpu"}
# Variables the third-party images read, for containers that are not ph.
IMAGE_READS = {"minio/minio": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}}
# Where boto3 (botocore) reads its variables: an AWS_* variable a ph container sets must
# be read there (the code passes nothing else to boto3).
BOTOCORE_FILES = ("configprovider.py", "credentials.py")
SUBST = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)")  # Kubernetes $(VAR); $$(VAR) escapes


# ---------------------------------------------------------------- helpers


def objects(kind: str) -> list[dict]:
    return [d for d in DOCS if d["kind"] == kind]


def named(kind: str, name: str) -> dict:
    found = [d for d in objects(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"k8s.yaml: expected one {kind} '{name}', found {len(found)}"
    return found[0]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict) -> list[dict]:
    return pod_spec(workload)["containers"]


def all_containers() -> list[tuple[dict, dict]]:
    return [(w, c) for w in DOCS if w["kind"] in WORKLOADS for c in containers(w)]


def is_ph(container: dict) -> bool:
    return (container.get("command") or [None])[0] == "ph"


def ph_containers() -> list[tuple[dict, dict]]:
    return [(w, c) for w, c in all_containers() if is_ph(c)]


def the_container(kind: str, name: str) -> dict:
    found = containers(named(kind, name))
    assert len(found) == 1, f"{name}: one container expected"
    return found[0]


def secret_values() -> dict[str, str]:
    return named("Secret", "ph-secrets")["stringData"]


def config_values() -> dict[str, str]:
    return named("ConfigMap", "ph-config")["data"]


def env_value(entry: dict, resolved: dict[str, str]) -> str:
    """An env entry's value as Kubernetes gives it to the process: from the Secret or
    ConfigMap it names, or its literal value with $(VAR) of earlier entries substituted."""
    source = entry.get("valueFrom")
    if source is None:
        return SUBST.sub(lambda m: resolved.get(m.group(1), m.group(0)), str(entry.get("value", "")))
    if "secretKeyRef" in source:
        ref = source["secretKeyRef"]
        return named("Secret", ref["name"])["stringData"][ref["key"]]
    ref = source["configMapKeyRef"]
    return named("ConfigMap", ref["name"])["data"][ref["key"]]


def env_of(container: dict) -> dict[str, str]:
    resolved: dict[str, str] = {}
    for entry in container.get("env", []):
        resolved[entry["name"]] = env_value(entry, resolved)
    return resolved


def env_sources(container: dict) -> dict[str, tuple]:
    """name -> where its value comes from: ('secret'|'configmap', name, key) or ('value', text)."""
    sources = {}
    for entry in container.get("env", []):
        source = entry.get("valueFrom")
        if source is None:
            sources[entry["name"]] = ("value", entry.get("value"))
        elif "secretKeyRef" in source:
            sources[entry["name"]] = ("secret", source["secretKeyRef"]["name"],
                                      source["secretKeyRef"]["key"])
        else:
            sources[entry["name"]] = ("configmap", source["configMapKeyRef"]["name"],
                                      source["configMapKeyRef"]["key"])
    return sources


def env_read_by_code() -> set[str]:
    """Names ph reads: its settings table (ph.settings, every PH_* variable) and whatever
    else its code reads with os.environ.get("X"), os.environ["X"] or os.getenv("X")."""
    pattern = re.compile(r"""(?:environ\.get\(|environ\[|getenv\()\s*["']([A-Z][A-Z0-9_]*)["']""")
    names = set(settings.BY_ENV)
    for path in (ROOT / "ph").rglob("*.py"):
        names |= set(pattern.findall(path.read_text()))
    return names


def read_by_boto3(name: str) -> bool:
    botocore = importlib.util.find_spec("botocore")
    if botocore is None:
        pytest.skip("botocore is not installed (the distributed extra)")
    folder = Path(botocore.origin).parent
    return any(f"'{name}'" in (folder / f).read_text() for f in BOTOCORE_FILES)


def shell_text(container: dict) -> str:
    """Everything in a container that a process or probe may expand variables in."""
    parts = list(container.get("command", [])) + list(container.get("args", []))
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        parts += (container.get(probe) or {}).get("exec", {}).get("command", [])
    return " ".join(map(str, parts))


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace):
        super().__init__()
        self.parser, self.namespace = parser, namespace


def ph_parse(argv: list[str], capsys) -> _Parsed:
    """`ph ARGV` parsed by ph.cli's own parser, stopped before any command runs."""
    original = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        raise _Parsed(self, original(self, args, namespace))

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture):
        try:
            ph.adapters.cli.main(list(argv))
        except _Parsed as parsed:
            return parsed
        except SystemExit:
            pytest.fail(f"`ph {' '.join(argv)}` is refused by ph.adapters.cli: {capsys.readouterr().err}")
    pytest.fail("ph.adapters.cli.main did not parse its arguments with argparse")


def parse_container_args(container: dict, capsys) -> argparse.Namespace:
    """A ph container's command and args, parsed as `ph` parses them."""
    command = container["command"][1:] + [str(a) for a in container.get("args", [])]
    parsed = ph_parse(command, capsys)
    parser, namespace = subparser(parsed.parser, command[0]), parsed.namespace
    for arg in command[1:]:  # whole flags only: argparse would take an abbreviation
        if arg.startswith("--"):
            assert arg.split("=")[0] in parser._option_string_actions, \
                f"`ph {command[0]}`: {arg} is not one of its flags"
    return namespace


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    return next(action.choices[command] for action in parser._actions
                if isinstance(action, argparse._SubParsersAction))


def queues(namespace: argparse.Namespace) -> list[str]:
    value = namespace.queues
    return [q for q in value.split(",") if q] if isinstance(value, str) else list(value)


def store_parts(url: str, tmp_path: Path) -> dict:
    """What open_store makes of `url`, with RedisStore replaced so nothing connects."""
    calls = []
    fake = types.ModuleType("ph.stores.redis_store")
    fake.RedisStore = lambda *args, **kwargs: calls.append((args, kwargs)) or "redis-store"
    with mock.patch.dict(sys.modules, {"ph.stores.redis_store": fake}):
        assert stores.open_store(url, tmp_path) == "redis-store"
    (args, kwargs), = calls
    return {"given": [str(a) for a in args] + [str(v) for v in kwargs.values()]}


def workload_selected_by(service: dict) -> dict:
    selector = service["spec"]["selector"]
    matches = [w for w in DOCS if w["kind"] in ("Deployment", "StatefulSet")
               and selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
    assert len(matches) == 1, (f"Service {service['metadata']['name']}: selector {selector} "
                               f"matches {len(matches)} workloads, expected 1")
    return matches[0]


def service_for(host: str, port: int) -> dict:
    found = [s for s in objects("Service") if s["metadata"]["name"] == host
             and any(p["port"] == port for p in s["spec"]["ports"])]
    assert found, f"no Service {host} with port {port} in k8s.yaml"
    return found[0]


def port_matches(target, container: dict) -> bool:
    return any(target in (p["containerPort"], p.get("name")) for p in container.get("ports", []))


def claim_mounts(workload: dict) -> set[str]:
    """Mount paths backed by the workload's persistent volume claims."""
    claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
    claims |= {v["name"] for v in pod_spec(workload).get("volumes", [])
               if "persistentVolumeClaim" in v}
    return {m["mountPath"] for c in containers(workload) for m in c.get("volumeMounts", [])
            if m["name"] in claims}


def flag_value(args: list, flag: str) -> str:
    args = [str(a) for a in args]
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def resolved_store(tmp_path: Path) -> tuple[str, dict]:
    urls = {env_of(c).get("PH_STORE") for _, c in ph_containers()}
    assert len(urls) == 1 and None not in urls, f"ph containers disagree on PH_STORE: {urls}"
    url = urls.pop()
    return url, store_parts(url, tmp_path)


# ---------------------------------------------------------------- the manifests


def test_every_image_tag_is_pinned():
    images = [c["image"] for _, c in all_containers()]
    assert images and all(":" in i and not i.endswith((":latest", ":7.2")) for i in images), images


def test_every_document_is_a_named_kubernetes_object_once():
    text = ph.deploy.MANIFESTS.read_text()
    assert DOCS == [d for d in yaml.safe_load_all(text) if d]
    seen = set()
    for doc in DOCS:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"{key} twice"
        seen.add(key)
    for kind, name in [("Secret", "ph-secrets"), ("ConfigMap", "ph-config"),
                       ("Deployment", "ph-serve"), ("Service", "ph"),
                       ("Deployment", "ph-worker"), ("Deployment", "ph-worker-gpu"),
                       ("StatefulSet", "ph-redis"), ("Service", "ph-redis"),
                       ("StatefulSet", "ph-minio"), ("Service", "ph-minio"),
                       ("Job", "ph-make-bucket")]:
        assert (kind, name) in seen


def test_no_shared_volume_every_ph_pod_caches_on_its_own_emptydir(capsys):
    assert not objects("PersistentVolumeClaim")
    for workload in objects("StatefulSet"):  # each claim is its own pod's, never shared
        for claim in workload["spec"].get("volumeClaimTemplates", []):
            assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    for workload, container in ph_containers():
        volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
        heads_dir = parse_container_args(container, capsys).heads_dir
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert heads_dir in mounts, f"{workload['metadata']['name']}: --heads-dir not mounted"
        assert "emptyDir" in volumes[mounts[heads_dir]]
        assert "persistentVolumeClaim" not in str(volumes)


def test_the_secret_has_the_documented_keys_each_a_placeholder_to_replace():
    secret = named("Secret", "ph-secrets")
    assert set(secret["stringData"]) == SECRET_KEYS
    for key, value in secret["stringData"].items():
        assert "REPLACE" in value, f"ph-secrets/{key} looks like a real secret"
        # the Redis password goes into the store URL as it is
        assert re.fullmatch(r"[A-Za-z0-9-]+", value), f"ph-secrets/{key}: URL-safe characters only"


def test_every_secret_and_configmap_reference_exists_and_every_key_is_used():
    used = {"Secret": set(), "ConfigMap": set()}
    for workload, container in all_containers():
        for entry in container.get("env", []):
            source = entry.get("valueFrom")
            if source is None:
                continue
            kind, ref = (("Secret", source["secretKeyRef"]) if "secretKeyRef" in source
                         else ("ConfigMap", source["configMapKeyRef"]))
            data = named(kind, ref["name"]).get("stringData" if kind == "Secret" else "data")
            assert ref["key"] in data, f"{workload['metadata']['name']}: {kind} " \
                                       f"{ref['name']} has no key {ref['key']}"
            used[kind].add((ref["name"], ref["key"]))
        assert not container.get("envFrom"), "envFrom would hide which variables are set"
    assert used["Secret"] == {("ph-secrets", k) for k in SECRET_KEYS}
    assert used["ConfigMap"] == {("ph-config", k) for k in config_values()}


def test_ph_containers_set_only_variables_the_code_or_boto3_reads():
    code_reads = env_read_by_code()
    for name in ("PH_STORE", "PH_TOKEN", "PH_HEADS_DIR"):  # the scan itself still works
        assert name in code_reads
    for workload, container in ph_containers():
        entries = container.get("env", [])
        names = [e["name"] for e in entries]
        assert len(names) == len(set(names))
        for i, entry in enumerate(entries):
            name = entry["name"]
            # a variable only there to be substituted into a later value ($(NAME))
            substituted = any(name in SUBST.findall(str(later.get("value", "")))
                              for later in entries[i + 1:]) \
                or name in SUBST.findall(shell_text(container))
            if name.startswith("AWS_"):
                assert read_by_boto3(name), f"boto3 does not read {name}"
            else:
                assert name in code_reads or substituted, \
                    f"{workload['metadata']['name']} sets {name}, which nothing reads"
        for entry in entries:  # $(VAR) must name a variable defined before it (Kubernetes)
            earlier = names[:names.index(entry["name"])]
            for ref in SUBST.findall(str(entry.get("value", ""))):
                assert ref in earlier, f"{entry['name']} uses $({ref}) before it is defined"


def test_other_containers_set_only_variables_their_command_or_image_uses():
    for workload, container in all_containers():
        if is_ph(container):
            continue
        text, reads = shell_text(container), IMAGE_READS.get(container["image"].split(":")[0], set())
        for entry in container.get("env", []):
            name = entry["name"]
            used = re.search(rf"\$(\({name}\)|\{{{name}\}}|{name}\b)", text)
            assert used or name in reads, f"{workload['metadata']['name']}: {name} is unused"


def test_services_select_one_workload_and_reach_a_container_port():
    for service in objects("Service"):
        workload = workload_selected_by(service)
        for port in service["spec"]["ports"]:
            assert any(port_matches(port["targetPort"], c) for c in containers(workload)), \
                f"Service {service['metadata']['name']}: targetPort {port['targetPort']} " \
                f"is no container port of {workload['metadata']['name']}"
    for workload in objects("StatefulSet"):
        assert named("Service", workload["spec"]["serviceName"])
    for workload in objects("Deployment") + objects("StatefulSet"):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_ph_containers_use_only_flags_ph_accepts_and_one_image(capsys):
    assert len({c["image"] for _, c in ph_containers()}) == 1
    commands = {w["metadata"]["name"]: c["command"] for w, c in ph_containers()}
    assert commands == {"ph-serve": ["ph", "serve"], "ph-worker": ["ph", "worker"],
                        "ph-worker-gpu": ["ph", "worker"]}
    for _, container in ph_containers():
        parse_container_args(container, capsys)  # fails on a flag ph does not take


def test_serve_listens_where_the_service_and_probes_point_and_has_a_token(capsys):
    deployment = named("Deployment", "ph-serve")
    assert deployment["spec"]["replicas"] == 2
    container = the_container("Deployment", "ph-serve")
    args = parse_container_args(container, capsys)
    assert port_matches(args.port, container)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"  # the store answers
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in ph.server.app.OPEN_PATHS  # probes send no token
        assert port_matches(get["port"], container) and get["port"] in (args.port, "http")
    assert workload_selected_by(named("Service", "ph")) is deployment
    if not ph.server.app.is_loopback(args.host):  # ph serve refuses other hosts without a token
        assert env_sources(container)["PH_TOKEN"] == ("secret", "ph-secrets", "token")
    assert "nvidia.com/gpu" not in str(container["resources"])


def test_workers_listen_on_their_queues_cpu_and_gpu(capsys):
    cpu, gpu = the_container("Deployment", "ph-worker"), the_container("Deployment", "ph-worker-gpu")
    assert queues(parse_container_args(cpu, capsys)) == ["ph-train"]
    assert queues(parse_container_args(gpu, capsys)) == ["ph-gpu"]
    assert "nvidia.com/gpu" not in str(cpu["resources"])
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert named("Deployment", "ph-worker-gpu")["spec"]["replicas"] == 0
    assert named("Deployment", "ph-worker")["spec"]["replicas"] >= 1
    for container in (cpu, gpu):
        ready = parse_container_args(container, capsys).ready_file
        assert container["readinessProbe"]["exec"]["command"] == ["test", "-f", ready]
        assert "PH_TOKEN" not in env_of(container)  # workers serve nothing
    for _, container in ph_containers():
        if container["command"][1] == "worker":
            assert set(queues(parse_container_args(container, capsys))) <= QUEUES


def test_every_ph_container_has_the_same_store_and_s3_credentials():
    expected = None
    for workload, container in ph_containers():
        sources = {k: v for k, v in env_sources(container).items() if k != "PH_TOKEN"}
        expected = expected or sources
        assert sources == expected, f"{workload['metadata']['name']} differs from the others"
    assert {"PH_STORE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} \
        <= expected.keys()


def test_the_store_url_parses_with_open_stores_rules(tmp_path):
    url, parts = resolved_store(tmp_path)
    assert stores.is_distributed(url)
    split = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(split.query).items()}
    config, secret = config_values(), secret_values()
    assert split.password == secret["redis-password"]
    assert f"{split.hostname}:{split.port}{split.path}" == config["redis"]
    assert query == {"objects": f"s3://{config['bucket']}/{config['prefix']}",
                     "endpoint": config["s3-endpoint"], "namespace": "ph"}
    redis_url = split._replace(query="").geturl()
    assert {redis_url, query["objects"], query["endpoint"], "ph"} <= set(parts["given"])


def test_the_store_url_names_the_redis_that_runs_with_aof_and_the_same_password(tmp_path):
    url, _ = resolved_store(tmp_path)
    split = urlsplit(url)
    redis = workload_selected_by(service_for(split.hostname, split.port))
    assert redis["kind"] == "StatefulSet" and redis["metadata"]["name"] == "ph-redis"
    container, = containers(redis)
    args = [str(a) for a in container["args"]]
    assert flag_value(args, "--appendonly") == "yes"
    assert flag_value(args, "--appendfsync") == "always"
    assert flag_value(args, "--maxmemory-policy") == "noeviction"
    assert flag_value(args, "--dir") in claim_mounts(redis)  # the AOF is on a volume
    password_var, = SUBST.findall(flag_value(args, "--requirepass"))
    assert env_sources(container)[password_var] == ("secret", "ph-secrets", "redis-password")
    assert env_of(container)[password_var] == split.password
    service = service_for(split.hostname, split.port)
    target = next(p["targetPort"] for p in service["spec"]["ports"] if p["port"] == split.port)
    assert port_matches(target, container)


def test_the_store_url_names_the_object_store_the_job_makes_the_bucket_in(tmp_path):
    url, _ = resolved_store(tmp_path)
    query = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
    endpoint, bucket = urlsplit(query["endpoint"]), urlsplit(query["objects"]).netloc
    minio = workload_selected_by(service_for(endpoint.hostname, endpoint.port))
    assert minio["metadata"]["name"] == "ph-minio"
    server, = containers(minio)
    assert str(server["args"][1]) in claim_mounts(minio)  # `minio server DIR` on a volume
    ph_env = env_sources(the_container("Deployment", "ph-serve"))
    assert env_sources(server)["MINIO_ROOT_USER"] == ph_env["AWS_ACCESS_KEY_ID"]
    assert env_sources(server)["MINIO_ROOT_PASSWORD"] == ph_env["AWS_SECRET_ACCESS_KEY"]
    job = the_container("Job", "ph-make-bucket")
    values = env_of(job)
    script = re.sub(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", lambda m: values.get(m.group(1), m.group(0)),
                    shell_text(job))
    assert f"mc mb --ignore-existing \"ph/{bucket}\"" in script
    assert f"mc alias set ph \"{query['endpoint']}\"" in script
    assert values["AWS_ACCESS_KEY_ID"] == secret_values()["aws-access-key-id"]


# ---------------------------------------------------------------- JSORC (ph/deploy.py)


def kube_create_kinds() -> set[str]:
    """The kinds Jaseci's KubeService can create (its create_apis table)."""
    from jaseci.extens.svc.kube_svc import KubeService
    fake = types.SimpleNamespace(**{n: mock.MagicMock() for n in
                                    ("core", "api", "auth", "api_ext", "reg_api", "custom")})
    KubeService.defaults(fake)
    return set(fake.create_apis)


def test_jsorc_loads_the_action_config_in_the_structure_it_uses():
    from jaseci.jsorc.live_actions import action_configs, load_action_config
    assert load_action_config("ph.deploy", "ph")
    config = action_configs["ph"]
    assert config is ph.deploy.ACTION_CONFIGS["ph"]
    assert set(config) == {"module", "loaded_module", "remote", "local_mem_requirement"}
    assert importlib.util.find_spec(config["module"]) is not None  # module mode imports these
    assert importlib.util.find_spec(config["loaded_module"]) is not None
    assert config["local_mem_requirement"] > 0
    remote = config["remote"]  # ActionsOptimizer.kube_create: {kind: object}
    assert remote.keys() <= kube_create_kinds()
    for kind, obj in remote.items():
        assert obj["kind"] == kind and obj["metadata"]["name"]
        assert obj == named(kind, obj["metadata"]["name"])  # the objects of k8s.yaml


def test_jsorc_starts_and_retires_only_the_stateless_server():
    remote = ph.deploy.ACTION_CONFIGS["ph"]["remote"]
    assert set(remote) == {"Deployment", "Service"}
    assert remote["Deployment"]["metadata"]["name"] == "ph-serve"
    assert workload_selected_by(remote["Service"]) == remote["Deployment"]
    # ActionsOptimizer.spawn_remote calls http://<Service name>/, so port 80
    assert any(p["port"] == 80 for p in remote["Service"]["spec"]["ports"])
    assert remote["Service"]["metadata"]["name"] == "ph"


def test_jsorc_remote_refuses_two_objects_of_one_kind():
    doc = {"kind": "Service", "metadata": {"name": "a", "annotations": {"ph/jsorc": "remote"}}}
    with pytest.raises(ValueError, match="one object per kind"):
        ph.deploy.jsorc_remote([doc, {**doc, "metadata": {**doc["metadata"], "name": "b"}}])
    assert ph.deploy.jsorc_remote([{"kind": "Service", "metadata": {"name": "c"}}]) == {}


def test_the_image_runs_ph_serve_as_a_user_with_a_healthcheck_on_an_open_path():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    user = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user and user[-1] not in ("root", "0")
    cmd = next(line for line in reversed(lines) if line.startswith("CMD "))
    args = build_parser_args(json.loads(cmd[4:]))  # the exec form: no shell in between
    expose = next(int(line.split()[1]) for line in lines if line.startswith("EXPOSE "))
    assert args.command == "serve" and args.port == expose and args.host == "0.0.0.0"
    check = next(line for line in lines if line.startswith("CMD [\"python\"") or "urlopen" in line)
    path = re.search(r"127\.0\.0\.1:(\d+)(/\w+)", check)
    assert int(path.group(1)) == expose and path.group(2) in ph.server.app.OPEN_PATHS


def build_parser_args(command: list[str]) -> argparse.Namespace:
    assert command[0] == "ph"
    return ph.adapters.cli.build_parser().parse_args(command[1:])
