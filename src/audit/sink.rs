//! Where audit lines go: standard output, or a file with size-based rotation. Each sink keeps its
//! own chain, and with checkpoints its own line count; a file sink continues the chain (and
//! count) of the files it appends to, across restarts and rotations.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::IntCounter;

use super::chain::{line_hash, push_chained_line, set_line_hash, GENESIS};
use super::checkpoint::{self, Checkpointer};

/// One destination of audit lines, with its own chain.
pub struct Sink {
    head: ChainHead,
    checkpoints: Option<Arc<Checkpointer>>,
    target: Target,
}

enum Target {
    Stdout,
    File(FileTarget),
}

/// A file rotated by size.
struct FileTarget {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: Option<File>,
    size: u64,
    /// When the configured path was last compared with the open file.
    path_checked: Instant,
    /// `audit_files_dropped_total`: rotated files deleted to stay within `keep`.
    files_dropped: IntCounter,
}

/// Where a sink's chain stands: the hash of its last line, how many lines the chain has, and
/// how many of them came after its last checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChainHead {
    prev: String,
    lines: u64,
    unanchored: u64,
}

/// How often a file sink checks that its path still names the open file. A deleted file is
/// noticed at once (lines written into it would be lost); a renamed one, whose lines are kept
/// and still chained, within this interval. Two `stat` calls per write were 3 % of the gate's
/// time under load.
const PATH_CHECK_INTERVAL: Duration = Duration::from_secs(1);

impl Sink {
    pub fn stdout(checkpoints: Option<Arc<Checkpointer>>) -> Self {
        Sink {
            head: ChainHead::new(),
            checkpoints,
            target: Target::Stdout,
        }
    }

    /// A file sink continuing the chain of the files at `path` (with checkpoints, its line
    /// count too); the file is opened on first write.
    pub fn file(
        path: PathBuf,
        max_bytes: u64,
        keep: usize,
        checkpoints: Option<Arc<Checkpointer>>,
        files_dropped: IntCounter,
    ) -> Self {
        let mut target = FileTarget {
            path,
            max_bytes,
            keep,
            file: None,
            size: 0,
            path_checked: Instant::now(),
            files_dropped,
        };
        let head = if checkpoints.is_some() {
            ChainHead::recover(&target.path, keep).unwrap_or_else(|| {
                // Checkpoints added to a log whose start and checkpoints are gone: its line
                // count is unknown, so a new chain begins, in a file of its own.
                tracing::warn!(
                    file = %target.path.display(),
                    "the audit chain's line count cannot be recovered (no checkpoint, and its first line is gone); a new chain starts in a new file"
                );
                if let Err(error) = target.rotate() {
                    tracing::error!(file = %target.path.display(), %error, "cannot rotate the audit file");
                }
                ChainHead::new()
            })
        } else {
            ChainHead {
                prev: last_line_hash(&target.path).unwrap_or_else(|| GENESIS.to_owned()),
                ..ChainHead::new()
            }
        };
        Sink {
            head,
            checkpoints,
            target: Target::File(target),
        }
    }

    /// The label of `audit_events_total{sink}`.
    pub fn label(&self) -> &'static str {
        match self.target {
            Target::Stdout => "stdout",
            Target::File(_) => "file",
        }
    }

    /// Writes events (their JSON without `v` and `prev`) as the next chained lines, in one
    /// write: under load the writer commits a whole batch with a single system call. With
    /// checkpoints, one follows every `every` lines, and with `anchor` one ends the batch if
    /// any line is not yet followed by one. It blocks (a full pipe, a hung file system), so
    /// the writer runs it off the request runtime.
    pub fn write_batch(&mut self, events: &[String], anchor: bool) -> std::io::Result<()> {
        let checkpoints = self.checkpoints.as_deref();
        let mut head = self.head.clone();
        let mut buffer = head.append(events, checkpoints, anchor);
        match &mut self.target {
            Target::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&buffer)?;
                out.flush()?;
            }
            Target::File(target) => {
                target.reopen_if_moved();
                target.open()?;
                if target.is_full(buffer.len()) {
                    // A rotated file ends with a checkpoint, so each file is anchored alone.
                    if let Some(checkpoints) = checkpoints.filter(|_| self.head.unanchored > 0) {
                        let mut closed = self.head.clone();
                        let closing = closed.append(&[], Some(checkpoints), true);
                        target.write(&closing)?;
                        self.head = closed;
                        head = self.head.clone();
                        buffer = head.append(events, Some(checkpoints), anchor);
                    }
                    target.rotate()?;
                }
                target.write(&buffer)?;
            }
        }
        // The chain moves on only once its lines are written.
        self.head = head;
        Ok(())
    }
}

impl ChainHead {
    fn new() -> Self {
        ChainHead {
            prev: GENESIS.to_owned(),
            lines: 0,
            unanchored: 0,
        }
    }

