//! The resource attributes of one request.

use serde::ser::SerializeMap;

/// Resource attributes from the path (names percent-decoded), in insertion order; serialized as a
/// JSON object. `kind` is the artifact kind (e.g. `pipelines`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct Resource {
    #[serde(serialize_with = "as_map")]
    attributes: Vec<(&'static str, String)>,
}

impl Resource {
    pub(super) fn with_capacity(capacity: usize) -> Self {
        Self {
            attributes: Vec::with_capacity(capacity),
        }
    }

    /// The value of `attribute`, if the request has it.
    pub fn get(&self, attribute: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(name, _)| *name == attribute)
            .map(|(_, value)| value.as_str())
    }

    /// Sets `attribute`, replacing an earlier value.
    pub fn insert(&mut self, attribute: &'static str, value: String) {
        match self
            .attributes
            .iter_mut()
            .find(|(name, _)| *name == attribute)
        {
            Some((_, old)) => *old = value,
            None => self.attributes.push((attribute, value)),
        }
    }

    /// Every attribute as `(name, value)`, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attributes
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
    }

    pub fn len(&self) -> usize {
        self.attributes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.attributes.is_empty()
    }
}

fn as_map<S: serde::Serializer>(
    attributes: &[(&'static str, String)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(attributes.len()))?;
    for (name, value) in attributes {
        map.serialize_entry(name, value)?;
    }
    map.end()
}
