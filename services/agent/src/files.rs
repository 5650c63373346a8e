//! The agent's sandbox files over HTTP, as Mesos' agent serves them (Mesos `src/files/files.cpp`; for the
//! Mesos web UI, the Mesos CLI and Toil, which fetches a lost executor's logs): on the executor API's address,
//! `GET /files/browse?path=DIR` (a JSON array of `{path, mode, nlink, uid, gid, size, mtime}`, sorted by
//! path), `GET /files/read?path=FILE&offset=N&length=M` (`{"data": "...", "offset": N}`: at most 64 KiB from
//! byte `offset`; `offset=-1` asks for the size, answered as `offset` with no data), `GET
//! /files/download?path=FILE` (the raw bytes, as an attachment), and `GET /files/debug` (each sandbox the
//! caller may read, `{virtual path: real path}`; the two are the same here). Each also answers with a
//! `.json` suffix, as in Mesos.
//!
//! Paths are the sandbox directories the agent reports (`directory` in its `/state`, `sandbox` in `allot
//! tasks --json`) and what lies under them: `<work_dir>/sandboxes/<framework>/<task>` for command tasks,
//! `<work_dir>/executors/<framework>/<executor>/runs/<container>` for frameworks' executors. A path is
//! resolved (symbolic links followed) before it is checked, so neither `..` nor a link a task left in its
//! sandbox reaches anything else: such a path is `404`, as an unknown one is.
//!
//! Who may read: an operator or framework with HTTP basic credentials from the agent's `--credentials` (Mesos'
//! `--http_credentials`), every sandbox; an executor (its bearer token, or a connection from its process
//! group, as on the executor API), its own sandbox only. Anyone else gets `401`. Errors are Mesos': `400` for
//! a missing or malformed query parameter or for reading a directory, `404` for a path that is not (in) a
//! sandbox the caller may read.

use crate::Agent;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The most `/files/read` returns at once: 16 pages, as Mesos.
const READ_MAX: u64 = 16 * 4096;

/// The `/files` routes.
pub fn router(agent: Arc<Agent>) -> axum::Router {
    use axum::routing::get;
    let mut r = axum::Router::new();
    for suffix in ["", ".json"] {
        r = r
            .route(&format!("/files/browse{suffix}"), get(browse))
            .route(&format!("/files/read{suffix}"), get(read))
            .route(&format!("/files/download{suffix}"), get(download))
            .route(&format!("/files/debug{suffix}"), get(debug));
    }
    r.with_state(agent)
}

/// The sandboxes a caller may read, as real (resolved) directories.
enum Reader {
    /// Every sandbox on this agent (an authenticated operator or framework).
    All,
    /// One executor's own sandbox.
    Only(PathBuf),
}

/// Who calls, and so what they may read.
///
/// # Errors
/// `401`: neither credentials of the agent's `--credentials` file nor an executor's identity.
async fn reader(
    agent: &Agent,
    peer: std::net::SocketAddr,
    headers: &HeaderMap,
) -> Result<Reader, Refusal> {
    use crate::executor_api::{NOT_A_READER, Reader as Caller};
    match crate::executor_api::reader(agent, peer, headers, &agent.executors.all()).await {
        Ok(Caller::Operator) => Ok(Reader::All),
        Ok(Caller::Executor(c)) => Ok(Reader::Only(c.sandbox.clone())),
        Err(why) => Err(unauthorized(why.unwrap_or(NOT_A_READER))),
    }
}

/// A refusal: the status and a plain-text body (a `401` also names the Basic scheme).
type Refusal = (StatusCode, String);

fn unauthorized(why: &str) -> Refusal {
    (StatusCode::UNAUTHORIZED, format!("Unauthorized: {why}"))
}

fn plain(code: StatusCode, message: impl Into<String>) -> Refusal {
    (code, message.into())
}

/// A plain-text error answer.
fn refuse(code: StatusCode, message: impl Into<String>) -> Response {
    answer(plain(code, message))
}

/// The HTTP answer for a refusal.
fn answer((code, message): Refusal) -> Response {
    let mut r = (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response();
    if code == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"allot-agent\""),
        );
    }
    r
}

fn json(body: &serde_json::Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The roots a reader may see: resolved directories.
fn roots(work_dir: &Path, reader: &Reader) -> Vec<PathBuf> {
    match reader {
        Reader::All => ["sandboxes", "executors"]
            .iter()
            .filter_map(|d| std::fs::canonicalize(work_dir.join(d)).ok())
            .collect(),
        Reader::Only(sandbox) => std::fs::canonicalize(sandbox).into_iter().collect(),
    }
}

/// `path` resolved, if it is a sandbox the reader may see or lies inside one (blocking).
///
/// # Errors
/// `400` for an empty path, `404` otherwise.
fn resolve(work_dir: &Path, reader: &Reader, path: &str) -> Result<PathBuf, Refusal> {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(plain(
            StatusCode::BAD_REQUEST,
            "Expecting 'path=value' in query.\n",
        ));
    }
    let not_found = || {
        plain(
            StatusCode::NOT_FOUND,
            format!("'{path}' is not in a sandbox you may read.\n"),
        )
    };
    let real = std::fs::canonicalize(trimmed).map_err(|_| not_found())?;
    let roots = roots(work_dir, reader);
    let inside = roots.iter().any(|root| match reader {
        // An operator may read a sandbox or anything in one, not the directories that hold them.
        Reader::All => real
            .strip_prefix(root)
            .is_ok_and(|rest| rest.components().count() >= 2),
        Reader::Only(_) => real.starts_with(root),
    });
    match inside {
        true => Ok(real),
        false => Err(not_found()),
    }
}

