//! One resource, listed then watched, for as long as discovery runs.
//!
//! A list (paged, each page within the request timeout and
//! `max_list_bytes`) replaces what is known of the resource; a watch
//! from the list's resource version then streams its changes, one JSON
//! event per line (at most `max_event_bytes`; a longer one is skipped
//! and counted). When the API server ends a watch, a new one continues
//! from the last version seen. A watch that fails (410 Gone, an error
//! status, a line that is not an event, a broken or hung stream) is
//! counted and followed by a relist after a backoff; a list that fails
//! is retried after a longer one. Nothing here forgets what is known:
//! only a list that succeeds replaces it.

use super::{
    client::{self, ApiError},
    objects::{Event, Key, Resource, Summary},
};
use crate::{Metrics, config::Discovery};
use http_body_util::BodyExt;
use std::{sync::Arc, time::Duration};
use tokio::{sync::mpsc, time::Instant};

/// Objects asked for per list page.
const PAGE: usize = 500;

/// The most of an error answer to a watch that is read.
const MAX_ERROR_BYTES: usize = 4096;

/// What the watchers tell the state.
#[derive(Debug)]
pub(super) enum Update {
    /// A list: everything there is of the resource (and how many objects
    /// beyond the resource's bound were not even kept to be offered).
    Listed(Resource, Vec<(Key, Summary)>, usize),
    /// An object added or changed.
    Put(Key, Summary),
    /// An object gone (or no longer of use).
    Deleted(Resource, Key),
}

/// How a watch ended other than cleanly.
enum End {
    /// The version watched from is too old: relist.
    Gone,
    /// Failed: relist after a backoff.
    Failed(ApiError),
    /// Nobody listens any more.
    Closed,
}

/// Lists and watches `r` until the receiver of `tx` is gone.
pub(super) async fn run(
    r: Resource,
    cfg: Arc<Discovery>,
    tx: mpsc::Sender<Update>,
    metrics: Metrics,
) {
    let mut backoff = Backoff::new(cfg.min_backoff, cfg.max_backoff);
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            backoff.wait().await;
        }
        let (items, left_out, mut version) = match list(r, &cfg).await {
            Ok(l) => l,
            Err(error) => {
                if let ApiError::TooLarge { .. } = error {
                    metrics.kubernetes_limit("list_bytes", 1);
                }
                metrics.kubernetes_error(r.name(), error.reason());
                tracing::warn!(resource = r.name(), %error, "cannot list; what is known stays");
                continue;
            }
        };
        metrics.kubernetes_listed(r.name());
        tracing::debug!(resource = r.name(), objects = items.len(), %version, "listed");
        if tx.send(Update::Listed(r, items, left_out)).await.is_err() {
            return;
        }
        loop {
            match watch(r, &cfg, &mut version, &tx, &metrics).await {
                // Ended by the API server: go on from where it ended.
                Ok(0) => backoff.wait().await,
                Ok(_) => backoff.reset(),
                Err(End::Gone) => {
                    metrics.kubernetes_error(r.name(), "gone");
                    tracing::info!(resource = r.name(), "watch expired (410 Gone); relisting");
                    break;
                }
                Err(End::Failed(error)) => {
                    metrics.kubernetes_error(r.name(), error.reason());
                    tracing::warn!(resource = r.name(), %error, "watch failed; relisting");
                    break;
                }
                Err(End::Closed) => return,
            }
        }
    }
}

