"""Kube's requests against a local HTTP server standing in for the apiserver: method, path, content type and body
sent, and what each answer means (created, already there, refused, gone)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetrain.operator.kube import Kube


class Apiserver(ThreadingHTTPServer):
    """Answers each request with the next status of ``answers`` and records it."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers: list[int] = []
        self.seen: list[tuple[str, str, str, dict]] = []
        self.authorization: list[str | None] = []


class _Handler(BaseHTTPRequestHandler):
    server: Apiserver

    def _answer(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        self.server.seen.append((self.command, self.path, self.headers.get("Content-Type", ""), body))
        self.server.authorization.append(self.headers.get("Authorization"))
        status = self.server.answers.pop(0)
        payload = json.dumps({"kind": "Status", "message": f"answered {status}", "code": status}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_POST = do_PATCH = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def apiserver() -> Iterator[Apiserver]:
    server = Apiserver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _kube(server: Apiserver) -> Kube:
    cfg = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    cfg.api_key = {"authorization": "Bearer t0ken"}
    return Kube(client.ApiClient(cfg))


def test_a_create_is_one_post_and_409_means_it_was_there(apiserver):
    kube = _kube(apiserver)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "j-w0-0", "namespace": "ns"}, "spec": {"containers": []}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "j-rdzv", "namespace": "ns"}, "spec": {}}
    apiserver.answers = [201, 409, 201]
    assert kube.create(pod) is True
    assert kube.create(pod) is False
    assert kube.create(service) is True
    assert [(m, p, c) for m, p, c, _ in apiserver.seen] == [
        ("POST", "/api/v1/namespaces/ns/pods", "application/json"), ("POST", "/api/v1/namespaces/ns/pods", "application/json"),
        ("POST", "/api/v1/namespaces/ns/services", "application/json")]
    assert apiserver.seen[0][3] == pod and apiserver.authorization == ["Bearer t0ken"] * 3  # the in-cluster token


def test_a_refused_create_raises_with_the_apiserver_s_message(apiserver):
    kube = _kube(apiserver)
    apiserver.answers = [403]
    with pytest.raises(ApiException) as info:
        kube.create({"kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}})
    assert info.value.status == 403 and json.loads(info.value.body)["message"] == "answered 403"


def test_a_status_patch_is_a_merge_patch_of_the_status_subresource_and_a_gone_job_is_no_error(apiserver):
    kube = _kube(apiserver)
    apiserver.answers = [200, 404, 500]
    kube.patch_job_status("ns", "j", {"phase": "Running"})
    kube.patch_job_status("ns", "gone", {"phase": "Running"})
    with pytest.raises(ApiException) as info:
        kube.patch_job_status("ns", "j", {"phase": "Failed"})
    assert info.value.status == 500
    method, path, content_type, body = apiserver.seen[0]
    assert (method, path, content_type, body) == ("PATCH", "/apis/kubetrain.dev/v1alpha1/namespaces/ns/trainingjobs/j/status",
                                                  "application/merge-patch+json", {"status": {"phase": "Running"}})
