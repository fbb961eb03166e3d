//! Where audit lines go: standard output, or a file with size-based rotation. Each sink keeps its
//! own chain; a file sink continues the chain of the file it appends to, across restarts and
//! rotations.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prometheus::IntCounter;

use super::chain::{line_hash, push_chained_line, set_line_hash, GENESIS};

/// One destination of audit lines.
pub enum Sink {
    Stdout {
        prev: String,
    },
    File {
        path: PathBuf,
        max_bytes: u64,
        keep: usize,
        file: Option<File>,
        size: u64,
        prev: String,
        /// When the configured path was last compared with the open file.
        path_checked: Instant,
        /// `audit_files_dropped_total`: rotated files deleted to stay within `keep`.
        files_dropped: IntCounter,
    },
}

/// How often a file sink checks that its path still names the open file. A deleted file is
/// noticed at once (lines written into it would be lost); a renamed one, whose lines are kept
/// and still chained, within this interval. Two `stat` calls per write were 3 % of the gate's
/// time under load.
const PATH_CHECK_INTERVAL: Duration = Duration::from_secs(1);

impl Sink {
    pub fn stdout() -> Self {
        Sink::Stdout {
            prev: GENESIS.to_owned(),
        }
    }

    /// A file sink; the file is opened (and its chain recovered) on first write.
    pub fn file(path: PathBuf, max_bytes: u64, keep: usize, files_dropped: IntCounter) -> Self {
        let prev = last_line_hash(&path).unwrap_or_else(|| GENESIS.to_owned());
        Sink::File {
            path,
            max_bytes,
            keep,
            file: None,
            size: 0,
            prev,
            path_checked: Instant::now(),
            files_dropped,
        }
    }

    /// The label of `audit_events_total{sink}`.
    pub fn label(&self) -> &'static str {
        match self {
            Sink::Stdout { .. } => "stdout",
            Sink::File { .. } => "file",
        }
    }

    /// Writes events (their JSON without `v` and `prev`) as the next chained lines, in one
    /// write: under load the writer commits a whole batch with a single system call. It blocks
    /// (a full pipe, a hung file system), so the writer runs it off the request runtime.
    pub fn write_batch(&mut self, events: &[String]) -> std::io::Result<()> {
        let prev = match self {
            Sink::Stdout { prev } | Sink::File { prev, .. } => prev,
        };
        let mut buffer = Vec::with_capacity(events.iter().map(|e| e.len() + 100).sum());
        let mut chain = prev.clone();
        for event in events {
            let start = buffer.len();
            push_chained_line(&mut buffer, &chain, event);
            set_line_hash(&mut chain, &buffer[start..]);
            buffer.push(b'\n');
        }
        match self {
            Sink::Stdout { prev } => {
                let mut out = std::io::stdout().lock();
                out.write_all(&buffer)?;
                out.flush()?;
                *prev = chain;
                Ok(())
            }
            Sink::File {
                path,
                max_bytes,
                keep,
                file,
                size,
                prev,
                path_checked,
                files_dropped,
            } => {
                let needed = buffer.len() as u64;
                // Removed or replaced under the gate (a deleted directory, an operator's `mv`):
                // lines written to a deleted file would be lost, and a renamed one is no longer
                // the configured log, so reopen the configured path.
                if let Some(open) = file.as_ref() {
                    let gone = if path_checked.elapsed() >= PATH_CHECK_INTERVAL {
                        *path_checked = Instant::now();
                        !still_at(open, path)
                    } else {
                        is_deleted(open)
                    };
                    if gone {
                        *file = None;
                    }
                }
                if file.is_some() && *size > 0 && *size + needed > *max_bytes {
                    *file = None;
                    // Deleting the oldest file loses its lines from this host: say so.
                    if let Some(dropped) = rotate(path, *keep)? {
                        files_dropped.inc();
                        tracing::warn!(
                            file = %dropped.display(),
                            keep = *keep,
                            "audit rotation deleted the oldest audit file to keep at most `keep` rotated files; archive rotated files elsewhere to keep their history"
                        );
                    }
                }
                if file.is_none() {
                    let opened = open_append(path)?;
                    *size = opened.metadata().map(|m| m.len()).unwrap_or(0);
                    *file = Some(opened);
                }
                let Some(handle) = file.as_mut() else {
                    return Err(std::io::Error::other("audit file not open"));
                };
                if let Err(error) = handle.write_all(&buffer) {
                    // Reopen next time; the chain stays at the last line known written.
                    *file = None;
                    return Err(error);
                }
                *size += needed;
                *prev = chain;
                Ok(())
            }
        }
    }
}

/// Whether `path` still names the open `file` (same device and inode).
#[cfg(unix)]
fn still_at(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn still_at(_file: &File, path: &Path) -> bool {
    path.exists()
}

/// Whether the open `file` has no name left (one `fstat`).
#[cfg(unix)]
fn is_deleted(file: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    file.metadata().map_or(true, |open| open.nlink() == 0)
}

#[cfg(not(unix))]
fn is_deleted(_file: &File) -> bool {
    false
}

fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// `audit.jsonl.<n>`.
fn numbered(path: &Path, n: usize) -> PathBuf {
    PathBuf::from(format!("{}.{n}", path.display()))
}

/// `audit.jsonl` → `audit.jsonl.1` → … → `audit.jsonl.<keep>`; says which file was deleted
/// to make room (`audit.jsonl.<keep>`, or with `keep: 0` the file itself).
fn rotate(path: &Path, keep: usize) -> std::io::Result<Option<PathBuf>> {
    if keep == 0 {
        std::fs::remove_file(path)?;
        return Ok(Some(path.to_owned()));
    }
    let oldest = numbered(path, keep);
    let dropped = match std::fs::remove_file(&oldest) {
        Ok(()) => Some(oldest),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(error),
    };
    for n in (1..keep).rev() {
        let from = numbered(path, n);
        if from.exists() {
            std::fs::rename(&from, numbered(path, n + 1))?;
        }
    }
    std::fs::rename(path, numbered(path, 1))?;
    Ok(dropped)
}

/// The hash of the last complete line of `path`, to continue its chain.
fn last_line_hash(path: &Path) -> Option<String> {
    let mut file = File::open(path).ok()?;
    let length = file.metadata().ok()?.len();
    if length == 0 {
        return None;
    }
    let window = length.min(1024 * 1024);
    file.seek(SeekFrom::Start(length - window)).ok()?;
    let mut tail = Vec::with_capacity(window as usize);
    file.read_to_end(&mut tail).ok()?;
    let tail = tail.strip_suffix(b"\n").unwrap_or(&tail);
    let start = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    Some(line_hash(&tail[start..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_names_the_file_it_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let rotate_once = |keep| {
            std::fs::write(&path, "x\n").unwrap();
            rotate(&path, keep).unwrap()
        };
        assert_eq!(rotate_once(2), None);
        assert_eq!(rotate_once(2), None);
        assert_eq!(rotate_once(2), Some(numbered(&path, 2)));
        assert_eq!(rotate_once(0), Some(path.clone()));
        assert!(!path.exists());

        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let path = dir.path().join("b.jsonl");
        let mut sink = Sink::file(path, 10, 1, dropped.clone());
        for i in 0..4 {
            sink.write_batch(&[format!("{{\"id\":\"{i}\"}}")]).unwrap();
        }
        // Four lines, one per file: the second rotation onwards deletes `.1`.
        assert_eq!(dropped.get(), 2);
    }
}