/// Every page of a list: its objects (up to the resource's bound), how
/// many were left out beyond it, and its resource version.
async fn list(
    r: Resource,
    cfg: &Discovery,
) -> Result<(Vec<(Key, Summary)>, usize, String), ApiError> {
    let cap = match r {
        Resource::Services => cfg.max_services,
        Resource::EndpointSlices => cfg.max_endpoints,
        Resource::Pods => cfg.max_pods,
    };
    let timed_out = || {
        ApiError::Timeout(format!(
            "no answer to a list of {} within {:?}",
            r.name(),
            cfg.api.timeout
        ))
    };
    let mut conn = tokio::time::timeout(cfg.api.timeout, client::connect(&cfg.api))
        .await
        .map_err(|_| timed_out())??;
    let (mut items, mut left_out, mut version) = (Vec::new(), 0, None);
    let mut next: Option<String> = None;
    loop {
        let mut path = format!("{}?limit={PAGE}", r.path());
        if let Some(token) = &next {
            path.push_str("&continue=");
            path.push_str(&encode(token));
        }
        let bytes = tokio::time::timeout(cfg.api.timeout, async {
            let rsp = conn.send(http::Method::GET, &path, None).await?;
            client::read(rsp, cfg.max_list_bytes, "a list").await
        })
        .await
        .map_err(|_| timed_out())??;
        let page = r.decode_list(&bytes).map_err(|e| {
            ApiError::Decode(client::fail(
                format!("a list of {} is not one", r.name()),
                e,
            ))
        })?;
        for (key, summary) in page.items {
            let Some(summary) = summary.filter(|_| !key.1.is_empty()) else {
                continue;
            };
            if items.len() < cap {
                items.push((key, summary));
            } else {
                left_out += 1;
            }
        }
        version = page.resource_version.or(version);
        match page.next {
            Some(token) => next = Some(token),
            None => break,
        }
    }
    let version = version.filter(|v| !v.is_empty()).ok_or_else(|| {
        ApiError::Decode(format!("a list of {} has no resourceVersion", r.name()))
    })?;
    Ok((items, left_out, version))
}

/// Watches `r` from `version` (moved on as events come) until the API
/// server ends the watch (`Ok`: how many events came) or it fails.
async fn watch(
    r: Resource,
    cfg: &Discovery,
    version: &mut String,
    tx: &mpsc::Sender<Update>,
    metrics: &Metrics,
) -> Result<usize, End> {
    let seconds = cfg.watch_timeout.as_secs().max(1);
    let path = format!(
        "{}?watch=true&allowWatchBookmarks=true&resourceVersion={}&timeoutSeconds={seconds}",
        r.path(),
        encode(version)
    );
    // The API server ends the watch after `seconds`; one that goes on
    // much longer has hung.
    let deadline = Instant::now() + Duration::from_secs(seconds) + cfg.api.timeout;
    let timed_out = |what: &str| {
        End::Failed(ApiError::Timeout(format!(
            "{what} of {} within {:?}",
            r.name(),
            cfg.api.timeout
        )))
    };
    let (_conn, rsp) = tokio::time::timeout(cfg.api.timeout, async {
        let mut conn = client::connect(&cfg.api).await?;
        let rsp = conn.send(http::Method::GET, &path, None).await?;
        Ok::<_, ApiError>((conn, rsp))
    })
    .await
    .map_err(|_| timed_out("no answer to a watch"))?
    .map_err(End::Failed)?;
    if rsp.status() == http::StatusCode::GONE {
        return Err(End::Gone);
    }
    if !rsp.status().is_success() {
        let error = tokio::time::timeout(
            cfg.api.timeout,
            client::read(rsp, MAX_ERROR_BYTES, "an error"),
        )
        .await
        .map_err(|_| timed_out("no error body"))?
        .err()
        .unwrap_or_else(|| ApiError::Decode("a watch answered with no events".into()));
        return Err(End::Failed(error));
    }
    let mut body = rsp.into_body();
    let mut lines = Lines::new(cfg.max_event_bytes);
    let mut events = 0;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(timed_out("a watch that did not end")),
            Ok(None) if lines.is_empty() => return Ok(events),
            Ok(None) => {
                return Err(End::Failed(ApiError::Http(format!(
                    "a watch of {} ended within an event",
                    r.name()
                ))));
            }
            Ok(Some(Err(e))) => {
                return Err(End::Failed(ApiError::Http(client::fail(
                    format!("watching {}", r.name()),
                    e,
                ))));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        for line in lines.push(&data) {
            let Some(line) = line else {
                metrics.kubernetes_limit("event_bytes", 1);
                tracing::warn!(
                    resource = r.name(),
                    max = cfg.max_event_bytes,
                    "watch event too large; skipped"
                );
                continue;
            };
            let event = r.decode_event(&line).map_err(|e| {
                End::Failed(ApiError::Decode(client::fail(
                    format!("a watch event of {} is not one", r.name()),
                    e,
                )))
            })?;
            let (update, moved) = match event {
                Event::Put(key, _, _) | Event::Deleted(key, _) if key.1.is_empty() => continue,
                Event::Put(key, Some(s), v) => (Some(Update::Put(key, s)), v),
                Event::Put(key, None, v) | Event::Deleted(key, v) => {
                    (Some(Update::Deleted(r, key)), v)
                }
                Event::Bookmark(v) => (None, v),
                Event::Error(410, _) => return Err(End::Gone),
                Event::Error(code, message) => {
                    return Err(End::Failed(ApiError::Status {
                        code: u16::try_from(code)
                            .ok()
                            .and_then(|c| http::StatusCode::from_u16(c).ok())
                            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
                        text: message,
                    }));
                }
            };
            if let Some(v) = moved.filter(|v| !v.is_empty()) {
                *version = v;
            }
            events += 1;
            if let Some(update) = update {
                metrics.kubernetes_event(r.name());
                if tx.send(update).await.is_err() {
                    return Err(End::Closed);
                }
            }
        }
    }
}

