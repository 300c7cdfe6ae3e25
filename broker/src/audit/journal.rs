//! The audit journal: where records wait, on local disk, while the audit store cannot take them.
//!
//! An audit log that loses records during a database outage is not an audit log. When an append fails,
//! the writer spills the events — not yet chained: their `seq` and `prev_hash` are only decided when they
//! reach the store, so several replicas still build one linear chain — to this append-only file, one JSON
//! line each, `fsync`ed before the writer moves on. While the journal holds entries every new event goes
//! behind them, so a replica's records reach the store in the order they happened. The writer replays the
//! journal from the front once the store answers again, each batch in one transaction that also records
//! how far this journal got (`audit_journal_progress`), so a replay cut short by a crash neither loses nor
//! repeats a record. When everything is stored the file is emptied; the next spill starts a new journal
//! (a new id).
//!
//! The file is bounded ([`JournalConfig::max_bytes`]). When it is full the broker fails closed by default
//! ([`OnFull::Refuse`]: new requests are refused with 503 until the store is back and the journal drained;
//! the few events of requests already in flight wait in memory) or, if so configured, drops and counts
//! ([`OnFull::Drop`], `tollgate_audit_failures`).
//!
//! Format: a header line `{"journal":"<uuid>"}`, then `{"n":<1,2,…>,"event":{…}}` per event, with
//! `"maybe":{"seq":…,"hash":…}` when an append of that event may have been stored (its answer was lost):
//! the replay looks the record up before it appends the event again. A torn last line (the process died
//! mid-write) is cut off when the journal is opened: it was never acknowledged.

use super::AuditEvent;
use std::io::{BufRead, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// What to do when the journal is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFull {
    /// Refuse new requests (503) until the journal drained: nothing is lost. The default.
    Refuse,
    /// Drop the events that do not fit, counting them in `tollgate_audit_failures`.
    Drop,
}

/// `[audit] journal_dir`, `journal_max_bytes`, `on_journal_full`.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    /// Directory of the journal file (created 0700). Default `<state_dir>/audit-journal`.
    pub dir: PathBuf,
    /// Largest journal, bytes. Default 64 MiB (about 100,000 request records).
    pub max_bytes: u64,
    pub on_full: OnFull,
}

/// Default journal bound: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

impl JournalConfig {
    pub fn new(dir: PathBuf) -> Self {
        JournalConfig {
            dir,
            max_bytes: DEFAULT_MAX_BYTES,
            on_full: OnFull::Refuse,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("the audit journal is full ({max_bytes} bytes)")]
    Full { max_bytes: u64 },
    #[error("audit journal {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    journal: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    n: u64,
    event: AuditEvent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    maybe: Option<MaybeStored>,
}

/// The record an event may already be stored as: an append whose outcome is unknown (the connection broke
/// after the commit was sent, so the store may have committed it). All records of one append are stored or
/// none is, and the store is append-only, so the record at `seq` either has this `hash` (the event is
/// stored; appending it again would duplicate it) or it never will.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MaybeStored {
    pub seq: i64,
    pub hash: String,
}

/// One journaled event, with its number and where the next entry starts.
pub struct Pending {
    pub n: u64,
    pub event: AuditEvent,
    /// The event may already be in the store as this record (see [`MaybeStored`]).
    pub maybe: Option<MaybeStored>,
    end: u64,
}

pub struct Journal {
    path: PathBuf,
    file: std::fs::File,
    /// The current journal's id; `None` while the file is empty.
    id: Option<String>,
    /// File length, bytes.
    len: u64,
    /// Number of the next entry written.
    next_n: u64,
    /// Byte offset and number of the first entry not known to be stored.
    cursor: u64,
    cursor_n: u64,
    /// The store's progress for this journal has been read (entries it already holds skipped).
    synced: bool,
    max_bytes: u64,
}

impl Journal {
    /// File name inside the journal directory (slot 0; further slots are `audit-journal.<n>.jsonl`).
    pub const FILE: &'static str = "audit-journal.jsonl";
    /// Processes that can share one journal directory (replicas started from one config on one host).
    pub const SLOTS: usize = 16;

