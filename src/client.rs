//! A small HTTP/1.1 client for the daemon's Unix socket.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Talks to one daemon.
pub struct Client {
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
}

/// A non-2xx answer: the server's error code and message.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// The paths a merge conflict names.
    pub paths: Vec<String>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, HTTP {})", self.message, self.code, self.status)?;
        for p in &self.paths {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

impl Client {
    pub fn new(socket: &Path) -> Result<Client> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Client {
            socket: socket.to_path_buf(),
            rt,
        })
    }

    /// Sends one request; returns the JSON body of a 2xx answer (`null` when empty).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let (status, bytes) = self.rt.block_on(self.send(method, path, body))?;
        let value: serde_json::Value = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
            })
        };
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let err = &value["error"];
        Err(ApiError {
            status,
            code: err["code"].as_str().unwrap_or("unknown").to_string(),
            message: err["message"]
                .as_str()
                .map_or_else(|| value.to_string(), str::to_string),
            paths: err["paths"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect(),
        }
        .into())
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, Bytes)> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .with_context(|| {
                format!(
                    "cannot reach the helios daemon at {} (is `helios serve` running?)",
                    self.socket.display()
                )
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let data = match &body {
            Some(v) => Bytes::from(serde_json::to_vec(v)?),
            None => Bytes::new(),
        };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "helios");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let resp = sender.send_request(req.body(Full::new(data))?).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }
}
