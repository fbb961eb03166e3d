//! Which resource attributes each action can carry: policy loading uses this to refuse unknown
//! attribute names and to warn about conditions no request can satisfy.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use super::{table, HTTP_ACTIONS, UNKNOWN};

/// Every attribute a policy may name: the table's, plus `workspace` (from the upstream) and `path`.
pub fn attribute_names() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names: BTreeSet<&'static str> = ["workspace", "path"].into_iter().collect();
        for operation in &table().operations {
            names.extend(operation.constants.iter().map(|(name, _)| *name));
            names.extend(operation.captures.iter().map(|(_, name)| *name));
        }
        names.into_iter().collect()
    })
}

/// An attribute name and, when it is a constant for the action, its value.
pub type Attribute = (&'static str, Option<&'static str>);

/// The attributes requests with `action` can carry, each with its value when it is a constant
/// (`kind=pipelines`), `None` when it comes from the path. `workspace` is always possible.
pub fn action_attributes(action: &str) -> &'static [Attribute] {
    static BY_ACTION: OnceLock<BTreeMap<&'static str, Vec<Attribute>>> = OnceLock::new();
    let by_action = BY_ACTION.get_or_init(|| {
        let mut by_action: BTreeMap<&'static str, BTreeSet<Attribute>> = BTreeMap::new();
        for operation in &table().operations {
            let entry = by_action.entry(operation.action).or_default();
            entry.insert(("workspace", None));
            entry.extend(
                operation
                    .constants
                    .iter()
                    .map(|(name, value)| (*name, Some(*value))),
            );
            entry.extend(operation.captures.iter().map(|(_, name)| (*name, None)));
        }
        for action in HTTP_ACTIONS.iter().copied().chain(std::iter::once(UNKNOWN)) {
            let entry = by_action.entry(action).or_default();
            entry.insert(("workspace", None));
            entry.insert(("path", None));
        }
        by_action
            .into_iter()
            .map(|(action, set)| (action, set.into_iter().collect()))
            .collect()
    });
    by_action.get(action).map_or(&[], Vec::as_slice)
}
