"""The production API server exactly as ``make run`` starts it (``deploy/devserver.py``),
over real HTTP with a real worker behind it: the contract's headers, error shapes and
idempotency survive the server, concurrent classifications all get their own answers, a
multipart upload arrives whole, and SIGTERM stops every process of it. (The rest of the
suite talks to Django's live test server.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import psutil
import pytest

from deploy.devserver import _children
from deploy.embedded_redis import free_port
from tests.stack import stack_environment

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["positive", "negative"]


class Server:
    def __init__(self, url: str, secret: str, process: subprocess.Popen[bytes], log: Path):
        self.url, self.secret, self.process, self.log = url, secret, process, log

    def client(self, **headers: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.secret}", **headers},
            timeout=60,
        )


@pytest.fixture(scope="module")
def server(inference_worker: str) -> Iterator[Server]:
    work = Path(tempfile.mkdtemp(prefix="api-server-"))
    env, secret, _ = stack_environment(
        work,
        plan="pro",
        extra={
            "API_PROCESSES": "2",
            "API_THREADS": "8",
            "RESULT_CACHE_TTL_S": "0",  # every classification goes to the worker
            "STRIPE_WEBHOOK_SECRETS": "whsec_server_test",  # webhooks read their bodies
        },
    )
    port = free_port()
    log = work / "api.log"
    with mock.patch.dict(os.environ, env), log.open("wb") as out:  # _children reads os.environ
        process = subprocess.Popen(
            _children(str(port))["api"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(f"http://127.0.0.1:{port}", secret, process, log)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the API server did not start:\n{log.read_text()}")
        time.sleep(0.2)
    family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    yield server
    for member in family:  # a killed server must not leave its worker processes behind
        if member.is_running():
            member.kill()
    psutil.wait_procs(family, timeout=10)


def classify(client: httpx.Client, text: str, **headers: str) -> httpx.Response:
    body = {"model": "minilm-l6", "inputs": [text], "labels": LABELS}
    return client.post("/v1/classify", json=body, headers=headers)


def test_a_classification_through_the_server_carries_the_contracts_headers(server: Server):
    with server.client() as client:
        response = classify(client, "I love it, it works perfectly")
        ready = client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["results"][0]["label"] == "positive"
    assert body["usage"]["inputs"] == 1
    assert response.headers["X-Request-Id"] == body["id"]
    assert response.headers["Content-Type"] == "application/json"
    assert "worker;dur=" in response.headers["Server-Timing"]
    assert ready.status_code == 200 and ready.json()["status"] == "ok"


def test_concurrent_classifications_each_get_their_own_answer(server: Server):
    texts = [f"parcel {n} arrived {'early, thank you' if n % 2 else 'broken'}" for n in range(24)]
    with server.client() as client:
        alone = {text: classify(client, text).json()["results"][0] for text in texts}

    def run(text: str) -> tuple[str, dict[str, Any]]:
        with server.client() as client:
            response = classify(client, text)
            assert response.status_code == 200, response.text
            return text, response.json()

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(run, texts))
    assert len({body["id"] for _, body in answers}) == len(texts)
    for text, body in answers:
        (row,) = body["results"]
        assert row["label"] == alone[text]["label"]
        for label, score in row["scores"].items():
            assert abs(score - alone[text]["scores"][label]) < 1e-4


def test_errors_keep_their_shape_through_the_server(server: Server):
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        unauthenticated = anonymous.post("/v1/classify", json={"inputs": ["x"]})
    with server.client() as client:
        malformed = client.post(
            "/v1/classify", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        html = classify(client, "x", Accept="text/html")
        too_long = client.post(
            "/v1/classify",
            json={"model": "minilm-l6", "inputs": ["x" * 10_001], "labels": LABELS},
        )
    for response, status in (
        (unauthenticated, 401),
        (malformed, 400),
        (html, 406),
        (too_long, 413),
    ):
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["type"] and error["message"]
        assert response.headers["X-Request-Id"].startswith("req_")


def test_a_key_that_is_not_ascii_is_a_wrong_key_through_the_server(server: Server):
    """granian hands a header value that is not visible ASCII to the app as an empty string:
    such a key read as no key at all ("No API key provided"). It is a wrong key's 401, as
    UTF-8 or as latin-1 bytes on the wire, never a 500."""
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        wrong = anonymous.get("/v1/models", headers={"Authorization": "Bearer sk_test_nope"})
        sent = [
            anonymous.get("/v1/models", headers={b"Authorization": value})
            for value in (
                "Bearer sk_test_\u00e9t\u00e9".encode(),
                "Bearer sk_test_\u00e9t\u00e9".encode("latin-1"),
                f"Bearer {server.secret}\u20ac".encode(),  # a real key, one character more
            )
        ]
    assert wrong.status_code == 401
    for response in sent:
        assert response.status_code == 401, response.text
        assert response.json() == wrong.json()  # the wrong key's type, code and message
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'


def test_a_post_refused_before_its_body_is_read_keeps_the_connection_usable(server: Server):
    """A 401 or 403 answers a POST before its body is read; left unread in a keep-alive
    connection, the body made the server drop the connection, at times with no response to
    the client's next request at all."""
    body = {"model": "minilm-l6", "inputs": ["y" * 9_000] * 90, "labels": LABELS}
    refused = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(40):
            response = client.post(
                "/v1/classify", json=body, headers={"Authorization": "Bearer sk_live_nobody"}
            )
            refused.append(response.status_code)
            assert response.headers.get("Connection") != "close"
        answered = classify(client, "still here", Authorization=f"Bearer {server.secret}")
    assert refused == [401] * 40
    assert answered.status_code == 200, answered.text