    fn slot_path(dir: &Path, slot: usize) -> PathBuf {
        if slot == 0 {
            dir.join(Self::FILE)
        } else {
            dir.join(format!("audit-journal.{slot}.jsonl"))
        }
    }

    /// Open (or create, 0600 in a 0700 directory) a journal this process holds alone: the first of the
    /// directory's journal files no other process has locked (so replicas sharing a state directory each
    /// have theirs, and a restarted one takes over what its predecessor left). Refused like any ledger file
    /// when others can get at it.
    pub fn open(cfg: &JournalConfig) -> Result<Self, crate::keys::KeyError> {
        use std::os::unix::fs::OpenOptionsExt;
        let what =
            "the audit journal (records not yet in the audit store, replayed into the audit trail)";
        crate::keys::private_dir(&cfg.dir, Some(what))?;
        let mut found = None;
        for slot in 0..Self::SLOTS {
            let path = Self::slot_path(&cfg.dir, slot);
            crate::keys::check_private_file(
                &path,
                what,
                "Whoever can write it can slip records into the audit trail",
            )?;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&path)
                .map_err(|source| crate::keys::KeyError::Io {
                    path: path.clone(),
                    source,
                })?;
            match file.try_lock() {
                Ok(()) => {
                    found = Some((path, file));
                    break;
                }
                Err(std::fs::TryLockError::WouldBlock) => continue,
                Err(std::fs::TryLockError::Error(source)) => {
                    return Err(crate::keys::KeyError::Io { path, source });
                }
            }
        }
        let Some((path, file)) = found else {
            return Err(crate::keys::KeyError::Exposed {
                path: cfg.dir.clone(),
                message: format!(
                    "all {} audit journal files are in use by other processes; give each broker its own [server] state_dir",
                    Self::SLOTS
                ),
            });
        };
        let io = |source| crate::keys::KeyError::Io {
            path: path.clone(),
            source,
        };
        // The directory entry is durable too (a crash right after creation keeps the file).
        if let Ok(d) = std::fs::File::open(&cfg.dir) {
            let _ = d.sync_all();
        }
        let mut j = Journal {
            path: path.clone(),
            file,
            id: None,
            len: 0,
            next_n: 1,
            cursor: 0,
            cursor_n: 1,
            synced: false,
            max_bytes: cfg.max_bytes.max(4096),
        };
        j.scan().map_err(io)?;
        for slot in 0..Self::SLOTS {
            let other = Self::slot_path(&cfg.dir, slot);
            if other != j.path
                && std::fs::metadata(&other).is_ok_and(|m| m.len() > 0)
                && std::fs::File::open(&other).is_ok_and(|f| f.try_lock_shared().is_ok())
            {
                tracing::warn!(
                    path = %other.display(),
                    "another audit journal holds records and no process has it; the next broker started on this state directory replays it"
                );
            }
        }
        Ok(j)
    }

    /// Read what the file holds: header, entry count, and the length of its intact part (a torn last line
    /// is cut off).
    fn scan(&mut self) -> std::io::Result<()> {
        let mut reader = std::io::BufReader::new(std::fs::File::open(&self.path)?);
        let mut line = String::new();
        let mut good = 0u64;
        let mut first = true;
        loop {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            if first {
                match serde_json::from_str::<Header>(&line) {
                    Ok(h) => self.id = Some(h.journal),
                    Err(_) => break,
                }
                first = false;
                good += n as u64;
                self.cursor = good;
                continue;
            }
            match serde_json::from_str::<Entry>(&line) {
                Ok(e) => {
                    if self.cursor_n == 1 && self.next_n == 1 {
                        self.cursor_n = e.n;
                    }
                    self.next_n = e.n + 1;
                }
                Err(_) => break,
            }
            good += n as u64;
        }
        let actual = self.file.metadata()?.len();
        if actual != good {
            tracing::warn!(
                path = %self.path.display(),
                cut = actual - good,
                "audit journal: cut off a torn last line (never acknowledged)"
            );
            self.file.set_len(good)?;
            self.file.sync_all()?;
        }
        if self.id.is_none() {
            self.next_n = 1;
            self.cursor_n = 1;
            self.cursor = 0;
        }
        self.len = good;
        Ok(())
    }

    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// Entries not yet known to be stored (an upper bound until [`Journal::skip_stored`] ran).
    pub fn pending(&self) -> u64 {
        self.next_n - self.cursor_n
    }

    pub fn bytes(&self) -> u64 {
        self.len
    }

    /// Whether the store's progress for this journal was taken into account.
    pub fn synced(&self) -> bool {
        self.synced || self.id.is_none()
    }

    /// A replayed batch may or may not have been stored (the connection broke around its commit): read
    /// the store's progress again before the next replay.
    pub fn unsync(&mut self) {
        self.synced = false;
    }

    /// Append events (in order) and `fsync`: once this returns they survive a crash. `maybe` tags the
    /// first `maybe.len()` events with the record each may already be stored as (an append whose outcome
    /// was lost with the connection); the replay looks them up before it appends them again.
    pub fn append(
        &mut self,
        events: &[AuditEvent],
        maybe: &[MaybeStored],
    ) -> Result<(), JournalError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        let new_id = self
            .id
            .is_none()
            .then(|| uuid::Uuid::now_v7().simple().to_string());
        if let Some(id) = &new_id {
            serde_json::to_writer(
                &mut buf,
                &Header {
                    journal: id.clone(),
                },
            )
            .map_err(|e| self.io(e.into()))?;
            buf.push(b'\n');
        }
        let mut n = self.next_n;
        for (i, ev) in events.iter().enumerate() {
            serde_json::to_writer(
                &mut buf,
                &Entry {
                    n,
                    event: ev.clone(),
                    maybe: maybe.get(i).cloned(),
                },
            )
            .map_err(|e| self.io(e.into()))?;
            buf.push(b'\n');
            n += 1;
        }
        if self.len + buf.len() as u64 > self.max_bytes {
            return Err(JournalError::Full {
                max_bytes: self.max_bytes,
            });
        }
        if let Err(e) = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data())
        {
            // Whatever part reached the file is cut off again: the journal holds whole entries only.
            let _ = self.file.set_len(self.len);
            return Err(self.io(e));
        }
        if let Some(id) = new_id {
            self.id = Some(id);
            self.cursor = (buf.iter().position(|b| *b == b'\n').unwrap_or(0) + 1) as u64;
            self.cursor_n = self.next_n;
            self.synced = true;
        }
        self.len += buf.len() as u64;
        self.next_n = n;
        Ok(())
    }

    fn io(&self, source: std::io::Error) -> JournalError {
        JournalError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Up to `limit` entries from the front, in order.
    pub fn read(&self, limit: usize) -> Result<Vec<Pending>, JournalError> {
        let mut out = Vec::new();
        if self.pending() == 0 {
            return Ok(out);
        }
        let mut f = std::fs::File::open(&self.path).map_err(|e| self.io(e))?;
        f.seek(std::io::SeekFrom::Start(self.cursor))
            .map_err(|e| self.io(e))?;
        let mut reader = std::io::BufReader::new(f).take(self.len.saturating_sub(self.cursor));
        let mut pos = self.cursor;
        let mut line = String::new();
        while out.len() < limit {
            line.clear();
            let n = reader.read_line(&mut line).map_err(|e| self.io(e))?;
            if n == 0 {
                break;
            }
            pos += n as u64;
            let e: Entry = serde_json::from_str(&line).map_err(|e| self.io(e.into()))?;
            out.push(Pending {
                n: e.n,
                event: e.event,
                maybe: e.maybe,
                end: pos,
            });
        }
        Ok(out)
    }

    /// The store holds every entry up to `last`: move past them.
    pub fn advance(&mut self, stored: &[Pending]) {
        if let Some(last) = stored.last() {
            self.cursor = last.end;
            self.cursor_n = last.n + 1;
        }
    }

    /// Skip the entries the store already holds (`progress` = the last entry number it recorded for this
    /// journal): a replay that was cut short after a commit is not repeated.
    pub fn skip_stored(&mut self, progress: Option<u64>) -> Result<(), JournalError> {
        self.synced = true;
        let Some(done) = progress else { return Ok(()) };
        while self.cursor_n <= done && self.pending() > 0 {
            let batch = self.read(256)?;
            let upto: Vec<Pending> = batch.into_iter().take_while(|p| p.n <= done).collect();
            if upto.is_empty() {
                break;
            }
            self.advance(&upto);
        }
        Ok(())
    }

    /// Everything is stored: empty the file (the next spill starts a new journal).
    pub fn reset(&mut self) -> Result<(), JournalError> {
        self.file.set_len(0).map_err(|e| self.io(e))?;
        self.file.sync_all().map_err(|e| self.io(e))?;
        self.id = None;
        self.len = 0;
        self.next_n = 1;
        self.cursor = 0;
        self.cursor_n = 1;
        self.synced = false;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: i64) -> AuditEvent {
        AuditEvent {
            ts: i,
            kind: Some(super::super::EventKind::Request),
            actor: format!("p{i}"),
            detail: serde_json::json!({"i": i}),
            ..Default::default()
        }
    }

    #[test]
    fn append_read_advance_reopen_and_torn_tail() {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = JournalConfig::new(dir.path().join("j"));
        let mut j = Journal::open(&cfg).expect("open");
        assert_eq!(j.pending(), 0);
        j.append(&[ev(1), ev(2), ev(3)], &[]).expect("append");
        let id = j.id().expect("id").to_string();
        assert_eq!(j.pending(), 3);
        let first = j.read(2).expect("read");
        assert_eq!(first.iter().map(|p| p.n).collect::<Vec<_>>(), vec![1, 2]);
        j.advance(&first);
        assert_eq!(j.pending(), 1);
        {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(j.path())
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(m & 0o777, 0o600);
            let d = std::fs::metadata(&cfg.dir)
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(d & 0o777, 0o700);
        }
        // A torn line at the end (the process died mid-write) is cut off on open.
        let path = j.path().to_path_buf();
        drop(j);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"{\"n\":4,\"ev"))
            .expect("tear");
        let mut j = Journal::open(&cfg).expect("reopen");
        assert_eq!(j.id(), Some(id.as_str()));
        assert_eq!(j.pending(), 3, "unknown until the store's progress is read");
        j.skip_stored(Some(2)).expect("skip");
        let rest = j.read(10).expect("read");
        assert_eq!(rest.iter().map(|p| p.n).collect::<Vec<_>>(), vec![3]);
        assert_eq!(rest[0].event, ev(3));
        j.append(&[ev(4)], &[]).expect("append after reopen");
        assert_eq!(
            j.read(10)
                .expect("read")
                .iter()
                .map(|p| p.n)
                .collect::<Vec<_>>(),
            vec![3, 4]
        );
        let all = j.read(10).expect("read");
        j.advance(&all);
        assert_eq!(j.pending(), 0);
        j.reset().expect("reset");
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 0);
        j.append(&[ev(5)], &[]).expect("append");
        assert_ne!(j.id(), Some(id.as_str()), "a new journal");
    }

    #[test]
    fn what_an_entry_may_be_stored_as_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = JournalConfig::new(dir.path().join("j"));
        let mut j = Journal::open(&cfg).expect("open");
        let maybe = [
            MaybeStored {
                seq: 7,
                hash: "a".repeat(64),
            },
            MaybeStored {
                seq: 8,
                hash: "b".repeat(64),
            },
        ];
        j.append(&[ev(1), ev(2), ev(3)], &maybe).expect("append");
        drop(j);
        let mut j = Journal::open(&cfg).expect("reopen");
        j.skip_stored(None).expect("sync");
        let read = j.read(10).expect("read");
        assert_eq!(
            read.iter().map(|p| p.maybe.clone()).collect::<Vec<_>>(),
            vec![Some(maybe[0].clone()), Some(maybe[1].clone()), None]
        );
        assert_eq!(read[2].event, ev(3));
    }

    #[test]
    fn bounded_in_bytes() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut cfg = JournalConfig::new(dir.path().join("j"));
        cfg.max_bytes = 4096;
        let mut j = Journal::open(&cfg).expect("open");
        let mut n = 0;
        loop {
            match j.append(&[ev(n)], &[]) {
                Ok(()) => n += 1,
                Err(JournalError::Full { max_bytes }) => {
                    assert_eq!(max_bytes, 4096);
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            n > 10 && j.bytes() <= 4096,
            "{n} entries, {} bytes",
            j.bytes()
        );
        assert_eq!(j.pending(), n as u64);
    }
}
