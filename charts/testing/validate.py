#!/usr/bin/env python3
"""Checks one manifest rendered from the synapse-gate chart (run by scripts/test-kubernetes).

1. Every object validates against the Kubernetes OpenAPI schemas of each `--kube-version`
   (kubernetes-validate, strict: an unknown field is an error, as with `kubectl --validate=strict`).
   A ServiceMonitor validates against the prometheus-operator CRD schema (validate-crds.mjs).
   An object of any other kind is an error: nothing goes unvalidated.
2. The chart's promises hold for every pod that runs the gate, whatever the values: whole-directory
   mounts (never subPath, so ConfigMap updates arrive), the security context, probes on the admin
   port, the grace period above preStop sleep + drain, listen and admin ports matching the pod spec,
   and every ConfigMap or ServiceAccount the pod names rendered in the same manifest.
3. With `--gate-binary`, gate.yaml and the policy files are taken out of the rendered ConfigMaps,
   laid out as the pod mounts them (/etc/synapse-gate/{config,policies,tls,kube,secrets}), and
   `synapse-gate check` (and `synapse-gate test`, when the policies carry tests) must pass on them,
   with the pod's own SYNAPSE_GATE_* environment.
4. With `--dockerfile`, the image's entrypoint, config path and user agree with the pod spec.
"""

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import tempfile

import kubernetes_validate
import kubernetes_validate.utils
import yaml

# Each schema file is read once per run, not once per object (the definitions file is megabytes).
kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(
    kubernetes_validate.utils.schema_contents
)

GATE_CONTAINER = "synapse-gate"
MOUNT_ROOT = "/etc/synapse-gate"
CRD_GROUPS = ("monitoring.coreos.com/",)


class Problems(list):
    def add(self, where, message):
        self.append(f"{where}: {message}")


def name_of(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def validate_schemas(docs, versions, node_modules, problems):
    crds = []
    for doc in docs:
        if doc.get("apiVersion", "").startswith(CRD_GROUPS):
            crds.append(doc)
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                problems.add(name_of(doc), f"invalid for Kubernetes {version} at {path or '(root)'}: {error.message}")
            except kubernetes_validate.SchemaNotFoundError as error:
                problems.add(name_of(doc), error.message)
    if crds:
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "validate-crds.mjs")
        result = subprocess.run(
            ["node", script, node_modules], input=json.dumps(crds), capture_output=True, text=True
        )
        if result.returncode != 0:
            problems.add("custom resources", (result.stdout + result.stderr).strip())


def gate_pods(docs):
    """(owner, pod spec, the gate container, whether it is a sidecar) for every pod running the gate."""
    for doc in docs:
        if doc.get("kind") not in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            continue
        spec = doc["spec"]["template"]["spec"]
        for field, sidecar in (("containers", False), ("initContainers", True)):
            for container in spec.get(field) or []:
                if container.get("name") == GATE_CONTAINER:
                    yield doc, spec, container, sidecar or len(spec.get("containers", [])) > 1


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", []) if "value" in e}


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def gate_yaml_of(docs):
    for doc in docs:
        if doc.get("kind") == "ConfigMap" and "gate.yaml" in (doc.get("data") or {}):
            return doc, yaml.safe_load(doc["data"]["gate.yaml"])
    return None, None


