"""A FastAPI service with the gate as its sidecar.

The service receives its users' bearer tokens and calls Synapse on their behalf through the gate
next to it (plain HTTP on loopback, ``SIDECAR_URL``), with the Azure SDK and no Synapse credential
of its own: the gate decides per user and swaps the token. The script starts the service with
uvicorn on a free loopback port, then plays the users (tokens from the identity provider) with
httpx. Run by tests/e2e_clients.rs; prints a ``RESULT`` line.
"""

import os
import socket
import threading
import time

import httpx
import uvicorn
from azure.core.exceptions import HttpResponseError
from azure.synapse.artifacts import ArtifactsClient
from fastapi import FastAPI, Header, HTTPException

from gate_client import IdpCredential, RequestLog, StaticCredential, emit

SIDECAR_URL = os.environ["SIDECAR_URL"]
EXPECTED_PIPELINES = sorted(os.environ["EXPECTED_PIPELINES"].split(","))
LOG = []

app = FastAPI(title="reports")


def synapse_for(authorization, user):
    """An SDK client that presents the user's own token to the sidecar."""
    if not authorization or not authorization.startswith("Bearer "):
        raise HTTPException(status_code=401, detail="a bearer token is required")
    token = authorization.removeprefix("Bearer ")
    return ArtifactsClient(
        StaticCredential(token), SIDECAR_URL, per_retry_policies=[RequestLog(user, LOG)]
    )


def relay(error):
    """The gate's refusal, passed on to the service's own caller."""
    message = error.error.message if error.error else str(error)
    return HTTPException(status_code=error.status_code or 502, detail=message)


# The sidecar listens on plain HTTP inside the pod, so each call opts out of azure-core's
# HTTPS-only bearer policy (azure-facts.md G.1: per request only).
@app.get("/reports/pipelines")
def pipelines(authorization: str | None = Header(default=None), x_user: str = Header(default="?")):
    client = synapse_for(authorization, x_user)
    try:
        return sorted(p.name for p in client.pipeline.get_pipelines_by_workspace(enforce_https=False))
    except HttpResponseError as error:
        raise relay(error) from error


@app.post("/reports/pipelines/{name}/run")
def run(name: str, authorization: str | None = Header(default=None), x_user: str = Header(default="?")):
    client = synapse_for(authorization, x_user)
    try:
        return {"run_id": client.pipeline.create_pipeline_run(name, enforce_https=False).run_id}
    except HttpResponseError as error:
        raise relay(error) from error


def serve():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def main():
    server, thread, base = serve()
    try:
        def call(method, path, persona):
            headers = {"x-user": persona or "anonymous"}
            if persona:
                headers["authorization"] = "Bearer " + IdpCredential(persona).get_token().token
            return httpx.request(method, base + path, headers=headers, timeout=30)

        listed = call("GET", "/reports/pipelines", "analyst")
        assert listed.status_code == 200, listed.text
        assert listed.json() == EXPECTED_PIPELINES, listed.json()
        started = call("POST", "/reports/pipelines/nightly_load/run", "engineer")
        assert started.status_code == 200, started.text
        denied = call("GET", "/reports/pipelines", "intern")
        assert denied.status_code == 403, denied.text
        anonymous = call("GET", "/reports/pipelines", None)
        assert anonymous.status_code == 401, anonymous.text
        emit(
            {
                "pipelines": listed.json(),
                "run_id": started.json()["run_id"],
                "denied": {"status": denied.status_code, "detail": denied.json()["detail"]},
                "anonymous": {"status": anonymous.status_code, "detail": anonymous.json()["detail"]},
                "requests": LOG,
            }
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)


if __name__ == "__main__":
    main()
