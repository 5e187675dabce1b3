//! Namespaces' annotations, which the workloads in them inherit: the
//! inject switch and the `config.*` settings (a workload's own win).
//!
//! `linnet inject` on files finds them among the objects it reads (a
//! `Namespace` in the same input); the webhook asks the API server
//! (`webhook::namespaces`).

use crate::{Object, annotations};
use std::collections::BTreeMap;
use yaml_serde::Value;

/// The inherited annotations of namespaces, by namespace name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespaces(BTreeMap<String, BTreeMap<String, String>>);

// === impl Namespaces ===

impl Namespaces {
    /// The `Namespace` objects among `objects` (the items of `List`s
    /// included). Annotations that are not strings are ignored, as are
    /// those a workload does not inherit.
    pub fn from_objects(objects: &[Object]) -> Self {
        let mut namespaces = Namespaces::default();
        for object in objects {
            namespaces.collect(object);
        }
        namespaces
    }

    fn collect(&mut self, object: &Object) {
        match object {
            Object::List { items, .. } => items.iter().for_each(|o| self.collect(o)),
            Object::Other(value) => {
                let is_namespace = value.get("apiVersion").and_then(Value::as_str) == Some("v1")
                    && value.get("kind").and_then(Value::as_str) == Some("Namespace");
                let metadata = value.get("metadata");
                let name = metadata.and_then(|m| m.get("name")).and_then(Value::as_str);
                let (true, Some(name)) = (is_namespace, name) else {
                    return;
                };
                let annotations = metadata
                    .and_then(|m| m.get("annotations"))
                    .and_then(Value::as_mapping)
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())));
                self.insert(name, annotations);
            }
            _ => {}
        }
    }

    /// Records the annotations of namespace `name`, keeping those its
    /// workloads inherit.
    pub fn insert(&mut self, name: &str, annotations: impl IntoIterator<Item = (String, String)>) {
        let kept = annotations
            .into_iter()
            .filter(|(k, _)| annotations::inherited(k))
            .collect();
        self.0.insert(name.to_string(), kept);
    }

    /// The inherited annotations of namespace `name`, if it is known.
    pub fn get(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.0.get(name)
    }

    /// [`Namespaces::get`], with the name as stored.
    pub(crate) fn get_key_value(&self, name: &str) -> Option<(&str, &BTreeMap<String, String>)> {
        self.0.get_key_value(name).map(|(k, v)| (k.as_str(), v))
    }
}
