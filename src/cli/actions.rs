//! `synapse-gate actions`: the action vocabulary with the Synapse operations behind each action.

use std::fmt::Write as _;

use crate::synapse;

/// A readable listing: each action, then its operations as `METHOD path  (operationId)`.
pub fn render() -> String {
    let vocabulary = synapse::vocabulary();
    let operations: usize = vocabulary.iter().map(|a| a.operations.len()).sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Synapse actions ({} actions, {operations} data-plane operations):",
        vocabulary.len()
    );
    for action in &vocabulary {
        let _ = writeln!(out, "\n{}", action.action);
        for operation in &action.operations {
            let _ = writeln!(
                out,
                "    {:<6} {}  ({})",
                operation.method, operation.path, operation.operation_id
            );
        }
    }
    let http: Vec<&str> = synapse::action_names()
        .filter(|name| name.starts_with("http."))
        .collect();
    let _ = writeln!(
        out,
        "\nUpstreams of kind http: {} (resource: path).",
        http.join(", ")
    );
    let _ = writeln!(
        out,
        "Any request no operation matches: {} (no glob matches it; only a rule that names it can allow it).",
        synapse::UNKNOWN
    );
    out
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn lists_actions_with_their_operations() {
        let text = render();
        assert!(text.starts_with("Synapse actions ("));
        assert!(text.contains("\npipelines.run\n    POST   /pipelines/{pipelineName}/createRun  (Pipeline_CreatePipelineRun)\n"));
        assert!(text.contains(
            "    GET    /livyApi/versions/{livyApiVersion}/sparkPools/{sparkPoolName}/batches/{batchId}  (SparkBatch_GetSparkBatchJob)\n"
        ));
        assert!(text.contains("http.get"));
        assert!(text.contains("unknown"));
    }
}