/// The `path` query parameter.
fn path_of(q: &HashMap<String, String>) -> Result<&str, Refusal> {
    q.get("path").map(String::as_str).ok_or_else(|| {
        plain(
            StatusCode::BAD_REQUEST,
            "Expecting 'path=value' in query.\n",
        )
    })
}

/// Runs `f` (file system work) on a blocking thread.
async fn blocking(f: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| refuse(StatusCode::INTERNAL_SERVER_ERROR, "the request failed"))
}

/// Who calls (see [`reader`]) and the `path` they ask for.
///
/// # Errors
/// `401` from [`reader`], then `400` without a path.
async fn reader_and_path(
    agent: &Agent,
    peer: std::net::SocketAddr,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> Result<(Reader, String), Refusal> {
    let reader = reader(agent, peer, headers).await?;
    Ok((reader, path_of(q)?.to_string()))
}

/// `GET /files/browse?path=DIR`.
async fn browse(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (reader, path) = match reader_and_path(&agent, peer, &headers, &q).await {
        Ok((r, p)) => (r, p.trim_end_matches('/').to_string()),
        Err(refusal) => return answer(refusal),
    };
    let work_dir = agent.work_dir.clone();
    blocking(move || {
        let real = match resolve(&work_dir, &reader, &path) {
            Ok(r) => r,
            Err(refusal) => return answer(refusal),
        };
        let mut listing = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&real) {
            for e in entries.flatten() {
                let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
                    continue;
                };
                let name = e.file_name().to_string_lossy().into_owned();
                listing.push(file_info(&format!("{path}/{name}"), &meta));
            }
        }
        listing.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
        json(&serde_json::Value::Array(listing))
    })
    .await
}

/// One entry of a listing, as Mesos models a `FileInfo`: `mode` as `ls -l` writes it, `uid` and `gid` as
/// names where they have one, `size` in bytes, `mtime` in seconds since the Unix epoch.
fn file_info(path: &str, meta: &std::fs::Metadata) -> serde_json::Value {
    use std::os::unix::fs::MetadataExt as _;
    let ft = meta.file_type();
    use std::os::unix::fs::FileTypeExt as _;
    let kind = if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_socket() {
        's'
    } else {
        '-'
    };
    let mode = meta.mode();
    let mut text = String::from(kind);
    for (bit, c) in [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ] {
        text.push(if mode & bit != 0 { c } else { '-' });
    }
    let user = nix::unistd::User::from_uid(meta.uid().into())
        .ok()
        .flatten()
        .map_or_else(|| meta.uid().to_string(), |u| u.name);
    let group = nix::unistd::Group::from_gid(meta.gid().into())
        .ok()
        .flatten()
        .map_or_else(|| meta.gid().to_string(), |g| g.name);
    serde_json::json!({
        "path": path, "mode": text, "nlink": meta.nlink(), "uid": user, "gid": group,
        "size": meta.size(), "mtime": meta.mtime(),
    })
}

/// A query number: absent, or a decimal integer.
fn number(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, Refusal> {
    q.get(name)
        .map(|v| {
            v.parse::<i64>().map_err(|e| {
                plain(
                    StatusCode::BAD_REQUEST,
                    format!("Failed to parse {name}: {e}.\n"),
                )
            })
        })
        .transpose()
}

/// `GET /files/read?path=FILE&offset=N&length=M`.
async fn read(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (reader, path) = match reader_and_path(&agent, peer, &headers, &q).await {
        Ok(rp) => rp,
        Err(refusal) => return answer(refusal),
    };
    let (offset, length) = match (number(&q, "offset"), number(&q, "length")) {
        (Ok(o), Ok(l)) => (o, l),
        (Err(a), _) | (_, Err(a)) => return answer(a),
    };
    if offset.is_some_and(|o| o < -1) {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "Negative offset provided: {}.\n",
                offset.unwrap_or_default()
            ),
        );
    }
    if length.is_some_and(|l| l < -1) {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "Negative length provided: {}.\n",
                length.unwrap_or_default()
            ),
        );
    }
    let work_dir = agent.work_dir.clone();
    blocking(move || {
        use std::io::{Read as _, Seek as _};
        let real = match resolve(&work_dir, &reader, &path) {
            Ok(r) => r,
            Err(refusal) => return answer(refusal),
        };
        if real.is_dir() {
            return refuse(StatusCode::BAD_REQUEST, "Cannot read a directory.\n");
        }
        let mut file = match std::fs::File::open(&real) {
            Ok(f) => f,
            Err(e) => {
                return refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("Failed to open file at '{path}': {e}.\n"),
                );
            }
        };
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        // offset -1 (the web UI's first question): the size, and no data.
        let (offset, length) = match offset {
            Some(-1) => (size, 0),
            o => (
                o.unwrap_or(0) as u64,
                length.filter(|l| *l >= 0).map_or(u64::MAX, |l| l as u64),
            ),
        };
        let mut data = Vec::new();
        if offset < size && length > 0 && file.seek(std::io::SeekFrom::Start(offset)).is_ok() {
            let _ = file.take(length.min(READ_MAX)).read_to_end(&mut data);
        }
        json(&serde_json::json!({
            "offset": offset.min(size),
            "data": String::from_utf8_lossy(&data),
        }))
    })
    .await
}

