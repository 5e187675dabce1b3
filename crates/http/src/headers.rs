//! Header hygiene: what a proxy must not pass on, and what it reads.

use http::{HeaderMap, HeaderValue, Method, Request, header};

/// Headers that describe one hop, never the message (RFC 9110 §7.6.1),
/// plus the non-standard `proxy-connection`.
const HOP_BY_HOP: [header::HeaderName; 5] = [
    header::CONNECTION,
    header::HeaderName::from_static("keep-alive"),
    header::HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, and any header the `Connection` header
/// names. `te: trailers` is kept (gRPC needs it end to end); with
/// `keep_upgrade`, so are `Upgrade` and `Connection: upgrade`, which the
/// next hop needs to agree to the upgrade.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Read as bytes: a value with a byte that is not visible ASCII still
    // names the headers its other tokens name.
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for name in &named {
        if keep_upgrade && name == "upgrade" {
            continue;
        }
        headers.remove(name.as_str());
    }
    // A message framed by Transfer-Encoding was read that way; a
    // Content-Length beside it is untrusted and must not frame it again
    // on the next hop (smuggling).
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    let upgrade = keep_upgrade
        .then(|| headers.remove(header::UPGRADE))
        .flatten();
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    headers.remove(header::TE);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Headers that only a proxy sets on requests it passes to the
/// application (inbound): who the client is (`l5d-client-id`) and how an
/// HTTP/1 request travelled between proxies (`l5d-orig-proto`, consumed
/// on the way in).
pub const PROXY_OWNED: [&str; 2] = ["l5d-client-id", "l5d-orig-proto"];

/// Removes every copy of the [`PROXY_OWNED`] headers a client sent.
pub fn strip_proxy_owned(headers: &mut HeaderMap) {
    for name in PROXY_OWNED {
        headers.remove(name);
    }
}

/// Removes a `Content-Length` from an HTTP/1 message whose body was not
/// framed by it (`exact_body_len` is `None`: chunked). hyper reads a
/// message that carried both `Transfer-Encoding: chunked` and
/// `Content-Length` as chunked, and hands on the length header alone:
/// passed on, it would frame the body again by an untrusted number
/// (truncating it, or smuggling the rest). Bodies framed by their length,
/// and the empty bodies of HEAD, 204 and 304 answers, keep theirs.
pub fn drop_untrusted_length(headers: &mut HeaderMap, exact_body_len: Option<u64>) {
    if exact_body_len.is_none() {
        headers.remove(header::CONTENT_LENGTH);
    }
}

/// Whether an HTTP/1 request asks to switch protocols (WebSocket). Not
/// `h2c`: an application switching a connection to HTTP/2 behind the
/// proxy's back would carry every later request past the proxy's HTTP
/// handling (policy, metrics); its `Upgrade` is dropped as hop-by-hop and
/// the request goes on as plain HTTP/1.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    let upgrade = req.headers().get_all(header::UPGRADE);
    req.version() <= http::Version::HTTP_11
        && upgrade.iter().next().is_some()
        && !upgrade
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("h2c")))
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Whether a request is a `CONNECT` tunnel.
pub fn is_connect<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
}

/// Whether a request is gRPC (`content-type: application/grpc...`).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// The request's authority: from the URI (absolute form, HTTP/2
/// `:authority`) or else the `Host` header.
pub fn authority<B>(req: &Request<B>) -> Option<http::uri::Authority> {
    if let Some(a) = req.uri().authority() {
        return Some(a.clone());
    }
    let host = req.headers().get(header::HOST)?.to_str().ok()?;
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn proxy_owned_headers_are_stripped_in_every_spelling_and_copy() {
        let mut h = map(&[
            ("L5D-Client-Id", "forged"),
            ("l5d-client-id", "forged-again"),
            ("l5d-orig-proto", "HTTP/1.1"),
            ("l5d-dst-canonical", "web.default.svc.cluster.local:80"),
            ("x-app", "kept"),
        ]);
        strip_proxy_owned(&mut h);
        assert!(h.get("l5d-client-id").is_none());
        assert!(h.get("l5d-orig-proto").is_none());
        assert_eq!(h.get("x-app").unwrap(), "kept");
        assert!(h.get("l5d-dst-canonical").is_some());
    }

    #[test]
    fn strips_hop_by_hop_and_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("x-end", "2"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "close"),
            ("te", "trailers, deflate"),
            ("upgrade", "websocket"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        names.sort();
        assert_eq!(names, ["te", "x-end"]);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn a_connection_value_with_obs_text_still_names_headers() {
        // Found by fuzzing: one byte outside visible ASCII in `Connection`
        // let the headers it named reach the upstream.
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x\x83y, X-Hop ,http2-settings").unwrap(),
        );
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAARAAAAAAAIAAAAA"),
        );
        h.insert("x-end", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-end"]);
    }

    #[test]
    fn a_length_beside_transfer_encoding_is_dropped() {
        let mut h = map(&[("transfer-encoding", "chunked"), ("content-length", "3")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
        let mut h = map(&[("content-length", "3")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["content-length"], "3");
    }

    #[test]
    fn keeps_what_an_upgrade_needs() {
        let mut h = map(&[
            ("connection", "Upgrade, x-hop"),
            ("upgrade", "websocket"),
            ("x-hop", "1"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert!(!h.contains_key("x-hop"));
    }

    #[test]
    fn recognises_requests() {
        let req = Request::get("/")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(is_upgrade(&req));
        let req = Request::get("/")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(!is_upgrade(&req));
        // h2c is not passed on: the request goes on as HTTP/1, its
        // `Upgrade` and `HTTP2-Settings` stripped.
        let req = Request::get("/")
            .header("connection", "Upgrade, HTTP2-Settings")
            .header("upgrade", "h2c")
            .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")
            .body(())
            .unwrap();
        assert!(!is_upgrade(&req));
        let mut h = req.headers().clone();
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
        let req = Request::post("/x")
            .header("content-type", "application/grpc+proto")
            .body(())
            .unwrap();
        assert!(is_grpc(&req));
        let req = Request::get("/")
            .header("host", "web:8080")
            .body(())
            .unwrap();
        assert_eq!(authority(&req).unwrap(), "web:8080");
        let req = Request::get("http://api:80/x")
            .header("host", "other")
            .body(())
            .unwrap();
        assert_eq!(authority(&req).unwrap(), "api:80");
    }
}
