"""The Azure SDK for Python against the gate, as an application would use it: nothing changed
but the endpoint (``GATE_ENDPOINT``, e.g. ``https://127.0.0.1:PORT/ws/contoso``).

Run by tests/e2e_clients.rs, which reads the ``RESULT`` line and checks it against what the
Synapse simulator received and what the gate's audit log recorded. Every SDK-level expectation is
asserted here as well, so a failure names the call that broke.
"""

import datetime
import os

from azure.core.exceptions import HttpResponseError
from azure.synapse.artifacts import ArtifactsClient
from azure.synapse.artifacts.models import (
    PipelineResource,
    RunFilterParameters,
    RunQueryFilter,
    WaitActivity,
)
from azure.synapse.spark import SparkClient
from azure.synapse.spark.models import SparkBatchJobOptions

from gate_client import IdpCredential, RequestLog, emit

ENDPOINT = os.environ["GATE_ENDPOINT"]
EXPECTED_PIPELINES = sorted(os.environ["EXPECTED_PIPELINES"].split(","))
LOG = []


def artifacts(persona):
    return ArtifactsClient(
        IdpCredential(persona), ENDPOINT, per_retry_policies=[RequestLog(persona, LOG)]
    )


def spark(persona, pool):
    return SparkClient(
        IdpCredential(persona),
        ENDPOINT,
        pool,
        per_retry_policies=[RequestLog(persona, LOG)],
    )


def refused(call):
    """Runs a call that the gate must refuse; returns the SDK's error."""
    try:
        call()
    except HttpResponseError as error:
        return {
            "type": type(error).__name__,
            "status": error.status_code,
            "code": error.error.code if error.error else None,
            "message": error.error.message if error.error else str(error),
        }
    raise AssertionError("the gate let a refused call through")


def main():
    analyst = artifacts("analyst")
    engineer = artifacts("engineer")
    intern = artifacts("intern")

    # Listing follows nextLink across pages; the links must lead back through the gate.
    names = sorted(p.name for p in analyst.pipeline.get_pipelines_by_workspace())
    assert names == EXPECTED_PIPELINES, names

    # A long-running create: 202 + Location, polled through the gate until done.
    poller = engineer.pipeline.begin_create_or_update_pipeline(
        "nightly_e2e",
        PipelineResource(
            activities=[WaitActivity(name="Wait", wait_time_in_seconds=1)],
            parameters={},
        ),
        # Synapse answers `Retry-After: 0`, which azure-core reads as "use the default" (30 s).
        polling_interval=0.2,
    )
    created = poller.result()
    assert created.name == "nightly_e2e", created
    assert poller.status() == "Succeeded", poller.status()

    run = engineer.pipeline.create_pipeline_run("nightly_e2e", parameters={"day": "2026-11-22"})
    assert run.run_id
    fetched = engineer.pipeline_run.get_pipeline_run(run.run_id)
    assert fetched.pipeline_name == "nightly_e2e", fetched
    now = datetime.datetime.now(datetime.timezone.utc)
    runs = engineer.pipeline_run.query_pipeline_runs_by_workspace(
        RunFilterParameters(
            last_updated_after=now - datetime.timedelta(days=1),
            last_updated_before=now + datetime.timedelta(days=1),
            filters=[
                RunQueryFilter(operand="PipelineName", operator="Equals", values=["nightly_e2e"])
            ],
        )
    )
    assert [r.run_id for r in runs.value] == [run.run_id], runs.value

    etl = spark("engineer", "etl")
    batch = etl.spark_batch.create_spark_batch_job(
        SparkBatchJobOptions(
            name="daily-etl", file="abfss://jobs@contosolake.dfs.core.windows.net/etl.py"
        )
    )
    assert batch.id is not None and batch.spark_pool_name == "etl", batch
    again = etl.spark_batch.get_spark_batch_job(batch.id)
    assert again.name == "daily-etl", again
    listed = etl.spark_batch.get_spark_batch_jobs()
    assert [b.id for b in listed.sessions] == [batch.id], listed.sessions

    # Refusals arrive as the SDK's own error type, carrying the gate's message.
    intern_list = refused(lambda: list(intern.pipeline.get_pipelines_by_workspace()))
    analyst_write = refused(
        lambda: analyst.pipeline.begin_create_or_update_pipeline(
            "sneaky", PipelineResource(activities=[]), polling_interval=0.2
        ).result()
    )
    intern_spark = refused(
        lambda: spark("intern", "etl").spark_batch.create_spark_batch_job(
            SparkBatchJobOptions(name="x", file="abfss://jobs@contosolake.dfs.core.windows.net/x.py")
        )
    )

    emit(
        {
            "pipelines": names,
            "run_id": run.run_id,
            "batch_id": batch.id,
            "refused": {
                "intern_list": intern_list,
                "analyst_write": analyst_write,
                "intern_spark": intern_spark,
            },
            "requests": LOG,
        }
    )


if __name__ == "__main__":
    main()