def check_invariants(docs, problems):
    rendered = {(d.get("kind"), d["metadata"]["name"]) for d in docs}
    _, gate_config = gate_yaml_of(docs)
    for owner, pod, container, sidecar in gate_pods(docs):
        where = f"{name_of(owner)} container {GATE_CONTAINER}"
        volumes = {v["name"]: v for v in pod.get("volumes", [])}

        for mount in container.get("volumeMounts", []):
            if "subPath" in mount or "subPathExpr" in mount:
                problems.add(where, f"mount {mount['name']} uses subPath: the kubelet never updates those")
            if mount["mountPath"].startswith(MOUNT_ROOT) and not mount.get("readOnly"):
                problems.add(where, f"mount {mount['name']} at {mount['mountPath']} is writable")
        mounted = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        for directory in ("config", "policies"):
            if f"{MOUNT_ROOT}/{directory}" not in mounted:
                problems.add(where, f"{MOUNT_ROOT}/{directory} is not mounted as a directory")
        for name, volume in volumes.items():
            config_map = volume.get("configMap", {}).get("name")
            if config_map and config_map != "kube-root-ca.crt" and ("ConfigMap", config_map) not in rendered:
                problems.add(where, f"volume {name} names ConfigMap {config_map}, which the manifest does not contain")

        context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        expected = {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
        for field, value in expected.items():
            if context.get(field) is not value:
                problems.add(where, f"securityContext.{field} is {context.get(field)!r}, not {value!r}")
        if context.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.add(where, "securityContext.capabilities.drop is not [ALL]")
        if context.get("capabilities", {}).get("add"):
            problems.add(where, "securityContext.capabilities.add is not empty")
        if context.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.add(where, "seccompProfile is not RuntimeDefault")

        env = env_of(container)
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        admin = port_of(env.get("SYNAPSE_GATE_ADMIN_ADDRESS", ":0"))
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
            get = container.get(probe, {}).get("httpGet", {})
            if get.get("path") != path or ports.get(get.get("port")) != admin:
                problems.add(where, f"{probe} is not GET {path} on the admin port {admin}: {get}")
        if env.get("SYNAPSE_GATE_CONFIG") != f"{MOUNT_ROOT}/config/gate.yaml":
            problems.add(where, f"SYNAPSE_GATE_CONFIG is {env.get('SYNAPSE_GATE_CONFIG')!r}")
        listen = env.get("SYNAPSE_GATE_LISTEN_ADDRESS", "")
        if sidecar:
            if not listen.startswith("127.0.0.1:"):
                problems.add(where, f"the sidecar's client listener {listen!r} is not on loopback")
        elif port_of(listen) not in ports.values():
            problems.add(where, f"the client listener {listen!r} is not a container port")

        if gate_config is not None:
            if gate_config["listen"]["address"] != listen or gate_config["admin"]["address"] != env.get("SYNAPSE_GATE_ADMIN_ADDRESS"):
                problems.add(where, "gate.yaml's addresses differ from the pod's SYNAPSE_GATE_* variables")
            drain = int(str(gate_config["listen"]["drain_timeout"]).rstrip("s"))
            native = sidecar and container.get("restartPolicy") == "Always"
            pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            if not sidecar:
                if pre_stop <= 0:
                    problems.add(where, "no preStop sleep: SIGTERM would race the endpoint removal")
                grace = pod.get("terminationGracePeriodSeconds", 30)
                if grace <= pre_stop + drain:
                    problems.add(where, f"terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + drain {drain}")
            elif native and "lifecycle" in container:
                problems.add(where, "a native sidecar needs no preStop: it is stopped after the application")

        if not sidecar:
            account = pod.get("serviceAccountName")
            accounts = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ServiceAccount"}
            if accounts and account not in accounts:
                problems.add(where, f"serviceAccountName {account} is not rendered")
            annotations = accounts.get(account, {}).get("metadata", {}).get("annotations", {}) or {}
            labels = owner["spec"]["template"]["metadata"].get("labels", {})
            if "azure.workload.identity/client-id" in annotations and labels.get("azure.workload.identity/use") != "true":
                problems.add(where, "the ServiceAccount has a workload identity but the pod lacks azure.workload.identity/use")
            for service in (d for d in docs if d.get("kind") == "Service"):
                for port in service["spec"]["ports"]:
                    if port.get("targetPort") not in ports:
                        problems.add(name_of(service), f"targetPort {port.get('targetPort')} is not a port of {GATE_CONTAINER}")

    for config_map in (d for d in docs if d.get("kind") == "ConfigMap"):
        annotations = config_map["metadata"].get("annotations") or {}
        if any("checksum" in key for key in annotations):
            problems.add(name_of(config_map), "a checksum annotation would roll the pods on every change")


def write_layout(docs, root, pod_container):
    """Writes gate.yaml, the policy files and stand-in certificates as the pod would see them."""
    config_map, gate_config = gate_yaml_of(docs)
    os.makedirs(os.path.join(root, "config"))
    with open(os.path.join(root, "config", "gate.yaml"), "w") as f:
        f.write(config_map["data"]["gate.yaml"])
    policy_maps = [
        d for d in docs
        if d.get("kind") == "ConfigMap" and d is not config_map
        and d["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "synapse-gate"
    ]
    os.makedirs(os.path.join(root, "policies"))
    with_tests = False
    for policy_map in policy_maps:
        for file, text in (policy_map.get("data") or {}).items():
            with open(os.path.join(root, "policies", file), "w") as f:
                f.write(text)
            with_tests = with_tests or bool((yaml.safe_load(text) or {}).get("tests"))
    # Stand-ins for the TLS Secret and the cluster CA: `check` reads and parses them.
    os.makedirs(os.path.join(root, "tls"))
    os.makedirs(os.path.join(root, "kube"))
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", "/CN=synapse-gate chart test", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", os.path.join(root, "tls", "tls.key"), "-out", os.path.join(root, "tls", "tls.crt")],
        check=True, capture_output=True,
    )
    for copy in (os.path.join(root, "tls", "ca.crt"), os.path.join(root, "kube", "ca.crt")):
        with open(os.path.join(root, "tls", "tls.crt")) as src, open(copy, "w") as dst:
            dst.write(src.read())
    env = {k: v for k, v in env_of(pod_container).items() if k.startswith("SYNAPSE_GATE_")} if pod_container else {}
    env["SYNAPSE_GATE_CONFIG"] = os.path.join(root, "config", "gate.yaml")
    return env, with_tests


