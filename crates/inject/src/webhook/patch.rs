//! A JSON patch (RFC 6902) from the difference of two JSON documents: what
//! the webhook answers, so the API server turns the pod it was sent into
//! the injected one.
//!
//! Objects are compared key by key, so a patch touches only what changed;
//! arrays are compared whole: a changed array is replaced entire (one
//! `replace` op). That is valid RFC 6902 and what the API server applies
//! atomically; a minimal array diff would only make the patch smaller.

use serde::Serialize;
use serde_json::{Map, Value};

/// One operation of a JSON patch.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    /// Adds `value` at `path` (whose parent exists).
    Add {
        /// JSON pointer (RFC 6901).
        path: String,
        /// The new value.
        value: Value,
    },
    /// Replaces the value at `path` by `value`.
    Replace {
        /// JSON pointer (RFC 6901).
        path: String,
        /// The new value.
        value: Value,
    },
    /// Removes the value at `path`.
    Remove {
        /// JSON pointer (RFC 6901).
        path: String,
    },
}

/// The operations that turn `before` into `after`, in document order:
/// keys removed, then keys changed or added, recursively through objects.
pub fn diff(before: &Value, after: &Value) -> Vec<Op> {
    let mut ops = Vec::new();
    diff_at(before, after, &mut String::new(), &mut ops);
    ops
}

fn diff_at(before: &Value, after: &Value, path: &mut String, ops: &mut Vec<Op>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => diff_objects(b, a, path, ops),
        (b, a) if b == a => {}
        (_, a) => ops.push(Op::Replace {
            path: path.clone(),
            value: a.clone(),
        }),
    }
}

fn diff_objects(
    before: &Map<String, Value>,
    after: &Map<String, Value>,
    path: &mut String,
    ops: &mut Vec<Op>,
) {
    let len = path.len();
    for key in before.keys().filter(|k| !after.contains_key(*k)) {
        push_token(path, key);
        ops.push(Op::Remove { path: path.clone() });
        path.truncate(len);
    }
    for (key, a) in after {
        push_token(path, key);
        match before.get(key) {
            Some(b) => diff_at(b, a, path, ops),
            None => ops.push(Op::Add {
                path: path.clone(),
                value: a.clone(),
            }),
        }
        path.truncate(len);
    }
}

/// Appends `/token` to a JSON pointer, escaping `~` as `~0` and `/` as
/// `~1` (RFC 6901), as annotation keys such as `linnet.io/inject` need.
fn push_token(path: &mut String, token: &str) {
    path.push('/');
    for c in token.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equal_documents_need_no_op() {
        let doc = json!({"a": [1, 2], "b": {"c": null}});
        assert!(diff(&doc, &doc).is_empty());
    }

    #[test]
    fn adds_replaces_and_removes_with_escaped_pointers() {
        let before = json!({
            "metadata": {"annotations": {"a~b": "1", "gone/x": "2"}, "name": "p"},
            "spec": {"x": 1}
        });
        let after = json!({
            "metadata": {"annotations": {"a~b": "3", "linnet.io/inject": "enabled"}, "name": "p"},
            "spec": {"x": {"y": true}}
        });
        let ops = serde_json::to_value(diff(&before, &after)).unwrap_or_default();
        assert_eq!(
            ops,
            json!([
                {"op": "remove", "path": "/metadata/annotations/gone~1x"},
                {"op": "replace", "path": "/metadata/annotations/a~0b", "value": "3"},
                {"op": "add", "path": "/metadata/annotations/linnet.io~1inject", "value": "enabled"},
                {"op": "replace", "path": "/spec/x", "value": {"y": true}},
            ])
        );
    }

    #[test]
    fn a_changed_array_is_replaced_whole() {
        let before = json!({"containers": [{"name": "app"}]});
        let after = json!({"containers": [{"name": "proxy"}, {"name": "app"}]});
        assert_eq!(
            diff(&before, &after),
            vec![Op::Replace {
                path: "/containers".to_string(),
                value: json!([{"name": "proxy"}, {"name": "app"}]),
            }]
        );
    }

    #[test]
    fn a_new_key_holding_an_object_is_added_whole() {
        let before = json!({"metadata": {}});
        let after = json!({"metadata": {"annotations": {"k": "v"}}});
        assert_eq!(
            diff(&before, &after),
            vec![Op::Add {
                path: "/metadata/annotations".to_string(),
                value: json!({"k": "v"}),
            }]
        );
    }

    #[test]
    fn a_whole_document_of_another_type_is_replaced_at_the_root() {
        assert_eq!(
            diff(&json!([1]), &json!({"a": 1})),
            vec![Op::Replace {
                path: String::new(),
                value: json!({"a": 1}),
            }]
        );
    }
}
