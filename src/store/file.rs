//! Notices when the SQLite store's file (or its `-wal`) is deleted, moved or replaced while
//! sever keeps it open.
//!
//! SQLite goes on writing into an unlinked file without complaint, so every later commit
//! would be acknowledged and then vanish at the next restart. The check compares what the
//! path names now (device and inode) with the file that sever opened at start-up, and with
//! the files its connection holds open right now (found in `/proc/self/fd`). The `-wal` is
//! compared only against the open descriptor: SQLite itself deletes it when the last
//! connection closes and creates a new one at the next open, so its inode may change
//! legitimately, but never while a connection holds it. The check therefore runs only while
//! the caller holds a pool connection, so sever's own connection cannot be closing (and
//! SQLite deleting its `-wal`) meanwhile. Once lost, the store stays lost until a restart.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Where the process's open descriptors are listed (Linux). Elsewhere only the path is
/// compared with the file opened at start-up.
const FD_DIR: &str = "/proc/self/fd";

/// A file's identity: device and inode.
type Identity = (u64, u64);

fn identity(metadata: &fs::Metadata) -> Identity {
    (metadata.dev(), metadata.ino())
}

/// Watches one SQLite database file and its `-wal`.
#[derive(Debug)]
pub struct FileWatch {
    /// The path as configured (made absolute): what a restart would open.
    configured: PathBuf,
    /// The file it resolved to at start-up, as descriptor links name it.
    db: PathBuf,
    wal: PathBuf,
    opened: Identity,
    lost: OnceLock<String>,
    /// Descriptors last seen naming the database or its `-wal`, so a check usually reads two
    /// links instead of the whole descriptor table.
    fds: Mutex<Vec<String>>,
}

impl FileWatch {
    /// Watches `path` as it is now; `None` when it names no file (an in-memory database).
    pub fn new(path: &Path) -> Option<Self> {
        let db = fs::canonicalize(path).ok()?;
        let opened = identity(&fs::metadata(&db).ok()?);
        let mut wal = db.clone().into_os_string();
        wal.push("-wal");
        Some(Self {
            configured: std::path::absolute(path).ok()?,
            wal: PathBuf::from(wal),
            db,
            opened,
            lost: OnceLock::new(),
            fds: Mutex::new(Vec::new()),
        })
    }

    /// Checks the database file and its `-wal`; the caller must hold a pool connection.
    /// Returns why the store is lost (now or earlier).
    pub fn check(&self) -> Result<(), &str> {
        if let Some(why) = self.lost.get() {
            return Err(why);
        }
        match self.find_loss() {
            None => Ok(()),
            Some(why) => Err(self.latch(why)),
        }
    }

    /// Checks only that the path still names the file opened at start-up: safe without a
    /// held connection (for when none can be had).
    pub fn check_path(&self) -> Result<(), &str> {
        if let Some(why) = self.lost.get() {
            return Err(why);
        }
        match self.path_loss() {
            None => Ok(()),
            Some(why) => Err(self.latch(why)),
        }
    }

    fn latch(&self, why: String) -> &str {
        let mut first = false;
        let why = self.lost.get_or_init(|| {
            first = true;
            why
        });
        if first {
            tracing::error!(
                path = %self.db.display(),
                reason = %why,
                "the store file was lost while sever had it open: new work is refused with 503 \
                 and /readyz reports unavailable until sever is restarted; work accepted \
                 before this finishes in the open file, and records written from now on do not \
                 survive a restart"
            );
        }
        why
    }

    /// Both the configured path (a symlink, say) and the file it resolved to must still name
    /// the file opened at start-up.
    fn path_loss(&self) -> Option<String> {
        let mut paths = vec![&self.db];
        if self.configured != self.db {
            paths.push(&self.configured);
        }
        paths.into_iter().find_map(|path| match fs::metadata(path) {
            Err(e) => Some(format!("{} is gone: {e}", path.display())),
            Ok(m) if identity(&m) != self.opened => Some(format!(
                "{} is no longer the file sever opened at start-up (it was replaced)",
                path.display()
            )),
            Ok(_) => None,
        })
    }

