//! An `admission.k8s.io/v1` `AdmissionReview` in, its answer out: the
//! webhook's logic, without the server (pure, like [`crate::inject`]).
//!
//! `k8s-openapi` has no admission types, so the few fields used are small
//! serde structs here; fields not named are ignored.

use super::{WebhookOptions, patch};
use crate::{Object, Verdict};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The `apiVersion` of the reviews read and answered.
const API_VERSION: &str = "admission.k8s.io/v1";

/// The part of an `AdmissionReview` request the webhook reads.
#[derive(Debug, Deserialize)]
struct Review {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
    request: Option<Request>,
}

#[derive(Debug, Deserialize)]
struct Request {
    uid: String,
    kind: Option<GroupVersionKind>,
    namespace: Option<String>,
    operation: Option<String>,
    object: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

/// The `response` of an answered `AdmissionReview`.
#[derive(Debug, Serialize)]
struct Response {
    uid: String,
    allowed: bool,
    #[serde(rename = "patchType", skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
}

#[derive(Debug, Serialize)]
struct Status {
    code: u16,
    message: String,
}

/// A body that is not an `AdmissionReview` at all (not a JSON object):
/// answered `400 Bad Request` with this message.
#[derive(Debug, thiserror::Error)]
#[error("the body is not an AdmissionReview (a JSON object): {0}")]
pub struct NotAReview(String);

/// Answers the review in `body`: the JSON of an `AdmissionReview` with
/// its `response`. A review that cannot be used, or a pod that cannot be
/// injected, is allowed with a warning (denied, with `fail_closed`).
pub fn answer(body: &[u8], options: &WebhookOptions) -> Result<Vec<u8>, NotAReview> {
    let value: Value = serde_json::from_slice(body).map_err(|e| NotAReview(e.to_string()))?;
    if !value.is_object() {
        return Err(NotAReview("not an object".to_string()));
    }
    // The uid, if it can be found, even in a review that is malformed.
    let uid = value
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let response = match serde_json::from_value::<Review>(value) {
        Err(error) => failed(uid, format!("malformed AdmissionReview: {error}"), options),
        Ok(review) => match decide(review, options) {
            Ok(response) => response,
            Err(message) => failed(uid, message, options),
        },
    };
    let review = json!({
        "apiVersion": API_VERSION,
        "kind": "AdmissionReview",
        "response": response,
    });
    // Serialising a `Value` cannot fail.
    Ok(serde_json::to_vec(&review).unwrap_or_default())
}

/// The response to a review the webhook could not serve.
fn failed(uid: String, message: String, options: &WebhookOptions) -> Response {
    let message = format!("linnet inject: {message}");
    tracing::warn!(%uid, fail_closed = options.fail_closed, "{message}");
    if options.fail_closed {
        Response {
            uid,
            allowed: false,
            patch_type: None,
            patch: None,
            warnings: Vec::new(),
            status: Some(Status { code: 500, message }),
        }
    } else {
        Response {
            uid,
            allowed: true,
            patch_type: None,
            patch: None,
            warnings: vec![message],
            status: None,
        }
    }
}

/// Allowed, with the patch that injects the pod if it is to be injected;
/// `Err` says why the review cannot be served.
fn decide(review: Review, options: &WebhookOptions) -> Result<Response, String> {
    match (review.api_version.as_deref(), review.kind.as_deref()) {
        (Some(API_VERSION), Some("AdmissionReview")) => {}
        (api, kind) => {
            return Err(format!(
                "not an {API_VERSION} AdmissionReview (apiVersion {api:?}, kind {kind:?})"
            ));
        }
    }
    let request = review
        .request
        .ok_or("malformed AdmissionReview: no request")?;
    let allowed = |patch: Option<String>| Response {
        uid: request.uid.clone(),
        allowed: true,
        patch_type: patch.as_ref().map(|_| "JSONPatch"),
        patch,
        warnings: Vec::new(),
        status: None,
    };
    match &request.kind {
        Some(k) if k.group.is_empty() && k.kind == "Pod" => {}
        Some(k) => return Err(format!("not a Pod: {}/{}", k.group, k.kind)),
        None => return Err("malformed AdmissionReview: no request.kind".to_string()),
    }
    // Only a new pod can be given containers.
    if request.operation.as_deref().is_some_and(|o| o != "CREATE") {
        return Ok(allowed(None));
    }
    let mut before = request
        .object
        .clone()
        .ok_or("malformed AdmissionReview: no request.object")?;
    let Some(pod) = before.as_object_mut() else {
        return Err("request.object is not a Pod (not an object)".to_string());
    };
    // The API server sends the pod as it will be stored; fill in what
    // injection reads and the pod may not carry yet. These are set in the
    // baseline of the diff as well, so no patch op is emitted for them.
    pod.entry("apiVersion").or_insert_with(|| json!("v1"));
    pod.entry("kind").or_insert_with(|| json!("Pod"));
    if let Some(ns) = &request.namespace {
        let metadata = pod.entry("metadata").or_insert_with(|| json!({}));
        if let Some(metadata) = metadata.as_object_mut() {
            metadata
                .entry("namespace")
                .or_insert_with(|| json!(ns.clone()));
        }
    }
    if !opted_in(&before, options) {
        return Ok(allowed(None));
    }
    let object = yaml_serde::to_value(&before)
        .map_err(|e| e.to_string())
        .and_then(Object::from_value)
        .map_err(|e| format!("request.object is not a Pod: {e}"))?;
    if !matches!(object, Object::Pod(_)) {
        return Err("request.object is not a Pod".to_string());
    }
    let (mut objects, report) =
        crate::inject_in(vec![object], &options.inject, &crate::Namespaces::default())
            .map_err(|e| e.to_string())?;
    let injected = report.iter().any(|o| o.verdict == Verdict::Injected);
    let Some(object) = objects.pop().filter(|_| injected) else {
        return Ok(allowed(None));
    };
    let after = object
        .to_value()
        .map_err(|e| e.to_string())
        .and_then(|v| serde_json::to_value(v).map_err(|e| format!("writing the pod: {e}")))?;
    let ops = patch::diff(&before, &after);
    if ops.is_empty() {
        return Ok(allowed(None));
    }
    let json = serde_json::to_vec(&ops).map_err(|e| format!("writing the patch: {e}"))?;
    Ok(allowed(Some(
        base64::engine::general_purpose::STANDARD.encode(json),
    )))
}

/// Whether the pod is to be injected: annotated `linnet.io/inject:
/// enabled` (or Linkerd's `linkerd.io/inject`), or every pod the API
/// server sends with [`WebhookOptions::inject_all`] (the
/// MutatingWebhookConfiguration's namespaceSelector then does the
/// namespace's opt-in). A pod annotated `disabled` is left by
/// [`crate::inject`] itself.
fn opted_in(pod: &Value, options: &WebhookOptions) -> bool {
    let enabled = |key: &str| {
        pod.pointer("/metadata/annotations")
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
            == Some("enabled")
    };
    options.inject_all || enabled("linnet.io/inject") || enabled("linkerd.io/inject")
}
