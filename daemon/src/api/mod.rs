//! The HTTP/JSON API under `/v1` (one file per resource), the peer-credential check and
//! request metrics.

mod snapshots;
mod system;
mod workspaces;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};

use crate::error::{ApiError, ApiResult};
use crate::state::Daemon;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 1 << 20;

/// Who may talk to the daemon.
#[derive(Clone, Copy, Debug)]
pub struct Access {
    /// The daemon's own uid (always allowed, as is root).
    pub uid: u32,
    /// A group whose members are allowed too.
    pub group: Option<u32>,
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// The registry.
    pub daemon: Arc<Daemon>,
    /// The access rule.
    pub access: Access,
}

/// Credentials of the peer of a Unix-socket connection.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    /// Peer uid, if the kernel told.
    pub uid: Option<u32>,
    /// Peer gid.
    pub gid: Option<u32>,
}

impl Peer {
    /// The credentials of the process at the other end of `stream`.
    pub fn of(stream: &tokio::net::UnixStream) -> Peer {
        match stream.peer_cred() {
            Ok(c) => Peer {
                uid: Some(c.uid()),
                gid: Some(c.gid()),
            },
            Err(_) => Peer {
                uid: None,
                gid: None,
            },
        }
    }
}

/// A JSON body whose rejections (malformed JSON, unknown fields, wrong content type,
/// too large) become API errors.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => {
                let status = rejection.status();
                let message = match &rejection {
                    JsonRejection::JsonDataError(e) => {
                        format!("invalid request body: {}", e.body_text())
                    }
                    JsonRejection::JsonSyntaxError(e) => {
                        format!("malformed JSON: {}", e.body_text())
                    }
                    JsonRejection::MissingJsonContentType(_) => {
                        "expected Content-Type: application/json".into()
                    }
                    other => other.body_text(),
                };
                let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "too_large"
                } else {
                    "bad_request"
                };
                Err(ApiError {
                    status: if status == StatusCode::PAYLOAD_TOO_LARGE {
                        status
                    } else {
                        StatusCode::BAD_REQUEST
                    },
                    code,
                    message,
                    paths: Vec::new(),
                })
            }
        }
    }
}

/// A query string, rejected as the API's JSON error (400) when it does not parse.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for ApiQuery<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(rejection) => Err(ApiError::bad_request(format!(
                "invalid query string: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// Path parameters, rejected as the API's JSON error (400) when they do not decode.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for ApiPath<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(rejection) => Err(ApiError::bad_request(format!(
                "invalid path: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// Runs blocking registry work off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
}

async fn guard(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
    next: Next,
) -> Response {
    let allowed = match peer.uid {
        Some(0) => true,
        Some(uid) if uid == app.access.uid => true,
        Some(_) => app.access.group.is_some() && app.access.group == peer.gid,
        None => false,
    };
    if !allowed {
        return ApiError {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: format!("uid {:?} may not use this daemon", peer.uid),
            paths: Vec::new(),
        }
        .into_response();
    }
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    let resp = next.run(req).await;
    app.daemon
        .metrics
        .request(&method, &route, resp.status().as_u16(), start.elapsed());
    resp
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: "no such endpoint".into(),
        paths: Vec::new(),
    }
}

/// The whole API.
/// The metrics alone (`GET /metrics`), for a TCP listener Prometheus can scrape: no
/// other route, so it changes nothing and names no path.
pub fn metrics_router(app: AppState) -> Router {
    Router::new()
        .route("/metrics", get(system::metrics))
        .with_state(app)
}

pub fn router(app: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(system::health))
        .route("/v1/stats", get(system::stats))
        .route("/metrics", get(system::metrics))
        .route("/v1/gc", post(system::gc))
        .route("/v1/pack", post(system::pack))
        .route("/v1/fsck", post(system::fsck))
        .route("/v1/snapshots", get(snapshots::list))
        .route("/v1/snapshots/import", post(snapshots::import))
        .route(
            "/v1/snapshots/{id}",
            get(snapshots::get_one)
                .patch(snapshots::patch)
                .delete(snapshots::delete),
        )
        .route("/v1/snapshots/{a}/diff/{b}", get(snapshots::diff))
        .route("/v1/snapshots/{a}/merge/{b}", post(snapshots::merge))
        .route("/v1/snapshots/{id}/export", post(snapshots::export))
        .route("/v1/snapshots/{id}/warm", post(snapshots::warm))
        .route(
            "/v1/workspaces",
            get(workspaces::list).post(workspaces::create),
        )
        .route(
            "/v1/workspaces/{id}",
            get(workspaces::get_one).delete(workspaces::delete),
        )
        .route("/v1/workspaces/{id}/snapshot", post(workspaces::snapshot))
        .route("/v1/workspaces/{id}/checkout", post(workspaces::checkout))
        .route("/v1/workspaces/{id}/requests", get(workspaces::requests))
        .route("/v1/workspaces/{id}/quota", put(workspaces::set_quota))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app)
}

/// A request's `durability`: `sync` (the default) or `buffered`.
pub fn durability(d: Option<&str>) -> ApiResult<helios_snapshot::Durability> {
    match d {
        None | Some("sync") => Ok(helios_snapshot::Durability::Sync),
        Some("buffered") => Ok(helios_snapshot::Durability::Buffered),
        Some(other) => Err(ApiError::bad_request(format!(
            "unknown durability {other:?}: sync or buffered"
        ))),
    }
}

