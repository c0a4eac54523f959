//! Small filesystem helpers for files written whole and replaced atomically (index dumps).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `dir` with `.suffix` appended to its last component.
pub fn sibling(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .ok_or_else(|| Error::invalid(format!("directory {} has no name", dir.display())))?;
    let mut s = name.to_os_string();
    s.push(format!(".{suffix}"));
    Ok(dir.with_file_name(s))
}

/// Writes `bytes` to a new file at `path` and fsyncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f =
        fs::File::create(path).map_err(|e| Error::io(format!("create {}", path.display()), e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("write {}", path.display()), e))
}

/// Moves `tmp` to `dir`: the old dump is moved aside first, then removed.
pub fn replace_dir(tmp: &Path, dir: &Path) -> Result<()> {
    let old = sibling(dir, "old")?;
    let _ = fs::remove_dir_all(&old);
    if dir.exists() {
        fs::rename(dir, &old).map_err(|e| Error::io(format!("move aside {}", dir.display()), e))?;
    }
    fs::rename(tmp, dir).map_err(|e| Error::io(format!("rename into {}", dir.display()), e))?;
    if let Some(parent) = dir.parent() {
        let _ = fs::File::open(parent).and_then(|f| f.sync_all());
    }
    let _ = fs::remove_dir_all(&old);
    Ok(())
}

/// Bytes available to this process on the file system holding `path` (`statvfs`).
pub fn free_bytes(path: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::invalid(format!("{} contains a NUL byte", path.display())))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `st` is a properly sized, writable buffer that
    // statvfs fills on success; it is read only then.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::io(format!("statvfs {}", path.display()), e));
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Removes a directory tree; absent is fine.
pub fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", dir.display()), e)),
    }
}

/// fsyncs every file and directory under `dir` (sled's own flush does not; see `storage`).
/// A file removed while we walk needs no sync.
pub fn sync_tree(dir: &Path) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    for entry in entries {
        let path = entry
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
            .path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else if let Err(e) = std::fs::File::open(&path).and_then(|f| f.sync_all()) {
            // sled may remove a file (an old snapshot) while we walk: that one needs no sync.
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(Error::io(format!("syncing {}", path.display()), e));
            }
        }
    }
    sync_dir(dir)
}

/// fsyncs a directory, so that files created or removed in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
}