    /// `events` as the next lines of the chain, with the checkpoints due among and after them.
    fn append(
        &mut self,
        events: &[String],
        checkpoints: Option<&Checkpointer>,
        anchor: bool,
    ) -> Vec<u8> {
        let mut buffer = Vec::with_capacity(events.iter().map(|e| e.len() + 100).sum());
        for event in events {
            self.push(&mut buffer, event);
            if let Some(checkpoints) = checkpoints.filter(|c| self.unanchored >= c.every) {
                self.push_checkpoint(&mut buffer, checkpoints);
            }
        }
        if let Some(checkpoints) = checkpoints.filter(|_| anchor && self.unanchored > 0) {
            self.push_checkpoint(&mut buffer, checkpoints);
        }
        buffer
    }

    fn push(&mut self, buffer: &mut Vec<u8>, event: &str) {
        let start = buffer.len();
        push_chained_line(buffer, &self.prev, event);
        set_line_hash(&mut self.prev, &buffer[start..]);
        buffer.push(b'\n');
        self.lines += 1;
        self.unanchored += 1;
    }

    fn push_checkpoint(&mut self, buffer: &mut Vec<u8>, checkpoints: &Checkpointer) {
        let record = checkpoints.record(self.lines, &self.prev);
        self.push(buffer, &record);
        self.unanchored = 0;
    }

    /// The head of the chain in `path` and its rotated files (newest first), counted back to a
    /// checkpoint or to the chain's first line. `None` when lines exist but neither is found.
    fn recover(path: &Path, keep: usize) -> Option<Self> {
        let mut prev = None;
        let mut later_lines = 0;
        for n in 0..=keep {
            let file = if n == 0 {
                path.to_owned()
            } else {
                numbered(path, n)
            };
            let Some(summary) = FileSummary::read(&file) else {
                continue;
            };
            if prev.is_none() {
                prev = summary.last_hash;
            }
            let counted = match summary.last_checkpoint {
                Some((index, seq)) => {
                    Some((seq + summary.lines - index, summary.lines - index - 1))
                }
                None if summary.first_prev.as_deref() == Some(GENESIS) => {
                    Some((summary.lines, summary.lines))
                }
                None => None,
            };
            if let Some((lines, unanchored)) = counted {
                return Some(ChainHead {
                    prev: prev.unwrap_or_else(|| GENESIS.to_owned()),
                    lines: lines + later_lines,
                    unanchored: unanchored + later_lines,
                });
            }
            later_lines += summary.lines;
        }
        // No lines at all: a chain begins.
        prev.is_none().then(ChainHead::new)
    }
}

/// What the chain head needs to know of one audit file, read once at start-up.
struct FileSummary {
    lines: u64,
    first_prev: Option<String>,
    last_hash: Option<String>,
    /// The last checkpoint: its 0-based line index and `seq`.
    last_checkpoint: Option<(u64, u64)>,
}

impl FileSummary {
    /// `None` when the file cannot be read (it does not exist).
    fn read(path: &Path) -> Option<Self> {
        let file = File::open(path).ok()?;
        let marker = format!("\"event\":\"{}\"", checkpoint::EVENT);
        let mut summary = FileSummary {
            lines: 0,
            first_prev: None,
            last_hash: None,
            last_checkpoint: None,
        };
        let mut last = Vec::new();
        for line in BufReader::new(file).split(b'\n') {
            let Ok(line) = line else { break };
            let parse = || serde_json::from_slice::<serde_json::Value>(&line).ok();
            if summary.lines == 0 {
                summary.first_prev =
                    parse().and_then(|v| v.get("prev").and_then(|p| p.as_str()).map(str::to_owned));
            }
            if memchr::memmem::find(&line, marker.as_bytes()).is_some() {
                let seq = parse().and_then(|v| v.get("checkpoint")?.get("seq")?.as_u64());
                if let Some(seq) = seq {
                    summary.last_checkpoint = Some((summary.lines, seq));
                }
            }
            summary.lines += 1;
            last = line;
        }
        if summary.lines > 0 {
            summary.last_hash = Some(line_hash(&last));
        }
        Some(summary)
    }
}

impl FileTarget {
    /// Removed or replaced under the gate (a deleted directory, an operator's `mv`): lines
    /// written to a deleted file would be lost, and a renamed one is no longer the configured
    /// log, so the configured path is opened again.
    fn reopen_if_moved(&mut self) {
        if let Some(open) = self.file.as_ref() {
            let gone = if self.path_checked.elapsed() >= PATH_CHECK_INTERVAL {
                self.path_checked = Instant::now();
                !still_at(open, &self.path)
            } else {
                is_deleted(open)
            };
            if gone {
                self.file = None;
            }
        }
    }

