//! Health, stats, metrics, gc and fsck.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use helios_snapshot::{FsckReport, GcReport, PackReport, Stats};

use super::{AppState, blocking};
use crate::error::ApiResult;

/// `GET /v1/health`.
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// `GET /v1/stats`.
pub async fn stats(State(app): State<AppState>) -> ApiResult<Json<Stats>> {
    let repo = app.daemon.repo.clone();
    Ok(Json(blocking(move || Ok(repo.stats()?)).await?))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(app): State<AppState>) -> ApiResult<impl IntoResponse> {
    let d = app.daemon.clone();
    let text = blocking(move || {
        let s = d.repo.stats()?;
        let store = d.repo.store().stats();
        let lookups = (s.cache_hits + s.cache_misses).max(1) as f64;
        let mut gauges = vec![
            (
                "helios_store_objects",
                "Objects in the store.",
                s.objects as f64,
            ),
            (
                "helios_store_stored_bytes",
                "Bytes the store's objects take.",
                s.stored_bytes as f64,
            ),
            (
                "helios_store_logical_bytes",
                "File bytes summed over every snapshot.",
                s.logical_bytes as f64,
            ),
            ("helios_snapshots", "Snapshots.", s.snapshots as f64),
            (
                "helios_workspaces_mounted",
                "Mounted workspaces.",
                d.mounted() as f64,
            ),
            (
                "helios_cache_hit_ratio",
                "Object cache hits / lookups since start.",
                s.cache_hits as f64 / lookups,
            ),
            (
                "helios_object_cache_bytes",
                "Bytes held by the object cache.",
                store.cache_bytes as f64,
            ),
            (
                "helios_process_resident_bytes",
                "The daemon's resident memory (VmRSS).",
                resident_bytes() as f64,
            ),
        ];
        for (part, bytes) in d.repo.store().backend().memory() {
            let (name, help) = match part {
                "memtables" => (
                    "helios_rocksdb_memtable_bytes",
                    "RocksDB memtables, all column families.",
                ),
                "table_readers" => (
                    "helios_rocksdb_table_readers_bytes",
                    "RocksDB table readers outside the block cache (estimate).",
                ),
                "block_cache" => (
                    "helios_rocksdb_block_cache_bytes",
                    "RocksDB block cache in use (bounded, shared).",
                ),
                "block_cache_pinned" => (
                    "helios_rocksdb_block_cache_pinned_bytes",
                    "RocksDB block cache entries pinned.",
                ),
                _ => continue,
            };
            gauges.push((name, help, bytes as f64));
        }
        Ok(d.metrics.render(&gauges))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

/// `POST /v1/gc`.
pub async fn gc(State(app): State<AppState>) -> ApiResult<Json<GcReport>> {
    let repo = app.daemon.repo.clone();
    Ok(Json(blocking(move || Ok(repo.gc()?)).await?))
}

/// `POST /v1/pack`: packs the snapshots taken since the last pack now (the daemon also
/// does it in the background).
pub async fn pack(State(app): State<AppState>) -> ApiResult<Json<PackReport>> {
    let repo = app.daemon.repo.clone();
    Ok(Json(blocking(move || Ok(repo.pack()?)).await?))
}

/// `POST /v1/fsck`.
pub async fn fsck(State(app): State<AppState>) -> ApiResult<Json<FsckReport>> {
    let repo = app.daemon.repo.clone();
    Ok(Json(blocking(move || Ok(repo.fsck()?)).await?))
}

/// VmRSS of this process, in bytes (0 where /proc does not say).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |k| k << 10)
}
