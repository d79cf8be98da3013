//! `/v1/snapshots`: import, list, get, annotate, delete, diff, merge, export, warm.

use std::path::PathBuf;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use helios_snapshot::{Hash, SnapshotId};
use serde::Deserialize;

use super::{ApiJson, ApiPath, ApiQuery, AppState, blocking, parse_id};
use crate::error::{ApiError, ApiResult};
use crate::wire::{
    ChangeOut, DiffOut, ExportIn, ImportIn, MergeIn, PatchIn, RemovedOut, SnapshotOut, WarmOut,
};

fn absolute(path: &str, what: &str) -> ApiResult<PathBuf> {
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(ApiError::bad_request(format!(
            "{what} {path:?} is not an absolute path"
        )));
    }
    Ok(p)
}

/// `POST /v1/snapshots/import`.
pub async fn import(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<ImportIn>,
) -> ApiResult<(StatusCode, Json<SnapshotOut>)> {
    let path = absolute(&body.path, "import path")?;
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(ApiError::bad_request(format!(
                "import path {:?} is not a directory",
                body.path
            )));
        }
        Err(e) => {
            return Err(ApiError::bad_request(format!(
                "import path {:?}: {e}",
                body.path
            )));
        }
    }
    let repo = app.daemon.repo.clone();
    let s = blocking(move || Ok(repo.import(&path, body.label)?)).await?;
    Ok((StatusCode::CREATED, Json(SnapshotOut::from(&s))))
}

/// Filters of `GET /v1/snapshots`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    parent: Option<String>,
    root: Option<String>,
}

/// `GET /v1/snapshots[?parent=&root=]`.
pub async fn list(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Vec<SnapshotOut>>> {
    let parent: Option<SnapshotId> = q.parent.as_deref().map(parse_id).transpose()?;
    let root: Option<Hash> = q
        .root
        .as_deref()
        .map(|r| {
            r.parse()
                .map_err(|e: helios_snapshot::Error| ApiError::bad_request(e.to_string()))
        })
        .transpose()?;
    let repo = app.daemon.repo.clone();
    let out = blocking(move || {
        // Filters go through the indexes: O(matches), not a scan of every snapshot.
        let candidates = match (root, parent) {
            (Some(r), _) => repo.by_root(&r)?,
            (None, Some(p)) => repo.children(Some(p))?,
            (None, None) => return Ok(repo.snapshots()?.iter().map(SnapshotOut::from).collect()),
        };
        let mut out = Vec::with_capacity(candidates.len());
        for id in candidates {
            let s = repo.snapshot(id)?;
            if parent.is_none() || s.parent == parent {
                out.push(SnapshotOut::from(&s));
            }
        }
        Ok(out)
    })
    .await?;
    Ok(Json(out))
}

/// `GET /v1/snapshots/{id}`.
pub async fn get_one(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<SnapshotOut>> {
    let id: SnapshotId = parse_id(&id)?;
    let repo = app.daemon.repo.clone();
    let s = blocking(move || Ok(repo.snapshot(id)?)).await?;
    Ok(Json(SnapshotOut::from(&s)))
}

/// `PATCH /v1/snapshots/{id}`.
pub async fn patch(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<PatchIn>,
) -> ApiResult<Json<SnapshotOut>> {
    let id: SnapshotId = parse_id(&id)?;
    let durability = super::durability(body.durability.as_deref())?;
    let repo = app.daemon.repo.clone();
    let s = blocking(move || {
        Ok(repo.update_snapshot_with(id, body.label, body.annotations, durability)?)
    })
    .await?;
    Ok(Json(SnapshotOut::from(&s)))
}

/// Options of `DELETE /v1/snapshots/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    #[serde(default)]
    recursive: bool,
}

/// `DELETE /v1/snapshots/{id}[?recursive=true]`.
pub async fn delete(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> ApiResult<Json<RemovedOut>> {
    let id: SnapshotId = parse_id(&id)?;
    let repo = app.daemon.repo.clone();
    let removed = blocking(move || Ok(repo.prune(id, q.recursive)?)).await?;
    Ok(Json(RemovedOut {
        removed: removed.iter().map(|i| i.to_string()).collect(),
    }))
}

/// `POST /v1/snapshots/{a}/merge/{b}`: `b` merged into `a`, as a new child of `a`
/// (201), or 409 `conflict` naming the paths, `no_common_ancestor`, or `dirty` for an
/// `into` workspace with uncommitted changes.
pub async fn merge(
    State(app): State<AppState>,
    ApiPath((a, b)): ApiPath<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<SnapshotOut>)> {
    let (a, b): (SnapshotId, SnapshotId) = (parse_id(&a)?, parse_id(&b)?);
    // The body is optional, as for a workspace's snapshot.
    let body: MergeIn = if body.iter().all(u8::is_ascii_whitespace) {
        MergeIn::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?
    };
    let durability = super::durability(body.durability.as_deref())?;
    let into: Option<helios_snapshot::WorkspaceId> =
        body.into.as_deref().map(parse_id).transpose()?;
    let req = helios_snapshot::SnapshotRequest {
        label: body.label,
        annotations: body.annotations.unwrap_or_default(),
        durability,
    };
    let d = app.daemon.clone();
    let s = blocking(move || d.merge(a, b, req, into)).await?;
    Ok((StatusCode::CREATED, Json(SnapshotOut::from(&s))))
}

/// `GET /v1/snapshots/{a}/diff/{b}`.
pub async fn diff(
    State(app): State<AppState>,
    ApiPath((a, b)): ApiPath<(String, String)>,
) -> ApiResult<Json<DiffOut>> {
    let (a, b): (SnapshotId, SnapshotId) = (parse_id(&a)?, parse_id(&b)?);
    let repo = app.daemon.repo.clone();
    let changes = blocking(move || Ok(repo.diff(a, b)?)).await?;
    Ok(Json(DiffOut {
        changes: changes.iter().map(ChangeOut::from).collect(),
    }))
}

/// `POST /v1/snapshots/{id}/export`.
pub async fn export(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ExportIn>,
) -> ApiResult<Json<serde_json::Value>> {
    let id: SnapshotId = parse_id(&id)?;
    let path = absolute(&body.path, "export path")?;
    let repo = app.daemon.repo.clone();
    let p = path.clone();
    blocking(move || Ok(repo.export(id, &p)?)).await?;
    Ok(Json(serde_json::json!({"path": path})))
}

/// `POST /v1/snapshots/{id}/warm`: makes forks of a snapshot fast, returning when done.
pub async fn warm(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<WarmOut>> {
    let id: SnapshotId = parse_id(&id)?;
    let daemon = app.daemon.clone();
    let w = blocking(move || daemon.warm(id)).await?;
    Ok(Json(WarmOut {
        snapshot: id.to_string(),
        native: w.native,
        paths: w.paths,
        files: w.files,
        bytes: w.bytes,
        latency_us: w.micros,
    }))
}