/// Parses an id from a path segment, as a 400 (not a 404) when malformed.
pub fn parse_id<T: std::str::FromStr<Err = helios_snapshot::Error>>(s: &str) -> ApiResult<T> {
    s.parse::<T>()
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

#[cfg(test)]
mod fuzz {
    //! Issue 8, item 8: random requests through the real router over a real (in-memory)
    //! repo. Whatever arrives, the answer is a status below 500 and, when not a
    //! success, the JSON error resource; nothing panics.

    use super::*;
    use helios_snapshot::store::{Backend, MemBackend};
    use proptest::prelude::*;
    use tower_service::Service;

    fn app() -> (tempfile::TempDir, Router) {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = helios_snapshot::Repo::open_with(
            dir.path(),
            Arc::new(MemBackend::new()) as Arc<dyn Backend>,
            1 << 20,
        )
        .expect("repo");
        let ws = repo
            .create_workspace(None, false, Default::default())
            .expect("workspace");
        ws.write_file("f", b"x").expect("write");
        ws.snapshot(None, Default::default()).expect("snapshot");
        let daemon = Arc::new(Daemon::new(Arc::new(repo), Default::default()));
        let app = AppState {
            daemon,
            access: Access {
                uid: 0,
                group: None,
            },
        };
        (dir, router(app))
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("s1".to_string()),
            Just("w1".to_string()),
            Just("s999999999999".to_string()),
            Just("..".to_string()),
            Just("%00".to_string()),
            "[a-zA-Z0-9%._-]{0,24}",
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        let templates = prop_oneof![
            Just("/v1/health"),
            Just("/v1/stats"),
            Just("/metrics"),
            Just("/v1/gc"),
            Just("/v1/pack"),
            Just("/v1/fsck"),
            Just("/v1/snapshots"),
            Just("/v1/snapshots/import"),
            Just("/v1/snapshots/{}"),
            Just("/v1/snapshots/{}/diff/{}"),
            Just("/v1/snapshots/{}/export"),
            Just("/v1/snapshots/{}/merge/{}"),
            Just("/v1/workspaces"),
            Just("/v1/workspaces/{}"),
            Just("/v1/workspaces/{}/snapshot"),
            Just("/v1/workspaces/{}/checkout"),
            Just("/{}"),
        ];
        (
            templates,
            segment(),
            segment(),
            "(\\?[a-z]{0,6}=[a-z0-9%]{0,8})?",
        )
            .prop_map(|(t, a, b, q)| {
                format!("{}{q}", t.replacen("{}", &a, 1).replacen("{}", &b, 1))
            })
    }

    /// JSON bodies from the API's field names with values of every type; paths and
    /// mountpoints never name a real directory.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let key = prop_oneof![
            Just("path"),
            Just("mountpoint"),
            Just("from"),
            Just("snapshot"),
            Just("label"),
            Just("annotations"),
            Just("engine"),
            Just("discard"),
            Just("durability"),
            Just("quota"),
            "[a-z]{1,8}".prop_map(|s| Box::leak(s.into_boxed_str()) as &str),
        ];
        let value = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            "[a-z0-9./%-]{0,20}".prop_map(|s| serde_json::json!(format!("/no/such/dir/{s}"))),
            segment().prop_map(serde_json::Value::String),
            Just(serde_json::json!({"visits": [1, {"x": null}]})),
        ];
        let object = prop::collection::vec((key, value), 0..5).prop_map(|kv| {
            let m: serde_json::Map<String, serde_json::Value> =
                kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            serde_json::to_vec(&m).unwrap_or_default()
        });
        prop_oneof![
            3 => object,
            1 => prop::collection::vec(any::<u8>(), 0..64),
            1 => Just(Vec::new()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
        #[test]
        fn any_request_gets_a_clear_answer(
            method in prop_oneof![Just("GET"), Just("POST"), Just("PATCH"), Just("DELETE"), Just("PUT")],
            path in path(),
            body in body(),
        ) {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            let (_dir, mut router) = app();
            let (status, bytes) = rt.block_on(async {
                let Ok(mut req) = axum::http::Request::builder()
                    .method(method)
                    .uri(&path)
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(body.clone()))
                else {
                    // Not even a valid URI: the HTTP layer refuses it before routing.
                    return (StatusCode::BAD_REQUEST, Vec::new());
                };
                req.extensions_mut().insert(ConnectInfo(Peer { uid: Some(0), gid: Some(0) }));
                let resp = router.call(req).await.expect("infallible");
                let status = resp.status();
                let bytes = http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .map(|b| b.to_bytes().to_vec())
                    .unwrap_or_default();
                (status, bytes)
            });
            prop_assert!(status.as_u16() < 500, "{method} {path} {:?}: {status} {}", String::from_utf8_lossy(&body), String::from_utf8_lossy(&bytes));
            if !status.is_success() && !bytes.is_empty() {
                let v: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| TestCaseError::fail(format!("{method} {path}: not JSON ({e}): {}", String::from_utf8_lossy(&bytes))))?;
                prop_assert!(v["error"]["code"].is_string() && v["error"]["message"].is_string(), "{v}");
            }
        }
    }
}