/// Splits a stream into lines of at most `max` bytes; a longer line is
/// given once as `None` and its bytes dropped as they come.
pub(super) struct Lines {
    buf: Vec<u8>,
    max: usize,
    skipping: bool,
}

impl Lines {
    pub(super) fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
            skipping: false,
        }
    }

    /// No part of a line pending.
    fn is_empty(&self) -> bool {
        self.buf.iter().all(u8::is_ascii_whitespace) && !self.skipping
    }

    /// The lines `data` completes (empty ones left out).
    pub(super) fn push(&mut self, mut data: &[u8]) -> Vec<Option<Vec<u8>>> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let (part, rest, ends) = match data.iter().position(|b| *b == b'\n') {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &[][..], false),
            };
            data = rest;
            if !self.skipping && self.buf.len() + part.len() > self.max {
                self.skipping = true;
                self.buf = Vec::new();
                out.push(None);
            }
            if !self.skipping {
                self.buf.extend_from_slice(part);
            }
            if ends {
                let line = std::mem::take(&mut self.buf);
                if !std::mem::take(&mut self.skipping) && !line.trim_ascii().is_empty() {
                    out.push(Some(line));
                }
            }
        }
        out
    }
}

/// A query value, percent-encoded.
fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Waits that double from `min` to `max`.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.max);
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_bounded() {
        let mut l = Lines::new(8);
        assert_eq!(l.push(b"abc"), Vec::<Option<Vec<u8>>>::new());
        assert!(!l.is_empty());
        assert_eq!(
            l.push(b"de\n\nfg\n"),
            [Some(b"abcde".to_vec()), Some(b"fg".to_vec())]
        );
        assert!(l.is_empty());
        // Too long: given once, whatever the chunks, then skipped to its end.
        assert_eq!(l.push(b"123456789"), [None]);
        assert_eq!(l.push(b"0123"), Vec::<Option<Vec<u8>>>::new());
        assert!(!l.is_empty());
        assert_eq!(l.push(b"45\nok\n"), [Some(b"ok".to_vec())]);
        // Too long at its newline.
        assert_eq!(
            l.push(b"12345678\n123456789\nx\n"),
            [Some(b"12345678".to_vec()), None, Some(b"x".to_vec())]
        );
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("12345"), "12345");
        assert_eq!(encode("eyJ2+/=&x"), "eyJ2%2B%2F%3D%26x");
    }
}
