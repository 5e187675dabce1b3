//! Kubernetes objects as read from and written to multi-document YAML.
//!
//! Workloads are parsed into their `k8s-openapi` types; any other kind is
//! kept as the YAML value it was, so it is written back unchanged.

use crate::Error;
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet},
    batch::v1::{CronJob, Job},
    core::v1::Pod,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use yaml_serde::{Mapping, Value};

/// One object of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// `v1` `Pod`.
    Pod(Box<Pod>),
    /// `apps/v1` `Deployment`.
    Deployment(Box<Deployment>),
    /// `apps/v1` `StatefulSet`.
    StatefulSet(Box<StatefulSet>),
    /// `apps/v1` `DaemonSet`.
    DaemonSet(Box<DaemonSet>),
    /// `apps/v1` `ReplicaSet`.
    ReplicaSet(Box<ReplicaSet>),
    /// `batch/v1` `Job`.
    Job(Box<Job>),
    /// `batch/v1` `CronJob`.
    CronJob(Box<CronJob>),
    /// `v1` `List` (what `kubectl get -o yaml` prints for several objects).
    List {
        /// The list's own fields as read. `items` keeps its place among
        /// them with a null value: the items live in
        /// [`Object::List::items`] and are put there when written.
        fields: Mapping,
        /// The objects it holds.
        items: Vec<Object>,
    },
    /// Any other kind, kept as read.
    Other(Value),
}

// === impl Object ===

impl Object {
    /// Reads one object from its YAML value; the error says what is wrong.
    pub fn from_value(value: Value) -> Result<Self, String> {
        let api = value.get("apiVersion").and_then(Value::as_str);
        let kind = value.get("kind").and_then(Value::as_str);
        let object = match (api, kind) {
            (Some("v1"), Some("Pod")) => Object::Pod(typed(value, "Pod")?),
            (Some("apps/v1"), Some("Deployment")) => {
                Object::Deployment(typed(value, "Deployment")?)
            }
            (Some("apps/v1"), Some("StatefulSet")) => {
                Object::StatefulSet(typed(value, "StatefulSet")?)
            }
            (Some("apps/v1"), Some("DaemonSet")) => Object::DaemonSet(typed(value, "DaemonSet")?),
            (Some("apps/v1"), Some("ReplicaSet")) => {
                Object::ReplicaSet(typed(value, "ReplicaSet")?)
            }
            (Some("batch/v1"), Some("Job")) => Object::Job(typed(value, "Job")?),
            (Some("batch/v1"), Some("CronJob")) => Object::CronJob(typed(value, "CronJob")?),
            (Some("v1"), Some("List")) => {
                let Value::Mapping(mut fields) = value else {
                    return Err("a List is not a mapping".to_string());
                };
                let items = match fields.get_mut("items").map(std::mem::take) {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Sequence(items)) => items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| {
                            Object::from_value(item.clone())
                                .map_err(|e| format!("List item {i}: {e}"))
                        })
                        .collect::<Result<_, _>>()?,
                    Some(_) => return Err("List items is not a sequence".to_string()),
                };
                Object::List { fields, items }
            }
            _ => Object::Other(value),
        };
        Ok(object)
    }

    /// The object as a YAML value.
    pub fn to_value(&self) -> Result<Value, Error> {
        fn value<T: Serialize>(t: &T) -> Result<Value, Error> {
            yaml_serde::to_value(t).map_err(|e| Error::Write(e.to_string()))
        }
        match self {
            Object::Pod(o) => value(o),
            Object::Deployment(o) => value(o),
            Object::StatefulSet(o) => value(o),
            Object::DaemonSet(o) => value(o),
            Object::ReplicaSet(o) => value(o),
            Object::Job(o) => value(o),
            Object::CronJob(o) => value(o),
            Object::List { fields, items } => {
                let items = items
                    .iter()
                    .map(Object::to_value)
                    .collect::<Result<_, _>>()?;
                let mut fields = fields.clone();
                // Replaces the value in place, keeping the key's position.
                fields.insert(Value::from("items"), Value::Sequence(items));
                Ok(Value::Mapping(fields))
            }
            Object::Other(v) => Ok(v.clone()),
        }
    }
}

/// Reads `value` as a `T`. A field the type does not know is an error, as
/// with `kubectl apply`'s strict validation: written back, it would be
/// silently lost.
fn typed<T: DeserializeOwned + Serialize>(value: Value, kind: &str) -> Result<Box<T>, String> {
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)")
        .to_string();
    let typed: T =
        yaml_serde::from_value(value.clone()).map_err(|e| format!("{kind} {name}: {e}"))?;
    let written = yaml_serde::to_value(&typed).map_err(|e| format!("{kind} {name}: {e}"))?;
    if let Some(path) = lost_field(&value, &written, "") {
        return Err(format!(
            "{kind} {name}: unknown field {path} (misspelt, or newer than the Kubernetes API this linnet knows)"
        ));
    }
    Ok(Box::new(typed))
}

/// The path of the first field set in `read` that is missing from
/// `written`. Only structure is compared: scalars may be normalised (a
/// quantity `1` is written `'1'`), and null fields are as good as absent.
fn lost_field(read: &Value, written: &Value, path: &str) -> Option<String> {
    match (read, written) {
        (Value::Mapping(r), Value::Mapping(w)) => r.iter().find_map(|(k, v)| {
            if v.is_null() {
                return None;
            }
            let key = match k {
                Value::String(s) => s.clone(),
                other => format!("{other:?}"),
            };
            let path = if path.is_empty() {
                key
            } else {
                format!("{path}.{key}")
            };
            match w.get(k) {
                None => Some(path),
                Some(w) => lost_field(v, w, &path),
            }
        }),
        (Value::Sequence(r), Value::Sequence(w)) => r
            .iter()
            .zip(w)
            .enumerate()
            .find_map(|(i, (r, w))| lost_field(r, w, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// Reads the objects of a multi-document YAML text; empty documents are
/// skipped. An error names the 1-based index of the document at fault.
pub fn parse(text: &str) -> Result<Vec<Object>, Error> {
    let mut objects = Vec::new();
    for (i, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let document_error = |reason: String| Error::Parse {
            document: i + 1,
            reason,
        };
        let mut value = Value::deserialize(document).map_err(|e| document_error(e.to_string()))?;
        value
            .apply_merge()
            .map_err(|e| document_error(e.to_string()))?;
        match value {
            Value::Null => continue,
            Value::Mapping(_) => {}
            _ => {
                return Err(document_error(
                    "not a Kubernetes object (a mapping)".to_string(),
                ));
            }
        }
        objects.push(Object::from_value(value).map_err(document_error)?);
    }
    Ok(objects)
}

/// Writes objects as multi-document YAML, `---` between them.
pub fn to_yaml(objects: &[Object]) -> Result<String, Error> {
    let mut out = String::new();
    for (i, object) in objects.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let text =
            yaml_serde::to_string(&object.to_value()?).map_err(|e| Error::Write(e.to_string()))?;
        out.push_str(&text);
    }
    Ok(out)
}