def test_bodies_announced_and_never_sent_do_not_hold_the_server(server: Server):
    """More connections than the server has threads, each announcing a body it never sends:
    waiting for those bodies held every thread, and the server answered nothing while they
    stayed open. Those refused without a key are left to the server to drop; Stripe's
    webhooks, which need no key and are checked once their body is in, read at most a few
    at once (a security audit held every thread with 40 of them)."""
    import socket

    host, port = server.url.removeprefix("http://").split(":")
    heads = [
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
        b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_live_nobody\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
        b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Signature: t=1,v1=forged\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
    ]
    held = []
    try:
        for n in range(36):  # the server has 2 x 8 threads
            sock = socket.create_connection((host, int(port)))
            sock.sendall(heads[n % 3])
            held.append(sock)
        time.sleep(1)
        began = time.monotonic()
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        assert time.monotonic() - began < 5
    finally:
        for sock in held:
            sock.close()


def test_a_revoked_key_is_refused_by_every_api_process_at_once(server: Server):
    """Each API process keeps the key rows it read; a revocation still applies on the next
    request, whichever process answers it."""
    with server.client() as admin:
        created = admin.post("/v1/api-keys", json={"scopes": ["inference"]}).json()

    def get_models(secret: str) -> int:
        # A new connection each time: the server's processes share the listening socket.
        with httpx.Client(base_url=server.url, timeout=30) as client:
            response = client.get("/v1/models", headers={"Authorization": f"Bearer {secret}"})
            return response.status_code

    assert [get_models(created["secret"]) for _ in range(20)] == [200] * 20  # cached everywhere
    with server.client() as admin:
        assert admin.delete(f"/v1/api-keys/{created['id']}").status_code == 200
    assert [get_models(created["secret"]) for _ in range(20)] == [401] * 20


def test_an_idempotent_retry_is_replayed_through_the_server(server: Server):
    with server.client() as client:
        first = classify(client, "replay me", **{"Idempotency-Key": "server-1"})
        second = classify(client, "replay me", **{"Idempotency-Key": "server-1"})
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true"


def test_a_multipart_upload_arrives_whole(server: Server):
    rows = [
        {"text": f"example number {n} " + "word " * 40, "label": "ab"[n % 2]} for n in range(400)
    ]
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    with server.client() as client:
        response = client.post("/v1/datasets", files={"file": ("train.jsonl", data)})
    assert response.status_code in (200, 201), response.text
    body = response.json()
    assert (body["status"], body["rows"], body["labels"]) == ("valid", 400, {"a": 200, "b": 200})


def test_sigterm_stops_the_server_and_every_process_of_it(server: Server):
    family = [psutil.Process(server.process.pid)]
    family += family[0].children(recursive=True)
    assert len(family) == 3  # the server and its two worker processes (API_PROCESSES)
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=15)  # make run's grace period
    _, alive = psutil.wait_procs(family, timeout=5)
    assert not alive, f"still running: {alive}"