/// `GET /files/download?path=FILE`: the file's bytes, streamed.
async fn download(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (reader, path) = match reader_and_path(&agent, peer, &headers, &q).await {
        Ok(rp) => rp,
        Err(refusal) => return answer(refusal),
    };
    let work_dir = agent.work_dir.clone();
    let resolved = tokio::task::spawn_blocking(move || {
        resolve(&work_dir, &reader, &path).and_then(|real| match real.is_dir() {
            true => Err(plain(
                StatusCode::BAD_REQUEST,
                "Cannot download a directory.\n",
            )),
            false => Ok(real),
        })
    })
    .await;
    let real = match resolved {
        Ok(Ok(real)) => real,
        Ok(Err(refusal)) => return answer(refusal),
        Err(_) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, "the request failed"),
    };
    let file = match tokio::fs::File::open(&real).await {
        Ok(f) => f,
        Err(e) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Failed to open file: {e}.\n"),
            );
        }
    };
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().replace('"', ""))
        .unwrap_or_default();
    // The size now: a file still being written (a running task's stdout) is sent as it was when asked for.
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    use tokio::io::AsyncReadExt as _;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file.take(len)));
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

/// `GET /files/debug`: `{virtual path: real path}` for every sandbox the caller may read.
async fn debug(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let reader = match reader(&agent, peer, &headers).await {
        Ok(r) => r,
        Err(refusal) => return answer(refusal),
    };
    let work_dir = agent.work_dir.clone();
    blocking(move || {
        let mut out = serde_json::Map::new();
        let mut add = |p: PathBuf| {
            let p = p.display().to_string();
            out.insert(p.clone(), serde_json::Value::String(p));
        };
        match &reader {
            Reader::Only(sandbox) => add(sandbox.clone()),
            Reader::All => {
                let ls = |p: PathBuf| {
                    std::fs::read_dir(p)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| e.path())
                };
                for fw in ls(work_dir.join("sandboxes")) {
                    ls(fw).for_each(&mut add);
                }
                for fw in ls(work_dir.join("executors")) {
                    for executor in ls(fw) {
                        ls(executor.join("runs")).for_each(&mut add);
                    }
                }
            }
        }
        json(&serde_json::Value::Object(out))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_sees_only_its_sandboxes() {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path();
        let mine = w.join("executors/fw/e1");
        let theirs = w.join("executors/fw/e2");
        let task = w.join("sandboxes/fw/t1");
        for d in [&mine, &theirs, &task, &w.join("meta")] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(theirs.join("stdout"), "x").unwrap();
        std::fs::write(mine.join("stdout"), "x").unwrap();
        std::os::unix::fs::symlink(theirs.join("stdout"), mine.join("link")).unwrap();
        let ok = |r: &Reader, p: &Path| resolve(w, r, &p.display().to_string()).is_ok();
        let executor = Reader::Only(mine.clone());
        assert!(ok(&executor, &mine));
        assert!(ok(&executor, &mine.join("stdout")));
        assert!(
            !ok(&executor, &theirs.join("stdout")),
            "another executor's sandbox"
        );
        assert!(
            !ok(&executor, &mine.join("link")),
            "a link out of the sandbox"
        );
        assert!(
            !ok(&executor, &mine.join("../e2/stdout")),
            "`..` out of the sandbox"
        );
        assert!(!ok(&executor, &task));
        assert!(ok(&Reader::All, &theirs.join("stdout")));
        assert!(ok(&Reader::All, &task));
        assert!(!ok(&Reader::All, &w.join("meta")), "the agent's own files");
        assert!(
            !ok(&Reader::All, &w.join("executors/fw")),
            "what holds sandboxes"
        );
        assert_eq!(
            resolve(w, &Reader::All, "").unwrap_err().0,
            StatusCode::BAD_REQUEST
        );
    }
}