def run_gate_checks(docs, binary, problems):
    pods = list(gate_pods(docs))
    container = pods[0][2] if pods else None
    with tempfile.TemporaryDirectory() as root:
        env, with_tests = write_layout(docs, root, container)
        commands = [["check"]] + ([["test"]] if with_tests else [])
        for command in commands:
            result = subprocess.run(
                [binary, *command], env={**os.environ, **env, "SYNAPSE_GATE_LOG_FORMAT": "human"},
                capture_output=True, text=True,
            )
            output = (result.stdout + result.stderr).strip()
            if result.returncode != 0:
                problems.add(f"synapse-gate {command[0]}", output)
            else:
                print(f"    synapse-gate {command[0]}: {output.splitlines()[-1] if output else 'ok'}", flush=True)


def check_dockerfile(docs, dockerfile, problems):
    text = open(dockerfile).read()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    user = re.search(r"^USER (\d+)(?::(\d+))?$", text, re.M)
    config = re.search(r"SYNAPSE_GATE_CONFIG=(\S+)", text)
    for owner, pod, container, _ in gate_pods(docs):
        where = f"Dockerfile vs {name_of(owner)}"
        if "command" in container:
            problems.add(where, "the chart replaces the image's ENTRYPOINT")
        if container.get("args") != ["serve"] or not entrypoint[0].endswith("/synapse-gate"):
            problems.add(where, f"ENTRYPOINT {entrypoint} + args {container.get('args')} is not `synapse-gate serve`")
        if config is None or config.group(1) != env_of(container).get("SYNAPSE_GATE_CONFIG"):
            problems.add(where, "the image's SYNAPSE_GATE_CONFIG is not where the chart mounts gate.yaml")
        context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        if user is None or int(user.group(1)) != context.get("runAsUser"):
            problems.add(where, f"the image's USER is not the chart's runAsUser {context.get('runAsUser')}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("--kube-version", action="append", required=True)
    parser.add_argument("--node-modules", required=True)
    parser.add_argument("--gate-binary")
    parser.add_argument("--dockerfile")
    parser.add_argument("--expect-kinds", help="comma-separated kinds the manifest must contain, exactly")
    args = parser.parse_args()

    with open(args.manifest) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    problems = Problems()
    kinds = sorted(d["kind"] for d in docs)
    if args.expect_kinds is not None and kinds != sorted(args.expect_kinds.split(",")):
        problems.add(args.manifest, f"rendered kinds {kinds}, expected {sorted(args.expect_kinds.split(','))}")
    validate_schemas(docs, args.kube_version, args.node_modules, problems)
    check_invariants(docs, problems)
    if args.gate_binary:
        run_gate_checks(docs, args.gate_binary, problems)
    if args.dockerfile:
        check_dockerfile(docs, args.dockerfile, problems)
    if problems:
        print(f"{args.manifest}: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"    {len(docs)} objects valid for Kubernetes {', '.join(args.kube_version)}: {', '.join(kinds)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