    fn open(&mut self) -> std::io::Result<()> {
        if self.file.is_none() {
            let opened = open_append(&self.path)?;
            self.size = opened.metadata().map(|m| m.len()).unwrap_or(0);
            self.file = Some(opened);
        }
        Ok(())
    }

    /// Whether `adding` bytes would grow the file past `max_bytes` (a file is never empty
    /// after a rotation, however large one batch is).
    fn is_full(&self, adding: usize) -> bool {
        self.size > 0 && self.size + adding as u64 > self.max_bytes
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.open()?;
        let Some(file) = self.file.as_mut() else {
            return Err(std::io::Error::other("audit file not open"));
        };
        if let Err(error) = file.write_all(bytes) {
            // Reopen next time; the chain stays at the last line known written.
            self.file = None;
            return Err(error);
        }
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Rotates; deleting the oldest file to stay within `keep` is logged and counted, since
    /// its lines are then gone from this host.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let dropped = rotate(&self.path, self.keep)?;
        if let Some(dropped) = dropped {
            self.files_dropped.inc();
            tracing::warn!(
                file = %dropped.display(),
                keep = self.keep,
                "audit rotation deleted the oldest audit file to keep at most `keep` rotated files; archive rotated files elsewhere to keep their history"
            );
        }
        Ok(())
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
    use crate::audit::chain;
    use crate::audit::checkpoint::VerifyingKey;
    use crate::config::{CheckpointKey, SecretRef};

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn checkpointer(dir: &Path, every: u64) -> Arc<Checkpointer> {
        let key = dir.join("key");
        std::fs::write(&key, KEY).unwrap();
        let key = CheckpointKey::Hmac(SecretRef::File(key));
        Arc::new(Checkpointer::new(&key, every, Path::to_path_buf).unwrap())
    }

    fn events(count: usize) -> Vec<String> {
        (0..count)
            .map(|i| format!("{{\"id\":\"{i}\",\"pad\":\"{}\"}}", "x".repeat(100)))
            .collect()
    }

    fn read_lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn checkpoints_come_every_n_lines_end_rotated_files_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let checkpoints = checkpointer(dir.path(), 3);
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let open = || {
            Sink::file(
                path.clone(),
                1_000,
                100,
                Some(checkpoints.clone()),
                dropped.clone(),
            )
        };
        let mut sink = open();
        for batch in [4, 1, 2] {
            sink.write_batch(&events(batch), false).unwrap();
        }
        // Restarted: the chain and its count continue where they were.
        let before = sink.head.clone();
        let mut sink = open();
        assert_eq!(sink.head, before);
        sink.write_batch(&events(5), false).unwrap();
        sink.write_batch(&[], true).unwrap();

        let mut files: Vec<PathBuf> = (1..100)
            .map(|n| numbered(&path, n))
            .filter(|p| p.exists())
            .rev()
            .collect();
        assert!(files.len() >= 2, "rotated: {files:?}");
        for file in &files {
            let last = read_lines(file).pop().unwrap();
            assert_eq!(last["event"], checkpoint::EVENT, "{}", file.display());
        }
        files.push(path.clone());
        let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        let verified = chain::verify(&paths).unwrap();
        assert_eq!(sink.head.lines, verified.lines as u64);
        assert!(before.lines > 9 && before.lines < sink.head.lines);
        let key = VerifyingKey::parse(KEY.as_bytes()).unwrap();
        let first = paths[0].display().to_string();
        let anchored = checkpoint::check(&verified, &[key], 1, &first).unwrap();
        assert_eq!(anchored.last_seq + 1, verified.lines as u64);
        assert_eq!(dropped.get(), 0);
    }

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
        let mut sink = Sink::file(path, 10, 1, None, dropped.clone());
        for _ in 0..4 {
            sink.write_batch(&events(1), false).unwrap();
        }
        // Four lines, one per file: the second rotation onwards deletes `.1`.
        assert_eq!(dropped.get(), 2);
    }

    #[test]
    fn a_log_whose_count_is_lost_starts_a_new_chain_in_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let orphan = chain::chained_line(&"ab".repeat(32), "{\"id\":\"1\"}");
        std::fs::write(&path, format!("{orphan}\n")).unwrap();
        let checkpoints = checkpointer(dir.path(), 3);
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let mut sink = Sink::file(path.clone(), 1_000_000, 5, Some(checkpoints), dropped);
        assert_eq!(sink.head, ChainHead::new());
        assert_eq!(
            std::fs::read_to_string(numbered(&path, 1)).unwrap(),
            format!("{orphan}\n")
        );
        sink.write_batch(&events(1), true).unwrap();
        let written = read_lines(&path);
        assert_eq!(written[0]["prev"], GENESIS);
        assert_eq!(written[1]["checkpoint"]["seq"], 1);
    }
}
