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
use axum::routing::{get, post};

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

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, tokio::net::UnixListener>,
    > for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Peer {
        match stream.io().peer_cred() {
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
                })
            }
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
    }
}

/// The whole API.
pub fn router(app: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(system::health))
        .route("/v1/stats", get(system::stats))
        .route("/metrics", get(system::metrics))
        .route("/v1/gc", post(system::gc))
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
        .route("/v1/snapshots/{id}/export", post(snapshots::export))
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
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app)
}

/// Parses an id from a path segment, as a 400 (not a 404) when malformed.
pub fn parse_id<T: std::str::FromStr<Err = helios_snapshot::Error>>(s: &str) -> ApiResult<T> {
    s.parse::<T>()
        .map_err(|e| ApiError::bad_request(e.to_string()))
}