    fn find_loss(&self) -> Option<String> {
        if let Some(why) = self.path_loss() {
            return Some(why);
        }
        for (fd, path) in self.open_descriptors() {
            // `stat` through the descriptor's link reaches the open file even when unlinked.
            let Ok(open) = fs::metadata(&fd) else {
                continue;
            };
            let named = fs::metadata(path);
            let same = named
                .as_ref()
                .is_ok_and(|named| identity(named) == identity(&open));
            if open.nlink() == 0 || !same {
                return Some(match named {
                    Err(e) => format!("{} is gone while open: {e}", path.display()),
                    Ok(_) if open.nlink() == 0 => {
                        format!("{} was deleted while open", path.display())
                    }
                    Ok(_) => format!("{} was replaced while open", path.display()),
                });
            }
        }
        None
    }

    /// The descriptors (as `/proc/self/fd/N` paths) that name the database or its `-wal`,
    /// with the path each names.
    fn open_descriptors(&self) -> Vec<(String, &Path)> {
        let mut cached = self.fds.lock().unwrap_or_else(|e| e.into_inner());
        let found: Vec<_> = cached.iter().filter_map(|fd| self.names(fd)).collect();
        // Still valid only if every cached descriptor names its file and both files are
        // among them; otherwise the connection changed (or had not opened its `-wal` yet).
        let complete = [&self.db, &self.wal]
            .iter()
            .all(|p| found.iter().any(|(_, named)| named == p));
        if complete && found.len() == cached.len() {
            return found;
        }
        let Ok(entries) = fs::read_dir(FD_DIR) else {
            return Vec::new();
        };
        let found: Vec<_> = entries
            .filter_map(|entry| {
                let fd = entry.ok()?.path().to_str()?.to_owned();
                self.names(&fd)
            })
            .collect();
        *cached = found.iter().map(|(fd, _)| fd.clone()).collect();
        found
    }

    /// Which of the two files descriptor link `fd` names, if either (deleted or not).
    fn names(&self, fd: &str) -> Option<(String, &Path)> {
        let target = fs::read_link(fd).ok()?;
        let target = target.to_str()?;
        let target = target.strip_suffix(" (deleted)").unwrap_or(target);
        [&self.db, &self.wal]
            .into_iter()
            .find(|p| p.as_os_str() == target)
            .map(|p| (fd.to_owned(), p.as_path()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_or_replaced_file_is_lost_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        fs::write(&path, b"x").unwrap();
        let watch = FileWatch::new(&path).unwrap();
        assert_eq!(watch.check(), Ok(()));
        fs::remove_file(&path).unwrap();
        assert!(watch.check_path().unwrap_err().contains("is gone"));
        // Latched: a new file at the path does not bring the old one back.
        fs::write(&path, b"y").unwrap();
        assert!(watch.check().unwrap_err().contains("is gone"));

        let watch = FileWatch::new(&path).unwrap();
        // Held open as sever's connection holds it, so its inode cannot be reused.
        let _open = fs::File::open(&path).unwrap();
        fs::remove_file(&path).unwrap();
        fs::write(&path, b"z").unwrap();
        assert!(watch.check().unwrap_err().contains("replaced"));
    }

    #[test]
    fn a_configured_symlink_pointed_elsewhere_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (real, other, link) = (
            dir.path().join("a.db"),
            dir.path().join("b.db"),
            dir.path().join("s.db"),
        );
        fs::write(&real, b"x").unwrap();
        fs::write(&other, b"y").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let watch = FileWatch::new(&link).unwrap();
        assert_eq!(watch.check(), Ok(()));
        fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&other, &link).unwrap();
        assert!(watch.check().unwrap_err().contains("replaced"));
    }

    #[test]
    fn an_open_wal_deleted_under_it_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        fs::write(&path, b"x").unwrap();
        let watch = FileWatch::new(&path).unwrap();
        let wal = dir.path().join("s.db-wal");
        let _open = fs::File::create(&wal).unwrap();
        assert_eq!(watch.check(), Ok(()));
        fs::remove_file(&wal).unwrap();
        assert!(watch.check().unwrap_err().contains("-wal"));
    }

    #[test]
    fn no_file_no_watch() {
        assert!(FileWatch::new(Path::new("file:sqlx-in-memory-1")).is_none());
    }
}
