// Validates custom resources (JSON array on stdin) against their CRD schemas, as compiled by the
// @kubernetes-models packages: node validate-crds.mjs <node_modules>. Exit 1 on any invalid or
// unknown resource, naming it and the failing field.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const nodeModules = process.argv[2];
const models = {
  "monitoring.coreos.com/v1 ServiceMonitor":
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor.js",
};

let failed = false;
for (const resource of JSON.parse(readFileSync(0, "utf8"))) {
  const id = `${resource.apiVersion} ${resource.kind}`;
  const where = `${resource.kind}/${resource.metadata?.name}`;
  const model = models[id];
  if (!model) {
    console.log(`${where}: no schema for ${id}`);
    failed = true;
    continue;
  }
  const module = await import(pathToFileURL(join(nodeModules, model)).href);
  try {
    new module[resource.kind](resource).validate();
  } catch (error) {
    console.log(`${where}: ${error.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
