#!/usr/bin/env python3
"""Generates src/synapse/operations.tsv, the Synapse operation table, from the official REST specs.

Usage (from the repository root):

    python3 src/synapse/generate.py            # rewrite src/synapse/operations.tsv
    python3 src/synapse/generate.py --check    # exit 1 if the committed table is stale

The specs are read as data from ../shared/reference/synapse-rest/specification/synapse/data-plane
(override with --specs DIR); nothing from them is copied except the facts each row holds:
method, path template, operationId, the action it maps to, and the resource attributes its path
yields. The mapping rules live in this file, below, and are the ones to review:

* ARTIFACT_KINDS: plain artifact CRUD is recognised by shape (`GET /<kind>`, `GET|PUT|DELETE
  /<kind>/{name}`, `POST /<kind>/{name}/rename`) and maps to `<kind>.read|write|delete|rename`.
* EXPLICIT: every other operation is named here, operationId → action. An operation that is in
  neither, or in both, stops the generator: nothing is mapped by accident.
* PARAMETER_ATTRIBUTES: which resource attribute each path parameter fills.
* KIND_OF_ACTION: the constant `kind` attribute, from the action's `<kind>` part.

Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_SPECS = REPO.parent / "shared/reference/synapse-rest/specification/synapse/data-plane"
TABLE = HERE / "operations.tsv"

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")

# First path segment (spec spelling) → artifact kind. These kinds share read|write|delete|rename.
ARTIFACT_KINDS = {
    "pipelines": "pipelines",
    "notebooks": "notebooks",
    "sqlScripts": "sql_scripts",
    "sparkJobDefinitions": "spark_job_definitions",
    "dataflows": "dataflows",
    "datasets": "datasets",
    "linkedservices": "linked_services",
    "triggers": "triggers",
    "credentials": "credentials",
    "kqlScripts": "kql_scripts",
    "sparkconfigurations": "spark_configurations",
    "libraries": "libraries",
    "linkconnections": "link_connections",
    "databases": "lake_databases",
}

# Everything that is not plain artifact CRUD, by operationId.
EXPLICIT = {
    # Workspace, pools, git.
    "Workspace_Get": "workspace.read",
    "BigDataPools_List": "pools.read",
    "BigDataPools_Get": "pools.read",
    "SqlPools_List": "pools.read",
    "SqlPools_Get": "pools.read",
    "IntegrationRuntimes_List": "pools.read",
    "IntegrationRuntimes_Get": "pools.read",
    "WorkspaceGitRepoManagement_getGitHubAccessToken": "git.token",
    # Pipelines and their runs.
    "Pipeline_CreatePipelineRun": "pipelines.run",
    "PipelineRun_QueryPipelineRunsByWorkspace": "pipeline_runs.read",
    "PipelineRun_GetPipelineRun": "pipeline_runs.read",
    "PipelineRun_QueryActivityRuns": "pipeline_runs.read",
    "PipelineRun_CancelPipelineRun": "pipeline_runs.cancel",
    # Triggers and their runs.
    "Trigger_GetEventSubscriptionStatus": "triggers.read",
    "Trigger_SubscribeTriggerToEvents": "triggers.control",
    "Trigger_UnsubscribeTriggerFromEvents": "triggers.control",
    "Trigger_StartTrigger": "triggers.control",
    "Trigger_StopTrigger": "triggers.control",
    "TriggerRun_QueryTriggerRunsByWorkspace": "trigger_runs.read",
    "TriggerRun_RerunTriggerInstance": "trigger_runs.rerun",
    "TriggerRun_CancelTriggerInstance": "trigger_runs.cancel",
    # Notebooks and their runs.
    "Notebook_GetNotebookSummaryByWorkSpace": "notebooks.read",
    "RunNotebook_CreateRun": "notebooks.run",
    "RunNotebook_GetStatus": "notebook_runs.read",
    "RunNotebook_GetSnapshot": "notebook_runs.read",
    "RunNotebook_CancelRun": "notebook_runs.cancel",
    # Spark job definitions.
    "SparkJobDefinition_ExecuteSparkJobDefinition": "spark_job_definitions.execute",
    "SparkJobDefinition_DebugSparkJobDefinition": "spark_job_definitions.debug",
    # Livy: batches, sessions, statements.
    "SparkBatch_GetSparkBatchJobs": "spark.batches.read",
    "SparkBatch_GetSparkBatchJob": "spark.batches.read",
    "SparkBatch_CreateSparkBatchJob": "spark.batches.submit",
    "SparkBatch_CancelSparkBatchJob": "spark.batches.cancel",
    "SparkSession_GetSparkSessions": "spark.sessions.read",
    "SparkSession_GetSparkSession": "spark.sessions.read",
    "SparkSession_CreateSparkSession": "spark.sessions.create",
    # Keeping a session alive spends compute like creating one.
    "SparkSession_ResetSparkSessionTimeout": "spark.sessions.create",
    "SparkSession_CancelSparkSession": "spark.sessions.cancel",
    "SparkSession_GetSparkStatements": "spark.statements.read",
    "SparkSession_GetSparkStatement": "spark.statements.read",
    "SparkSession_CreateSparkStatement": "spark.statements.submit",
    "SparkSession_CancelSparkStatement": "spark.statements.cancel",
    # Data flow debug sessions (starting one spends compute, like a Spark session).
    "DataFlowDebugSession_CreateDataFlowDebugSession": "dataflow_debug.create",
    "DataFlowDebugSession_QueryDataFlowDebugSessionsByWorkspace": "dataflow_debug.read",
    "DataFlowDebugSession_AddDataFlow": "dataflow_debug.write",
    "DataFlowDebugSession_DeleteDataFlowDebugSession": "dataflow_debug.delete",
    "DataFlowDebugSession_ExecuteCommand": "dataflow_debug.execute",
    # Libraries: append and flush are parts of an upload.
    "Library_Flush": "libraries.write",
    # Long-running-operation polling.
    "OperationResult_Get": "operations.read",
    "OperationStatus_Get": "operations.read",
    "NotebookOperationResult_Get": "operations.read",
    "Library_GetOperationResult": "operations.read",
    "GetSyMSOperationStatus": "operations.read",
    # Synapse RBAC.
    "RoleAssignments_ListRoleAssignments": "rbac.read",
    "RoleAssignments_GetRoleAssignmentById": "rbac.read",
    "RoleAssignments_CreateRoleAssignment": "rbac.write",
    "RoleAssignments_DeleteRoleAssignmentById": "rbac.delete",
    "RoleAssignments_CheckPrincipalAccess": "rbac.check",
    "RoleDefinitions_ListRoleDefinitions": "rbac.read",
    "RoleDefinitions_GetRoleDefinitionById": "rbac.read",
    "RoleDefinitions_ListScopes": "rbac.read",
    # Managed private endpoints.
    "ManagedPrivateEndpoints_List": "managed_private_endpoints.read",
    "ManagedPrivateEndpoints_Get": "managed_private_endpoints.read",
    "ManagedPrivateEndpoints_Create": "managed_private_endpoints.write",
    "ManagedPrivateEndpoints_Delete": "managed_private_endpoints.delete",
    # Monitoring.
    "Monitoring_GetSparkJobList": "monitoring.read",
    "Monitoring_GetSqlJobQueryString": "monitoring.read",
    # Link connections: start/stop/pause/resume change run state, like triggers.control.
    "LinkConnection_Start": "link_connections.control",
    "LinkConnection_Stop": "link_connections.control",
    "LinkConnection_Pause": "link_connections.control",
    "LinkConnection_Resume": "link_connections.control",
    "LinkConnection_EditTables": "link_connections.write",
    "LinkConnection_UpdateLandingZoneCredential": "link_connections.write",
    "LinkConnection_GetDetailedStatus": "link_connections.read",
    "LinkConnection_ListLinkTables": "link_connections.read",
    "LinkConnection_QueryTableStatus": "link_connections.read",
    # Lake databases (SyMS API and metastore sync).
    "ExecuteChange": "lake_databases.write",
    "ExecuteChangeWithValidation": "lake_databases.write",
    "ListArtifacts": "lake_databases.read",
    "ListArtifactsInSchemaByType": "lake_databases.read",
    "ListPartitionInfosForTable": "lake_databases.read",
    "ListPartitionInfosForView": "lake_databases.read",
    "ListPartitionInfosForSchemaAndTable": "lake_databases.read",
    "ListPartitionInfosForSchemaAndView": "lake_databases.read",
    "GetArtifactFromDB": "lake_databases.read",
    "PutArtifactInDB": "lake_databases.write",
    "DeleteArtifactForDB": "lake_databases.delete",
    "GetArtifactFromSchema": "lake_databases.read",
    "PutArtifactInSchema": "lake_databases.write",
    "DeleteArtifactFromSchema": "lake_databases.delete",
    "Metastore_Register": "lake_databases.write",
    "Metastore_GetDatabaseOperations": "lake_databases.read",
    "Metastore_Update": "lake_databases.write",
    "Metastore_Delete": "lake_databases.delete",
}

# Path parameter → resource attribute. Parameters not listed here stop the generator;
# None means "matched, not an attribute".
_ARTIFACT_NAMES = (
    "pipelineName notebookName sqlScriptName sparkJobDefinitionName dataFlowName datasetName "
    "linkedServiceName triggerName credentialName kqlScriptName sparkConfigurationName libraryName "
    "linkConnectionName managedPrivateEndpointName artifactName"
).split()
PARAMETER_ATTRIBUTES = {
    **{name: "name" for name in _ARTIFACT_NAMES},
    "bigDataPoolName": "pool",
    "sparkPoolName": "pool",
    "sqlPoolName": "pool",
    "integrationRuntimeName": "integration_runtime",
    "runId": "run_id",
    "batchId": "batch_id",
    "sessionId": "session_id",
    "statementId": "statement_id",
    "operationId": "operation_id",
    "managedVirtualNetworkName": "managed_vnet",
    "roleAssignmentId": "role_assignment_id",
    "roleDefinitionId": "role_definition_id",
    "databaseName": "database",
    "schemaName": "schema",
    "tableName": "table",
    "viewName": "view",
    "artifactType": "artifact_type",
    "livyApiVersion": None,
}
# Metastore operations call the database name `{id}`.
PARAMETER_ATTRIBUTES_BY_OPERATION = {
    ("Metastore_Register", "id"): "database",
    ("Metastore_GetDatabaseOperations", "id"): "database",
    ("Metastore_Update", "id"): "database",
    ("Metastore_Delete", "id"): "database",
}

# The constant `kind` attribute: artifact kinds, and the kind whose runs an action concerns.
KIND_OF_ACTION = {
    **{kind: kind for kind in ARTIFACT_KINDS.values()},
    "pipeline_runs": "pipelines",
    "trigger_runs": "triggers",
    "notebook_runs": "notebooks",
    "managed_private_endpoints": "managed_private_endpoints",
}
# pools.read names which pool kind from the first path segment.
POOL_KINDS = {"bigDataPools": "spark_pools", "sqlPools": "sql_pools", "integrationRuntimes": "integration_runtimes"}

ACTION_FORM = re.compile(r"^[a-z_]+(\.[a-z_]+)+$")
PARAM = re.compile(r"\{([^{}]+)\}")


def fail(message: str) -> None:
    sys.exit(f"generate.py: {message}")


def spec_operations(specs: Path):
    """Every (method, path template, operationId, [path parameter names]) in the spec files."""
    files = sorted(p for p in specs.rglob("*.json") if "examples" not in p.parts)
    if not files:
        fail(f"no spec files under {specs}")
    for file in files:
        doc = json.loads(file.read_text(encoding="utf-8"))
        for section in ("paths", "x-ms-paths"):
            for template, item in (doc.get(section) or {}).items():
                for method, op in item.items():
                    if method not in METHODS:
                        continue
                    yield method.upper(), template, op["operationId"], file.relative_to(specs)


def map_action(method: str, template: str, operation_id: str) -> str:
    path = template.split("?", 1)[0]
    segments = path.strip("/").split("/")
    by_shape = None
    kind = ARTIFACT_KINDS.get(segments[0])
    if kind:
        shape = ["{}" if PARAM.fullmatch(s) else s for s in segments[1:]]
        if shape == [] and method == "GET":
            by_shape = f"{kind}.read"
        elif shape == ["{}"]:
            by_shape = {"GET": f"{kind}.read", "PUT": f"{kind}.write", "DELETE": f"{kind}.delete"}.get(method)
        elif shape == ["{}", "rename"] and method == "POST":
            by_shape = f"{kind}.rename"
    explicit = EXPLICIT.get(operation_id)
    if by_shape and explicit:
        fail(f"{operation_id} is plain artifact CRUD ({by_shape}); remove it from EXPLICIT")
    action = by_shape or explicit
    if not action:
        fail(f"no action for {method} {template} ({operation_id}): add it to EXPLICIT")
    if not ACTION_FORM.match(action):
        fail(f"action {action!r} is not of the form <kind>.<verb>")
    return action


def attributes(template: str, operation_id: str, action: str) -> str:
    path = template.split("?", 1)[0]
    pairs = []
    prefix = action.rsplit(".", 1)[0]
    kind = KIND_OF_ACTION.get(prefix)
    if action == "pools.read":
        kind = POOL_KINDS[path.strip("/").split("/")[0]]
    if kind:
        pairs.append(f"kind={kind}")
    for param in PARAM.findall(path):
        key = (operation_id, param)
        if key in PARAMETER_ATTRIBUTES_BY_OPERATION:
            attribute = PARAMETER_ATTRIBUTES_BY_OPERATION[key]
        elif param in PARAMETER_ATTRIBUTES:
            attribute = PARAMETER_ATTRIBUTES[param]
        else:
            fail(f"path parameter {{{param}}} of {operation_id} has no attribute: add it to PARAMETER_ATTRIBUTES")
        if attribute:
            pairs.append(f"{attribute}={{{param}}}")
    names = [p.split("=", 1)[0] for p in pairs]
    if len(names) != len(set(names)):
        fail(f"{operation_id} binds one attribute twice: {pairs}")
    return " ".join(pairs) or "-"


def check_literals(rows) -> None:
    """Sibling literal segments must differ case-insensitively (the classifier ignores case)."""
    seen = {}
    for _, template, _, _, _ in rows:
        segments = template.split("?", 1)[0].strip("/").split("/")
        for depth, segment in enumerate(segments):
            if PARAM.search(segment):
                continue
            parent = tuple("{}" if PARAM.search(s) else s.lower() for s in segments[:depth])
            spelled = seen.setdefault((parent, segment.lower()), segment)
            if spelled != segment:
                fail(f"literal {segment!r} and {spelled!r} differ only in case")


def build(specs: Path) -> str:
    rows = []
    seen = {}
    for method, template, operation_id, source in spec_operations(specs):
        key = (method, template)
        if key in seen:
            if seen[key] != operation_id:
                fail(f"{method} {template} is both {seen[key]} and {operation_id} ({source})")
            continue  # the same operation in another spec version
        seen[key] = operation_id
        action = map_action(method, template, operation_id)
        rows.append((method, template, operation_id, action, attributes(template, operation_id, action)))
    unused = set(EXPLICIT) - {row[2] for row in rows}
    if unused:
        fail(f"EXPLICIT names operations the specs do not have: {sorted(unused)}")
    # Operations that differ only in their query string (Library_Append) are one route: same action.
    routes = {}
    for method, template, operation_id, action, _ in rows:
        route = (method, template.split("?", 1)[0])
        if routes.setdefault(route, action) != action:
            fail(f"{method} {route[1]} maps to two actions")
    check_literals(rows)
    order = {m.upper(): i for i, m in enumerate(METHODS)}
    rows.sort(key=lambda r: (r[1].split("?", 1)[0].lower(), "?" in r[1], order[r[0]], r[1]))
    lines = [
        "# Synapse data-plane operations: method, path template, operationId, action, resource attributes.",
        "# Generated by src/synapse/generate.py from the specs in ../shared/reference/synapse-rest; do not edit.",
        f"# {len(rows)} operations, {len({r[3] for r in rows})} actions.",
    ]
    lines += ["\t".join(row) for row in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", type=Path, default=DEFAULT_SPECS, help="data-plane spec folder")
    parser.add_argument("--out", type=Path, default=TABLE, help="table file to write")
    parser.add_argument("--check", action="store_true", help="fail if the table file is stale")
    args = parser.parse_args()
    table = build(args.specs)
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != table:
            fail(f"{args.out} is stale: run python3 src/synapse/generate.py")
        return
    args.out.write_text(table, encoding="utf-8")
    print(f"wrote {args.out} ({table.count(chr(10)) - 3} operations)")


if __name__ == "__main__":
    main()
