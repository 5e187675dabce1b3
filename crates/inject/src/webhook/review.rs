//! An `admission.k8s.io/v1` `AdmissionReview` in, its answer out: the
//! webhook's logic, without the server. Pure but for one step: the
//! pod's namespace is read from the API server when a
//! [`NamespaceLookup`](super::NamespaceLookup) is configured.
//!
//! `k8s-openapi` has no admission types, so the few fields used are small
//! serde structs here; fields not named are ignored.

use super::{WebhookOptions, metrics::ReviewOutcome, patch};
use crate::{Namespaces, Object, Verdict};
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

/// Why a review could not be served: the reason as counted, and the
/// message the client sees.
struct Failure(&'static str, String);

impl Failure {
    fn malformed(message: impl Into<String>) -> Self {
        Failure("malformed_review", message.into())
    }

    fn not_a_pod(message: impl Into<String>) -> Self {
        Failure("not_a_pod", message.into())
    }
}

/// Answers the review in `body`: the JSON of an `AdmissionReview` with
/// its `response`. A review that cannot be used, or a pod that cannot be
/// injected, is allowed with a warning (denied, with `fail_closed`). A
/// namespace that cannot be read is a warning, and the pod is decided on
/// its own annotations. The outcome is counted in the options' metrics.
pub async fn answer(body: &[u8], options: &WebhookOptions) -> Result<Vec<u8>, NotAReview> {
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
    let mut warnings = Vec::new();
    let decided = match serde_json::from_value::<Review>(value) {
        Err(error) => Err(Failure::malformed(format!(
            "malformed AdmissionReview: {error}"
        ))),
        Ok(review) => decide(review, options, &mut warnings).await,
    };
    let (response, outcome) = match decided {
        Ok(decided) => decided,
        Err(failure) => failed(uid, failure, warnings, options),
    };
    options.metrics.review(outcome);
    let review = json!({
        "apiVersion": API_VERSION,
        "kind": "AdmissionReview",
        "response": response,
    });
    // Serialising a `Value` cannot fail.
    Ok(serde_json::to_vec(&review).unwrap_or_default())
}

/// The response to a review the webhook could not serve.
fn failed(
    uid: String,
    Failure(reason, message): Failure,
    mut warnings: Vec<String>,
    options: &WebhookOptions,
) -> (Response, ReviewOutcome) {
    let message = format!("linnet inject: {message}");
    tracing::warn!(%uid, fail_closed = options.fail_closed, "{message}");
    let outcome = ReviewOutcome::Failed {
        reason,
        denied: options.fail_closed,
    };
    let response = if options.fail_closed {
        Response {
            uid,
            allowed: false,
            patch_type: None,
            patch: None,
            warnings,
            status: Some(Status { code: 500, message }),
        }
    } else {
        warnings.push(message);
        Response {
            uid,
            allowed: true,
            patch_type: None,
            patch: None,
            warnings,
            status: None,
        }
    };
    (response, outcome)
}

/// Allowed, with the patch that injects the pod if it is to be injected;
/// `Err` says why the review cannot be served. Warnings for the client
/// go to `warnings`.
async fn decide(
    review: Review,
    options: &WebhookOptions,
    warnings: &mut Vec<String>,
) -> Result<(Response, ReviewOutcome), Failure> {
    match (review.api_version.as_deref(), review.kind.as_deref()) {
        (Some(API_VERSION), Some("AdmissionReview")) => {}
        (api, kind) => {
            return Err(Failure::malformed(format!(
                "not an {API_VERSION} AdmissionReview (apiVersion {api:?}, kind {kind:?})"
            )));
        }
    }
    let request = review
        .request
        .ok_or_else(|| Failure::malformed("malformed AdmissionReview: no request"))?;
    let allowed = |patch: Option<String>, warnings: &mut Vec<String>| Response {
        uid: request.uid.clone(),
        allowed: true,
        patch_type: patch.as_ref().map(|_| "JSONPatch"),
        patch,
        warnings: std::mem::take(warnings),
        status: None,
    };
    let skipped = |reason, warnings: &mut Vec<String>| {
        Ok((allowed(None, warnings), ReviewOutcome::Skipped(reason)))
    };
    match &request.kind {
        Some(k) if k.group.is_empty() && k.kind == "Pod" => {}
        Some(k) => {
            return Err(Failure::not_a_pod(format!(
                "not a Pod: {}/{}",
                k.group, k.kind
            )));
        }
        None => {
            return Err(Failure::malformed(
                "malformed AdmissionReview: no request.kind",
            ));
        }
    }
    // Only a new pod can be given containers.
    if request.operation.as_deref().is_some_and(|o| o != "CREATE") {
        return skipped("not_create", warnings);
    }
    let mut before = request
        .object
        .clone()
        .ok_or_else(|| Failure::malformed("malformed AdmissionReview: no request.object"))?;
    let Some(pod) = before.as_object_mut() else {
        return Err(Failure::not_a_pod(
            "request.object is not a Pod (not an object)",
        ));
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

    let mut namespaces = Namespaces::default();
    let namespace = before
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let (Some(lookup), Some(ns)) = (&options.namespaces, &namespace) {
        match lookup.annotations(ns, &options.metrics).await {
            Ok(annotations) => namespaces.insert(ns, (*annotations).clone()),
            Err(error) => {
                let warning = format!(
                    "linnet inject: the annotations of namespace {ns} could not be read ({error}); the pod was decided on its own annotations"
                );
                tracing::warn!(uid = %request.uid, "{warning}");
                warnings.push(warning);
            }
        }
    }

    match opted_in(
        &before,
        namespace.as_deref().and_then(|n| namespaces.get(n)),
        options,
    ) {
        OptIn::Yes => {}
        OptIn::Disabled => return skipped("disabled", warnings),
        OptIn::No => return skipped("not_opted_in", warnings),
    }
    let object = yaml_serde::to_value(&before)
        .map_err(|e| e.to_string())
        .and_then(Object::from_value)
        .map_err(|e| Failure::not_a_pod(format!("request.object is not a Pod: {e}")))?;
    if !matches!(object, Object::Pod(_)) {
        return Err(Failure::not_a_pod("request.object is not a Pod"));
    }
    let (mut objects, report) = crate::inject_in(vec![object], &options.inject, &namespaces)
        .map_err(|e| Failure("bad_annotation", e.to_string()))?;
    let verdict = report.first().map(|o| o.verdict);
    let reason = match verdict {
        Some(Verdict::Injected) => None,
        Some(Verdict::Disabled) => Some("disabled"),
        Some(Verdict::AlreadyInjected) => Some("already_injected"),
        Some(Verdict::HostNetwork) => Some("host_network"),
        Some(Verdict::NoPodSpec) | None => Some("no_pod_spec"),
    };
    let (Some(object), None) = (objects.pop(), reason) else {
        return skipped(reason.unwrap_or("no_pod_spec"), warnings);
    };
    let after = object
        .to_value()
        .map_err(|e| e.to_string())
        .and_then(|v| serde_json::to_value(v).map_err(|e| format!("writing the pod: {e}")))
        .map_err(|e| Failure("internal", e))?;
    let ops = patch::diff(&before, &after);
    if ops.is_empty() {
        return skipped("unchanged", warnings);
    }
    let json = serde_json::to_vec(&ops)
        .map_err(|e| Failure("internal", format!("writing the patch: {e}")))?;
    let patch = base64::engine::general_purpose::STANDARD.encode(json);
    Ok((allowed(Some(patch), warnings), ReviewOutcome::Injected))
}

/// Whether a pod is to be injected.
enum OptIn {
    Yes,
    /// Annotated `disabled` (itself, or its namespace).
    Disabled,
    /// Not annotated `enabled`, and not every pod is injected.
    No,
}

/// Whether the pod is to be injected: annotated `linnet.io/inject:
/// enabled` (or Linkerd's `linkerd.io/inject`), itself or else its
/// namespace, or every pod the API server sends with
/// [`WebhookOptions::inject_all`] (the MutatingWebhookConfiguration's
/// namespaceSelector then does the namespace's opt-in). `disabled`, on the
/// pod or else on its namespace, leaves it alone either way.
fn opted_in(
    pod: &Value,
    namespace: Option<&std::collections::BTreeMap<String, String>>,
    options: &WebhookOptions,
) -> OptIn {
    const KEYS: [&str; 2] = ["linnet.io/inject", "linkerd.io/inject"];
    let own = KEYS.iter().find_map(|k| {
        pod.pointer("/metadata/annotations")
            .and_then(|a| a.get(*k))
            .and_then(Value::as_str)
    });
    let inherited =
        || namespace.and_then(|a| KEYS.iter().find_map(|k| a.get(*k).map(String::as_str)));
    match own.or_else(inherited).map(str::trim) {
        Some("enabled") => OptIn::Yes,
        Some("disabled") => OptIn::Disabled,
        _ if options.inject_all => OptIn::Yes,
        _ => OptIn::No,
    }
}
