//! Atomic small-document writes: temp file, fsync, rename, fsync of the directory.

use super::StoreError;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Replaces `path` with `contents` so that a crash leaves either the old or the new document.
/// The file is created with mode 0600 on Unix (state files may hold secrets).
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), StoreError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&tmp)
        .map_err(StoreError::io(format!("creating {}", tmp.display())))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(StoreError::io(format!("writing {}", tmp.display())))?;
    drop(file);
    fs::rename(&tmp, path).map_err(StoreError::io(format!(
        "renaming {} to {}",
        tmp.display(),
        path.display()
    )))?;
    fsync_dir(dir)
}

/// Replaces `path` with `value` as pretty JSON, atomically (see [`write_atomic`]).
pub fn write_json<T: serde::Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), StoreError> {
    let json = serde_json::to_vec_pretty(value)
        .map_err(|e| StoreError::Corrupt(format!("encoding {}: {e}", path.display())))?;
    write_atomic(path, &json)
}

/// The JSON document at `path`; `None` when it does not exist, `Corrupt` when it does not parse.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))
}

/// Makes a directory's entries (creations, renames, deletions) durable.
pub fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(StoreError::io(format!(
                "syncing directory {}",
                dir.display()
            )))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Reads a whole text file; `None` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<String>, StoreError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io {
            context: format!("reading {}", path.display()),
            cause: std::sync::Arc::new(e),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_contents_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doc.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("doc.json")]);
    }
}
