//! `/v1/workspaces`: create (fork + mount), list, get, snapshot, checkout, delete,
//! request counts.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use helios_snapshot::{SnapshotId, WorkspaceId};

use super::{ApiJson, ApiPath, AppState, blocking, parse_id};
use crate::error::{ApiError, ApiResult};
use crate::state::Create;
use crate::wire::{CheckoutIn, CreateWorkspaceIn, QuotaIn, SnapshotIn, SnapshotOut, WorkspaceOut};

/// `POST /v1/workspaces`.
pub async fn create(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<CreateWorkspaceIn>,
) -> ApiResult<(StatusCode, Json<WorkspaceOut>)> {
    let from: Option<SnapshotId> = body.from.as_deref().map(parse_id).transpose()?;
    let d = app.daemon.clone();
    let engine: helios_fs::EngineChoice = match body.engine.as_deref() {
        None => Default::default(),
        Some(e) => e
            .parse()
            .map_err(|e: helios_fs::Error| ApiError::bad_request(e.to_string()))?,
    };
    let out = blocking(move || {
        d.create(
            &body.mountpoint,
            from,
            engine,
            Create {
                drop_on_unmount: body.drop_on_unmount,
                read_only: body.read_only,
                quota: body.quota,
            },
        )
    })
    .await?;
    Ok((StatusCode::CREATED, Json(out)))
}

/// `GET /v1/workspaces`.
pub async fn list(State(app): State<AppState>) -> ApiResult<Json<Vec<WorkspaceOut>>> {
    let d = app.daemon.clone();
    Ok(Json(blocking(move || d.list()).await?))
}

/// `GET /v1/workspaces/{id}`.
pub async fn get_one(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<WorkspaceOut>> {
    let id: WorkspaceId = parse_id(&id)?;
    let d = app.daemon.clone();
    Ok(Json(blocking(move || d.get(id)).await?))
}

/// `POST /v1/workspaces/{id}/snapshot`.
pub async fn snapshot(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<SnapshotOut>)> {
    let id: WorkspaceId = parse_id(&id)?;
    // The body is optional: an empty one means no label and no annotations.
    let body: SnapshotIn = if body.iter().all(u8::is_ascii_whitespace) {
        SnapshotIn::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            crate::error::ApiError::bad_request(format!("invalid request body: {e}"))
        })?
    };
    let durability = super::durability(body.durability.as_deref())?;
    let req = helios_snapshot::SnapshotRequest {
        label: body.label,
        annotations: body.annotations.unwrap_or_default(),
        durability,
    };
    let d = app.daemon.clone();
    let s = blocking(move || d.snapshot(id, req)).await?;
    Ok((StatusCode::CREATED, Json(SnapshotOut::from(&s))))
}

/// `POST /v1/workspaces/{id}/checkout`.
pub async fn checkout(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<CheckoutIn>,
) -> ApiResult<Json<WorkspaceOut>> {
    let id: WorkspaceId = parse_id(&id)?;
    let snap: SnapshotId = parse_id(&body.snapshot)?;
    let d = app.daemon.clone();
    Ok(Json(
        blocking(move || d.checkout(id, snap, body.discard)).await?,
    ))
}

/// `PUT /v1/workspaces/{id}/quota`: sets its limits (`{}` removes them).
pub async fn set_quota(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<QuotaIn>,
) -> ApiResult<Json<WorkspaceOut>> {
    let id: WorkspaceId = parse_id(&id)?;
    let quota = helios_snapshot::Quota {
        bytes: body.bytes,
        inodes: body.inodes,
    };
    let d = app.daemon.clone();
    Ok(Json(blocking(move || d.set_quota(id, Some(quota))).await?))
}

/// `DELETE /v1/workspaces/{id}`: unmount and drop.
pub async fn delete(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let id: WorkspaceId = parse_id(&id)?;
    let d = app.daemon.clone();
    blocking(move || d.delete(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/workspaces/{id}/requests`: the FUSE requests its mount served, by opcode.
pub async fn requests(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let id: WorkspaceId = parse_id(&id)?;
    let d = app.daemon.clone();
    Ok(Json(blocking(move || d.requests(id)).await?))
}
