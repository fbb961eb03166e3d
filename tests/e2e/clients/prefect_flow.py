"""A Prefect 3 flow whose task triggers a Synapse pipeline run through the gate, as a Prefect
worker would in production. No Prefect server: the flow runs in ephemeral mode (Prefect starts and
stops a temporary local API itself), with ``PREFECT_HOME`` in the test's own folder.

Run by tests/e2e_clients.rs; prints a ``RESULT`` line.
"""

import os
import time

from azure.synapse.artifacts import ArtifactsClient
from prefect import flow, task

from gate_client import IdpCredential, RequestLog, emit

ENDPOINT = os.environ["GATE_ENDPOINT"]
LOG = []


def synapse():
    return ArtifactsClient(
        IdpCredential("engineer"), ENDPOINT, per_retry_policies=[RequestLog("engineer", LOG)]
    )


@task(retries=0)
def trigger(pipeline, day):
    return synapse().pipeline.create_pipeline_run(pipeline, parameters={"day": day}).run_id


@task(retries=0)
def wait_for(run_id, timeout_seconds=30):
    client = synapse()
    deadline = time.monotonic() + timeout_seconds
    while True:
        status = client.pipeline_run.get_pipeline_run(run_id).status
        if status in ("Succeeded", "Failed", "Cancelled") or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


@flow(name="nightly-load", log_prints=True)
def nightly_load(day):
    run_id = trigger("nightly_load", day)
    status = wait_for(run_id)
    print(f"pipeline run {run_id} ended {status}")
    return {"run_id": run_id, "status": status}


if __name__ == "__main__":
    outcome = nightly_load("2026-11-22")
    assert outcome["status"] == "Succeeded", outcome
    emit({**outcome, "requests": LOG})
