"""deploy/: the Dockerfile, compose file and Kubernetes manifests say what the code does.
No container is built or run here (no Docker daemon, no cluster on these machines), so what
can drift is checked against the code itself: every command a container runs is one the
code has (a management command and its options, a Celery worker on a real queue, the API
server as ``make run`` starts it), every environment variable set is one the code reads,
KEDA scales on the queue the API fills, Redis is persistent and never evicts, the beat runs
once, and each manifest is well formed (``kubectl kustomize`` renders it where kubectl is
installed)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from django.core.management import get_commands, load_command_class

from deploy.devserver import _children
from workers.contract import Queue

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
# Set in the manifests for something other than this code: the model hub's offline switch
# (read by the tokenizer's libraries), the pod's own name (for --name and -n), PostgreSQL's
# image, KEDA's Redis password (its TriggerAuthentication).
READ_ELSEWHERE = {"HF_HUB_OFFLINE", "POD_NAME", "POD_IP", "PUBLIC_HOST", "POSTGRES_USER",
                  "POSTGRES_PASSWORD", "POSTGRES_DB", "REDIS_PASSWORD"}  # fmt: skip


def _k8s_documents() -> list[dict[str, Any]]:
    """The base's resources, the migrations Job and the example Secret."""
    paths = [*sorted((K8S / "base").glob("*.yaml")), K8S / "config" / "config.yaml",
             K8S / "migrate" / "job.yaml", K8S / "secret.example.yaml"]  # fmt: skip
    docs = []
    for path in paths:
        if path.name != "kustomization.yaml":
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _containers() -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, container) for every container of the manifests and the compose file."""
    for doc in _k8s_documents():
        spec = doc.get("spec", {})
        pod = spec.get("template", {}).get("spec", {})
        for container in pod.get("containers", []):
            yield f"{doc['kind']}/{doc['metadata']['name']}", container
    for name, service in _compose()["services"].items():
        if "build" in service or service.get("image", "").startswith("margin-"):
            yield (
                f"compose/{name}",
                {"command": service.get("command"), "env": service.get("environment", {})},
            )


def _dockerfile_cmds() -> dict[str, list[str]]:
    """The CMD of each stage of deploy/Dockerfile, as argv (a shell form's command parsed)."""
    cmds, stage = {}, ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            stage = line.split(" AS ")[-1].strip()
        elif line.startswith("CMD "):
            argv = yaml.safe_load(line[4:])
            if argv[:2] == ["sh", "-c"]:
                argv = shlex.split(argv[2].removeprefix("exec "))
            cmds[stage] = argv
    return cmds


def _argv(command: Any) -> list[str]:
    if isinstance(command, str):
        command = shlex.split(command)
    argv = [str(part) for part in command or []]
    if argv[:2] == ["sh", "-c"]:
        return argv
    return [re.sub(r"\$\(POD_NAME\)", "pod-0", part) for part in argv]


def _check_command(argv: list[str], where: str) -> None:
    if argv[:2] == ["sh", "-c"]:
        for part in argv[2].split("&&"):
            _check_command(shlex.split(part), where)
        return
    if argv[:2] == ["python", "manage.py"]:
        name, args = argv[2], argv[3:]
        assert name in get_commands(), f"{where}: no management command {name!r}"
        command = load_command_class(get_commands()[name], name)
        command.create_parser("manage.py", name).parse_args(args)  # exits on a bad option
        return
    if argv[:1] == ["celery"]:
        assert argv[1:3] == ["-A", "workers.celery_app"] and argv[3] == "worker", where
        queue = argv[argv.index("-Q") + 1]
        assert queue in {q.value for q in Queue}, f"{where}: no queue {queue!r}"
        assert argv[argv.index("-P") + 1] == ("solo" if queue == "training" else "threads")
        assert {"--without-gossip", "--without-mingle", "--without-heartbeat"} <= set(argv)
        return
    if argv[:1] == ["granian"]:
        assert argv[-1] == "config.wsgi:application", where
        return
    raise AssertionError(f"{where}: an unknown command {argv}")


def test_every_file_is_well_formed_yaml() -> None:
    for path in [DEPLOY / "compose.yaml", *sorted(K8S.rglob("*.yaml"))]:
        assert list(yaml.safe_load_all(path.read_text())), path


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", ["base", "gpu", "migrate"])
def test_kustomize_renders_the_base_and_the_gpu_overlay(overlay: str) -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(K8S / overlay)], capture_output=True, text=True, check=True
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    if overlay == "migrate":  # the release's settings with it, read by the Job
        assert [d["kind"] for d in docs] == ["ConfigMap", "Job"]
        assert docs[1]["spec"]["template"]["spec"]["containers"][0]["image"].endswith(
            "margin-api:0.1.0"
        )
        return
    # Applying the base never overwrites the real Secret, nor meets a finished Job's
    # unchangeable template.
    assert not {d["kind"] for d in docs} & {"Secret", "Job"}
    workers = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    inference = workers["margin-inference-worker"]["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in inference["env"]}
    if overlay == "gpu":
        assert inference["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert env["WORKER_POOL"] == "gpu-h100" and env["WORKER_MODEL_THREADS"] == "1"
        assert inference["image"].endswith("margin-worker-cuda:0.1.0")
        training = workers["margin-training-worker"]["spec"]["template"]["spec"]["containers"]
        assert "-cuda:" not in training[0]["image"]
    else:
        assert "WORKER_POOL" not in env  # the pool's price comes from margin-config


def test_every_command_a_container_runs_is_one_the_code_has() -> None:
    seen = 0
    for where, container in _containers():
        if container.get("command"):
            _check_command(_argv(container["command"]), where)
            seen += 1
    for stage, argv in _dockerfile_cmds().items():
        _check_command(argv, f"Dockerfile {stage}")
    assert seen >= 12


def test_the_images_api_server_runs_as_make_run_starts_it() -> None:
    """The same granian options as deploy/devserver.py (whose comments say why each)."""
    image = _dockerfile_cmds()["api"]
    ours = _children("8000")["api"]
    flags = {part for part in ours if part.startswith("--")} - {"--log-level"}
    assert flags <= set(image), flags - set(image)
    for flag in ("--interface", "--runtime-threads", "--runtime-mode"):
        assert image[image.index(flag) + 1] == ours[ours.index(flag) + 1]


def test_every_variable_set_is_one_the_code_reads() -> None:
    source = "\n".join(
        path.read_text()
        for folder in ("platform", "workers", "deploy")
        for path in (ROOT / folder).rglob("*.py")
        if "migrations" not in path.parts
    )
    names: set[str] = set()
    for doc in _k8s_documents():
        if doc["kind"] in ("ConfigMap", "Secret"):
            names |= set(doc.get("data") or {}) | set(doc.get("stringData") or {})
    for _, container in _containers():
        env = container.get("env") or []
        names |= {item["name"] for item in env} if isinstance(env, list) else set(env)
    unread = {name for name in names - READ_ELSEWHERE if f'"{name}"' not in source}
    assert not unread, f"set in deploy/ but read nowhere: {sorted(unread)}"
    assert {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "WORKER_PRICE_PER_HOUR"} <= names


def test_keda_scales_inference_on_the_queue_the_api_fills_in_the_redis_it_uses() -> None:
    docs = _k8s_documents()
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    assert [d["spec"]["scaleTargetRef"]["name"] for d in scaled] == ["margin-inference-worker"]
    trigger = scaled[0]["spec"]["triggers"][0]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == Queue.INFERENCE.value
    secret = next(d for d in docs if d["kind"] == "Secret")
    redis_url = urlsplit(secret["stringData"]["REDIS_URL"])
    assert trigger["metadata"]["address"] == f"{redis_url.hostname}:{redis_url.port}"
    assert trigger["metadata"]["databaseIndex"] == redis_url.path.strip("/")
    # A worker holds up to 128 messages the list no longer shows: its CPU tells it is full.
    cpu = scaled[0]["spec"]["triggers"][1]
    assert (cpu["type"], cpu["metricType"]) == ("cpu", "Utilization")
    assert 0 < int(cpu["metadata"]["value"]) <= 90


def test_one_beat_deployments_select_their_pods_and_mount_what_they_declare() -> None:
    docs = _k8s_documents()
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for doc in docs:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        spec = doc["spec"]
        pod = spec["template"]["spec"]
        if doc["kind"] == "Deployment":
            assert (
                spec["selector"]["matchLabels"].items()
                <= spec["template"]["metadata"]["labels"].items()
            ), doc["metadata"]["name"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, (doc["metadata"]["name"], mount)
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
    beat = next(d for d in docs if d["metadata"]["name"] == "margin-platform-worker")
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"


def test_the_kubelet_prometheus_and_the_service_pass_the_host_check(
    client: Any, settings: Any
) -> None:
    """The kubelet's probes and Prometheus's scrapes name the pod's IP as the Host, in-cluster
    clients the Service: ALLOWED_HOSTS refuses whatever it does not list with a 400."""
    docs = _k8s_documents()
    api = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "margin-api"
    )
    container = api["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    public = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["PUBLIC_HOST"]
    paths = [container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")]
    # Readiness is the pod's own: /readyz (the database, Redis) failing in every pod at once
    # emptied the Service in a Redis outage, and clients lost the product's JSON 503s.
    assert paths == ["/healthz", "/healthz"]
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    paths.append(annotations["prometheus.io/path"])
    for pod_ip, pod_host in (("10.0.0.7", "10.0.0.7:8000"), ("fd00::7", "[fd00::7]:8000")):
        allowed = env["ALLOWED_HOSTS"].replace("$(PUBLIC_HOST)", public)
        settings.ALLOWED_HOSTS = allowed.replace("$(POD_IP)", pod_ip).split(",")
        hosts = [pod_host, "margin-api", "margin-api.prod.svc.cluster.local", public]
        for path in paths:
            assert client.get(path, HTTP_HOST="elsewhere.example").status_code == 400
            for host in hosts:
                assert client.get(path, HTTP_HOST=host).status_code != 400, (path, host)


def test_autoscaled_deployments_leave_their_replicas_to_the_autoscaler() -> None:
    docs = _k8s_documents()
    scaled = {d["spec"]["scaleTargetRef"]["name"] for d in docs
              if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")}  # fmt: skip
    assert scaled == {"margin-api", "margin-inference-worker"}
    for doc in docs:
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] in scaled:
            assert "replicas" not in doc["spec"], doc["metadata"]["name"]


def test_each_process_without_the_api_serves_its_series_where_it_is_scraped() -> None:
    for doc in _k8s_documents():
        if doc["kind"] != "Deployment" or doc["metadata"]["name"] == "margin-api":
            continue
        template = doc["spec"]["template"]
        container = template["spec"]["containers"][0]
        env = {item["name"]: item.get("value") for item in container.get("env", [])}
        if container["image"] == "margin-api":
            annotations = template["metadata"].get("annotations", {})
            assert env["METRICS_PORT"] == annotations["prometheus.io/port"], doc["metadata"]


def test_composes_redis_keeps_the_usage_stream_and_never_evicts() -> None:
    command = _compose()["services"]["redis"]["command"]
    pairs = dict(zip(command[1::2], command[2::2], strict=False))
    assert pairs["--appendonly"] == "yes" and pairs["--maxmemory-policy"] == "noeviction"


def test_every_pod_runs_unprivileged_and_workers_hold_no_database_or_stripe_secret() -> None:
    """Workers run tenants' texts through a model and never touch the database or Stripe:
    of the Secret they get the broker's URL only. No container may gain privileges."""
    for doc in _k8s_documents():
        pod = doc.get("spec", {}).get("template", {}).get("spec")
        if not pod:
            continue
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in pod["containers"]:
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            }, where  # fmt: skip
            if container["image"] != "margin-worker":
                continue
            assert not any("secretRef" in source for source in container.get("envFrom", []))
            secrets = [
                (e["name"], e["valueFrom"]["secretKeyRef"]["key"])
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            ]
            assert secrets == [("REDIS_URL", "REDIS_URL")], where


def _deployment(name: str) -> dict[str, Any]:
    return next(
        d for d in _k8s_documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == name
    )


def test_every_process_that_reaches_the_artifact_store_mounts_it() -> None:
    """The API (uploads, deletes), the platform worker (its beat's sweeps remove deleted
    datasets' and models' files) and both workers (models read, trained, written) see the one
    store at ARTIFACT_DIR. The platform worker's was the image's empty folder: its sweeps
    found no file, took them for removed already, and the files stayed for good."""
    config = next(d for d in _k8s_documents() if d["kind"] == "ConfigMap")["data"]
    for name in ("margin-api", "margin-platform-worker", "margin-inference-worker",
                 "margin-training-worker"):  # fmt: skip
        pod = _deployment(name)["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
        mount = mounts[config["ARTIFACT_DIR"]]
        claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
        assert claim == "margin-artifacts", name
        if name != "margin-inference-worker":  # (the only one that never writes there)
            assert not mount.get("readOnly") and pod["securityContext"]["fsGroup"] == 10001


def test_the_api_is_given_the_time_its_requests_in_flight_take_to_end() -> None:
    """As long as make run waits for it (a call's timeout, and with Redis out of reach its
    give-up grace and skew), plus the preStop's pause."""
    from deploy.devserver import GRACE_S

    pod = _deployment("margin-api")["spec"]["template"]["spec"]
    pause = int(pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] >= GRACE_S + pause
    assert int(_compose()["services"]["api"]["stop_grace_period"].rstrip("s")) >= GRACE_S


def test_workers_log_what_they_serve() -> None:
    """Celery's default level is WARNING: the start-up line naming the models a worker
    loaded, on which device and precision, was never seen outside make run."""
    argvs = [(where, _argv(c.get("command"))) for where, c in _containers()]
    argvs += [(f"Dockerfile/{stage}", argv) for stage, argv in _dockerfile_cmds().items()]
    workers = [(where, argv) for where, argv in argvs if argv[:1] == ["celery"]]
    assert len(workers) >= 5
    for where, argv in workers:
        assert argv[argv.index("--loglevel") + 1] == "INFO", where


def _image_required_env() -> dict[str, list[str]]:
    """REQUIRED_ENV of each image, by its stage's name (api, worker)."""
    required, stage = {}, ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            stage = line.split(" AS ")[-1].strip()
        elif line.startswith("ENV REQUIRED_ENV="):
            required[stage] = yaml.safe_load(line.removeprefix("ENV REQUIRED_ENV=")).split()
    return required


def test_every_container_is_given_what_its_image_requires() -> None:
    """Each image names what it cannot run without; every container of the manifests and
    the compose file of that image is given each of them (the Secret's keys, its env)."""
    required = _image_required_env()
    assert required == {"api": ["SECRET_KEY", "DATABASE_URL", "REDIS_URL"], "worker": ["REDIS_URL"]}
    docs = _k8s_documents()
    secret = next(d for d in docs if d["kind"] == "Secret")["stringData"]
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec")
        for container in (pod or {}).get("containers", []):
            given = {item["name"] for item in container.get("env", [])}
            for source in container.get("envFrom", []):
                given |= set(secret if "secretRef" in source else config)
            image = container["image"].removeprefix("margin-")
            missing = set(required[image]) - given
            assert not missing, (doc["metadata"]["name"], missing)
    compose = _compose()["services"]
    for name, service in compose.items():
        image = service.get("image", "").removeprefix("margin-")
        if image in required:
            assert set(required[image]) <= set(service["environment"]), name
