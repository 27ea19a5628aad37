//! Binding the Unix socket: parent directory, stale files, permissions.
//!
//! A daemon that crashed leaves its socket file behind; a new daemon replaces it.
//! A file that still answers belongs to a live daemon, and starting a second one
//! on the same path would silently steal its clients, so that is refused.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another shoald is already serving on {0}; stop it or choose another socket.path")]
    InUse(PathBuf),
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot create socket directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot bind {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds `path` with permission bits `mode`, replacing a stale socket file.
pub async fn bind(path: &Path, mode: u32) -> Result<UnixListener, BindError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| BindError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(BindError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        let live = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            UnixStream::connect(path),
        )
        .await;
        if matches!(live, Ok(Ok(_))) {
            return Err(BindError::InUse(path.to_path_buf()));
        }
        tracing::info!(path = %path.display(), "replacing stale socket file");
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| BindError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        BindError::Bind {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(listener)
}
