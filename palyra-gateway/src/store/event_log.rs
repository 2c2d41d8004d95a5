//! File-backed event log: segment files of checksummed records, fsync before acknowledging,
//! torn-tail recovery on open, retention bounded by total size.
//!
//! Layout: `DIR/<first_seq as 20 digits>.seg`. Each segment starts with the 8-byte magic
//! `PLYLOG01`, followed by records:
//!
//! ```text
//! body_len: u32 LE | crc32: u32 LE (over seq and body) | seq: u64 LE | body
//! body = to_len: u8 | to (to_len bytes, UTF-8) | event JSON
//! ```

use super::{fsync_dir, EventStore, LogBounds, NewEvent, StoreError, StoredEvent};
use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"PLYLOG01";
const HEADER_BYTES: usize = 16;

/// Sizes and limits of a [`FileEventLog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileEventLogConfig {
    /// A segment is closed and a new one started once it would grow past this size.
    pub segment_bytes: u64,
    /// Oldest segments are deleted while the log is larger than this (the active segment stays).
    pub max_total_bytes: u64,
    /// Largest record body accepted.
    pub max_record_bytes: usize,
    /// Recent events kept in memory to serve readers without touching the disk.
    pub cache_bytes: usize,
}

impl Default for FileEventLogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 16 * 1024 * 1024,
            max_total_bytes: 256 * 1024 * 1024,
            max_record_bytes: 1024 * 1024,
            cache_bytes: 16 * 1024 * 1024,
        }
    }
}

/// What opening the log had to repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recovery {
    /// Bytes cut from the end of the newest segment because the last record was incomplete or bad.
    pub torn_bytes: u64,
}

struct Segment {
    first_seq: u64,
    path: PathBuf,
    /// Byte offset of every record in the file.
    offsets: Vec<u64>,
    len: u64,
}

impl Segment {
    fn last_seq(&self) -> u64 {
        self.first_seq + self.offsets.len() as u64 - 1
    }
}

/// The default durable [`EventStore`].
pub struct FileEventLog {
    dir: PathBuf,
    config: FileEventLogConfig,
    segments: VecDeque<Segment>,
    active: File,
    last_seq: u64,
    total_bytes: u64,
    cache: VecDeque<StoredEvent>,
    cache_bytes: usize,
    recovery: Recovery,
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

fn encode_record(seq: u64, event: &NewEvent, out: &mut Vec<u8>) {
    let to = event.to.as_deref().unwrap_or("");
    let body_len = 1 + to.len() + event.body.len();
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(to.len() as u8);
    out.extend_from_slice(to.as_bytes());
    out.extend_from_slice(&event.body);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Validates one whole record (header and body) and returns the event, sharing `record`'s bytes.
fn decode_record(record: Bytes, expect_seq: u64) -> Result<StoredEvent, String> {
    let crc = u32::from_le_bytes(record[4..8].try_into().unwrap_or_default());
    let seq = u64::from_le_bytes(record[8..16].try_into().unwrap_or_default());
    if crc32fast::hash(&record[8..]) != crc {
        return Err(format!("checksum mismatch in record seq {seq}"));
    }
    if seq != expect_seq {
        return Err(format!("expected seq {expect_seq}, found {seq}"));
    }
    let to_len = record[HEADER_BYTES] as usize;
    let body_start = HEADER_BYTES + 1 + to_len;
    if body_start > record.len() {
        return Err(format!("record seq {seq} has a bad address length"));
    }
    let to = if to_len == 0 {
        None
    } else {
        let to = std::str::from_utf8(&record[HEADER_BYTES + 1..body_start])
            .map_err(|_| format!("record seq {seq} has a non-UTF-8 address"))?;
        Some(Arc::<str>::from(to))
    };
    Ok(StoredEvent {
        seq,
        to,
        body: record.slice(body_start..),
    })
}

/// Body length announced by a record header, checked against the limit.
fn body_len(header: &[u8], max_body: usize) -> Result<usize, String> {
    let len = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default()) as usize;
    if len == 0 || len > max_body {
        return Err(format!("record length {len} is out of range"));
    }
    Ok(len)
}

/// Reads one record at the reader's position. `Ok(None)` means a clean end of file;
/// `Err(reason)` means the bytes there are not a valid record.
fn read_record(
    reader: &mut impl Read,
    max_body: usize,
    expect_seq: u64,
) -> Result<Option<(StoredEvent, u64)>, String> {
    let mut header = [0u8; HEADER_BYTES];
    let mut have = 0;
    while have < HEADER_BYTES {
        match reader.read(&mut header[have..]) {
            Ok(0) if have == 0 => return Ok(None),
            Ok(0) => return Err(format!("record header cut after {have} bytes")),
            Ok(n) => have += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
    let len = body_len(&header, max_body)?;
    let mut record = vec![0u8; HEADER_BYTES + len];
    record[..HEADER_BYTES].copy_from_slice(&header);
    reader
        .read_exact(&mut record[HEADER_BYTES..])
        .map_err(|e| format!("record body cut: {e}"))?;
    let event = decode_record(Bytes::from(record), expect_seq)?;
    Ok(Some((event, (HEADER_BYTES + len) as u64)))
}

impl FileEventLog {
    /// Opens (or creates) the log in `dir`, cutting a torn tail left by a crash.
    pub fn open(dir: impl Into<PathBuf>, config: FileEventLogConfig) -> Result<Self, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(StoreError::io(format!("creating {}", dir.display())))?;
        let mut firsts = Vec::new();
        for entry in
            fs::read_dir(&dir).map_err(StoreError::io(format!("listing {}", dir.display())))?
        {
            let entry = entry.map_err(StoreError::io(format!("listing {}", dir.display())))?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
                continue;
            };
            match stem.parse::<u64>() {
                Ok(first) if first > 0 && stem.len() == 20 => firsts.push(first),
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "unexpected segment file name {:?}",
                        name
                    )))
                }
            }
        }
        firsts.sort_unstable();
        let max_body = config.max_record_bytes + 256;
        let mut segments = VecDeque::new();
        let mut recovery = Recovery::default();
        let count = firsts.len();
        for (index, first_seq) in firsts.into_iter().enumerate() {
            let is_last = index + 1 == count;
            if let Some(prev) = segments.back() {
                let prev: &Segment = prev;
                let expected = prev.first_seq + prev.offsets.len() as u64;
                if first_seq != expected {
                    return Err(StoreError::Corrupt(format!(
                        "segment starting at seq {first_seq} follows one ending at seq {}",
                        expected - 1
                    )));
                }
            }
            let path = segment_path(&dir, first_seq);
            let (segment, torn) = Self::scan_segment(&path, first_seq, max_body, is_last)?;
            recovery.torn_bytes += torn;
            segments.push_back(segment);
        }
        if segments.is_empty() {
            segments.push_back(Self::create_segment(&dir, 1)?);
        }
        let last = segments
            .back()
            .ok_or_else(|| StoreError::Corrupt("no segment".into()))?;
        let last_seq = last.first_seq + last.offsets.len() as u64 - 1;
        let active = OpenOptions::new()
            .append(true)
            .open(&last.path)
            .map_err(StoreError::io(format!("opening {}", last.path.display())))?;
        let total_bytes = segments.iter().map(|s| s.len).sum();
        let mut log = Self {
            dir,
            config,
            segments,
            active,
            last_seq,
            total_bytes,
            cache: VecDeque::new(),
            cache_bytes: 0,
            recovery,
        };
        log.enforce_retention()?;
        Ok(log)
    }

    /// What opening the log repaired.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// Bytes the log's segment files take.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    fn scan_segment(
        path: &Path,
        first_seq: u64,
        max_body: usize,
        is_last: bool,
    ) -> Result<(Segment, u64), StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(is_last)
            .open(path)
            .map_err(StoreError::io(format!("opening {}", path.display())))?;
        let file_len = file
            .metadata()
            .map_err(StoreError::io(format!("inspecting {}", path.display())))?
            .len();
        let mut reader = BufReader::with_capacity(256 * 1024, &file);
        let mut magic = [0u8; 8];
        let magic_ok = reader.read_exact(&mut magic).is_ok() && &magic == MAGIC;
        if !magic_ok {
            if is_last && file_len < MAGIC.len() as u64 {
                // Crash while the segment was being created: start it again.
                drop(reader);
                file.set_len(0)
                    .and_then(|()| (&file).write_all(MAGIC))
                    .and_then(|()| file.sync_all())
                    .map_err(StoreError::io(format!("repairing {}", path.display())))?;
                let segment = Segment {
                    first_seq,
                    path: path.to_owned(),
                    offsets: Vec::new(),
                    len: MAGIC.len() as u64,
                };
                return Ok((segment, file_len));
            }
            return Err(StoreError::Corrupt(format!(
                "{} does not start with the segment magic",
                path.display()
            )));
        }
        let mut offsets = Vec::new();
        let mut pos = MAGIC.len() as u64;
        loop {
            match read_record(&mut reader, max_body, first_seq + offsets.len() as u64) {
                Ok(None) => break,
                Ok(Some((_, len))) => {
                    offsets.push(pos);
                    pos += len;
                }
                Err(reason) if is_last => {
                    tracing::warn!(
                        segment = %path.display(),
                        offset = pos,
                        cut_bytes = file_len - pos,
                        %reason,
                        "cutting torn tail of the event log"
                    );
                    drop(reader);
                    file.set_len(pos)
                        .and_then(|()| file.sync_all())
                        .map_err(StoreError::io(format!("truncating {}", path.display())))?;
                    break;
                }
                Err(reason) => {
                    return Err(StoreError::Corrupt(format!(
                        "{} at offset {pos}: {reason}",
                        path.display()
                    )))
                }
            }
        }
        let torn = file_len - pos;
        let segment = Segment {
            first_seq,
            path: path.to_owned(),
            offsets,
            len: pos,
        };
        Ok((segment, torn))
    }

    fn create_segment(dir: &Path, first_seq: u64) -> Result<Segment, StoreError> {
        let path = segment_path(dir, first_seq);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(StoreError::io(format!("creating {}", path.display())))?;
        file.write_all(MAGIC)
            .and_then(|()| file.sync_all())
            .map_err(StoreError::io(format!("writing {}", path.display())))?;
        fsync_dir(dir)?;
        Ok(Segment {
            first_seq,
            path,
            offsets: Vec::new(),
            len: MAGIC.len() as u64,
        })
    }

    fn roll(&mut self) -> Result<(), StoreError> {
        let segment = Self::create_segment(&self.dir, self.last_seq + 1)?;
        self.active = OpenOptions::new()
            .append(true)
            .open(&segment.path)
            .map_err(StoreError::io(format!(
                "opening {}",
                segment.path.display()
            )))?;
        self.total_bytes += segment.len;
        self.segments.push_back(segment);
        Ok(())
    }

    /// Writes `buf` to the active segment and syncs it; on failure the segment is cut back.
    fn write_active(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        let Some(segment) = self.segments.back() else {
            return Err(StoreError::Corrupt("no active segment".into()));
        };
        let path = segment.path.clone();
        let before = segment.len;
        if let Err(source) = self
            .active
            .write_all(buf)
            .and_then(|()| self.active.sync_data())
        {
            // Leave no half-written record behind; a failure here is caught on the next open.
            let _ = self.active.set_len(before);
            return Err(StoreError::Io {
                context: format!("appending to {}", path.display()),
                cause: Arc::new(source),
            });
        }
        Ok(())
    }

    fn enforce_retention(&mut self) -> Result<(), StoreError> {
        let mut removed = false;
        while self.total_bytes > self.config.max_total_bytes && self.segments.len() > 1 {
            let Some(old) = self.segments.pop_front() else {
                break;
            };
            fs::remove_file(&old.path)
                .map_err(StoreError::io(format!("removing {}", old.path.display())))?;
            self.total_bytes -= old.len;
            removed = true;
        }
        if removed {
            fsync_dir(&self.dir)?;
            let first = self.bounds().first_seq;
            while self.cache.front().is_some_and(|e| e.seq < first) {
                if let Some(e) = self.cache.pop_front() {
                    self.cache_bytes -= e.size();
                }
            }
        }
        Ok(())
    }

    fn push_cache(&mut self, event: StoredEvent) {
        self.cache_bytes += event.size();
        self.cache.push_back(event);
        while self.cache_bytes > self.config.cache_bytes && self.cache.len() > 1 {
            if let Some(e) = self.cache.pop_front() {
                self.cache_bytes -= e.size();
            }
        }
    }

    /// Reads events from the segment files: one read per segment for the whole byte range of the
    /// batch, then records are validated and sliced out of that buffer without copying.
    fn read_from_disk(
        &self,
        start: u64,
        max_events: usize,
        max_bytes: usize,
        out: &mut Vec<StoredEvent>,
    ) -> Result<(), StoreError> {
        let index = self
            .segments
            .partition_point(|s| s.first_seq <= start)
            .saturating_sub(1);
        let max_body = self.config.max_record_bytes + 256;
        let mut bytes = 0usize;
        let mut next = start;
        for segment in self.segments.iter().skip(index) {
            if segment.offsets.is_empty() || next > segment.last_seq() {
                continue;
            }
            let first = (next - segment.first_seq) as usize;
            let Some(&from) = segment.offsets.get(first) else {
                continue;
            };
            // Records [first, last) fit the event budget; the byte budget is checked below.
            let last = first
                .saturating_add(max_events.saturating_sub(out.len()))
                .min(segment.offsets.len());
            let mut to = segment.offsets.get(last).copied().unwrap_or(segment.len);
            // Keep the read near the byte budget (whole records only, at least one).
            if let Some(cut) = segment.offsets[first + 1..last]
                .iter()
                .position(|&off| off - from >= (max_bytes.saturating_sub(bytes)) as u64)
            {
                to = segment.offsets[first + 1 + cut];
            }
            // Read into spare capacity: zeroing a buffer the read overwrites costs as much as
            // the read.
            let want = (to - from) as usize;
            let mut buf = Vec::with_capacity(want);
            let mut file = File::open(&segment.path).map_err(StoreError::io(format!(
                "opening {}",
                segment.path.display()
            )))?;
            file.seek(SeekFrom::Start(from))
                .and_then(|_| (&mut file).take(want as u64).read_to_end(&mut buf))
                .and_then(|read| match read == want {
                    true => Ok(()),
                    false => Err(std::io::ErrorKind::UnexpectedEof.into()),
                })
                .map_err(StoreError::io(format!(
                    "reading {}",
                    segment.path.display()
                )))?;
            let buf = Bytes::from(buf);
            let mut pos = 0usize;
            while pos < buf.len() {
                let corrupt = |reason: String| {
                    StoreError::Corrupt(format!(
                        "{} at offset {}: {reason}",
                        segment.path.display(),
                        from + pos as u64
                    ))
                };
                if buf.len() - pos < HEADER_BYTES {
                    return Err(corrupt("record header cut".into()));
                }
                let len = body_len(&buf[pos..pos + HEADER_BYTES], max_body).map_err(corrupt)?;
                let end = pos + HEADER_BYTES + len;
                if end > buf.len() {
                    return Err(corrupt("record body cut".into()));
                }
                let event = decode_record(buf.slice(pos..end), next).map_err(corrupt)?;
                bytes += event.size();
                out.push(event);
                next += 1;
                pos = end;
            }
            if out.len() >= max_events || bytes >= max_bytes {
                return Ok(());
            }
        }
        Ok(())
    }
}

impl EventStore for FileEventLog {
    fn check(&self, event: &NewEvent) -> Result<(), StoreError> {
        let to = event.to.as_deref().map_or(0, str::len);
        let len = 1 + to + event.body.len();
        if len > self.config.max_record_bytes || to > 255 {
            return Err(StoreError::RecordTooLarge {
                len,
                max: self.config.max_record_bytes,
            });
        }
        Ok(())
    }

    fn append(&mut self, events: &[NewEvent]) -> Result<u64, StoreError> {
        let first = self.last_seq + 1;
        if events.is_empty() {
            return Ok(first);
        }
        for event in events {
            self.check(event)?;
        }
        let mut buf = Vec::new();
        let mut pending: Vec<(u64, u64)> = Vec::new(); // (seq, offset)
        let mut seq = self.last_seq;
        for event in events {
            let record_len = (HEADER_BYTES + 1) as u64
                + event.to.as_deref().map_or(0, str::len) as u64
                + event.body.len() as u64;
            let active_len = self.segments.back().map_or(0, |s| s.len) + buf.len() as u64;
            let active_has_records =
                self.segments.back().is_some_and(|s| !s.offsets.is_empty()) || !pending.is_empty();
            if active_has_records && active_len + record_len > self.config.segment_bytes {
                self.commit(&buf, &pending, events, first)?;
                buf.clear();
                pending.clear();
                self.roll()?;
            }
            seq += 1;
            let offset = self.segments.back().map_or(0, |s| s.len) + buf.len() as u64;
            pending.push((seq, offset));
            encode_record(seq, event, &mut buf);
        }
        self.commit(&buf, &pending, events, first)?;
        self.enforce_retention()?;
        Ok(first)
    }

    fn read_after(
        &mut self,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let bounds = self.bounds();
        let start = after.saturating_add(1).max(bounds.first_seq);
        let mut out = Vec::new();
        if start > bounds.last_seq || max_events == 0 {
            return Ok(out);
        }
        match self.cache.front() {
            Some(front) if front.seq <= start => {
                let skip = (start - front.seq) as usize;
                let mut bytes = 0;
                for event in self.cache.iter().skip(skip) {
                    if out.len() >= max_events || (bytes >= max_bytes && !out.is_empty()) {
                        break;
                    }
                    bytes += event.size();
                    out.push(event.clone());
                }
            }
            _ => self.read_from_disk(start, max_events, max_bytes, &mut out)?,
        }
        Ok(out)
    }

    fn bounds(&self) -> LogBounds {
        let first_seq = self
            .segments
            .iter()
            .find(|s| !s.offsets.is_empty())
            .map_or(self.last_seq + 1, |s| s.first_seq);
        LogBounds {
            first_seq,
            last_seq: self.last_seq,
        }
    }
}

impl FileEventLog {
    /// Writes and syncs the records in `buf`, then publishes them to the index and the cache.
    /// `first` is the seq of `events[0]`; `pending` lists (seq, offset) of the records in `buf`.
    fn commit(
        &mut self,
        buf: &[u8],
        pending: &[(u64, u64)],
        events: &[NewEvent],
        first: u64,
    ) -> Result<(), StoreError> {
        let Some(&(last, _)) = pending.last() else {
            return Ok(());
        };
        self.write_active(buf)?;
        if let Some(segment) = self.segments.back_mut() {
            segment
                .offsets
                .extend(pending.iter().map(|(_, offset)| *offset));
            segment.len += buf.len() as u64;
        }
        self.total_bytes += buf.len() as u64;
        for (seq, _) in pending {
            let event = &events[(seq - first) as usize];
            self.push_cache(StoredEvent {
                seq: *seq,
                to: event.to.as_deref().map(Into::into),
                body: event.body.clone(),
            });
        }
        self.last_seq = last;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(n: usize) -> NewEvent {
        NewEvent {
            to: n
                .is_multiple_of(3)
                .then(|| "01ARZ3NDEKTSV4RRFFQ69G5FAV".to_owned()),
            body: Bytes::from(format!("{{\"n\":{n}}}")),
        }
    }

    fn small() -> FileEventLogConfig {
        FileEventLogConfig {
            segment_bytes: 256,
            max_total_bytes: 1 << 30,
            max_record_bytes: 1024,
            cache_bytes: 0,
        }
    }

    fn read_all(log: &mut FileEventLog) -> Vec<StoredEvent> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let batch = log.read_after(after, 7, usize::MAX).unwrap();
            let Some(last) = batch.last() else { break };
            after = last.seq;
            out.extend(batch);
        }
        out
    }

    #[test]
    fn unbounded_counts_read_from_disk_without_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = FileEventLog::open(dir.path(), small()).unwrap();
        let events: Vec<NewEvent> = (1..=40).map(event).collect();
        log.append(&events).unwrap();
        for (max_events, max_bytes) in [(usize::MAX, usize::MAX), (usize::MAX, 64), (1, usize::MAX)]
        {
            let batch = log.read_after(3, max_events, max_bytes).unwrap();
            assert_eq!(
                batch.first().map(|e| e.seq),
                Some(4),
                "{max_events} {max_bytes}"
            );
        }
    }

    #[test]
    fn sequence_continues_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = FileEventLog::open(dir.path(), small()).unwrap();
        assert_eq!(log.append(&[event(1), event(2)]).unwrap(), 1);
        assert_eq!(log.append(&[event(3)]).unwrap(), 3);
        drop(log);
        let mut log = FileEventLog::open(dir.path(), small()).unwrap();
        assert_eq!(
            log.bounds(),
            LogBounds {
                first_seq: 1,
                last_seq: 3
            }
        );
        assert_eq!(log.append(&[event(4)]).unwrap(), 4);
        let all = read_all(&mut log);
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(&*all[2].body, b"{\"n\":3}");
        assert_eq!(all[2].to.as_deref(), Some("01ARZ3NDEKTSV4RRFFQ69G5FAV"));
        assert_eq!(all[0].to, None);
    }

    #[test]
    fn torn_tail_is_cut_and_sequence_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = FileEventLog::open(dir.path(), FileEventLogConfig::default()).unwrap();
        log.append(&[event(1), event(2), event(3)]).unwrap();
        drop(log);
        let seg = segment_path(dir.path(), 1);
        let full = fs::read(&seg).unwrap();
        // Simulate a crash in the middle of writing a fourth record.
        let mut partial = Vec::new();
        encode_record(4, &event(4), &mut partial);
        let mut torn = full.clone();
        torn.extend_from_slice(&partial[..partial.len() - 3]);
        fs::write(&seg, &torn).unwrap();
        let mut log = FileEventLog::open(dir.path(), FileEventLogConfig::default()).unwrap();
        assert_eq!(log.recovery().torn_bytes, (partial.len() - 3) as u64);
        assert_eq!(fs::read(&seg).unwrap(), full);
        assert_eq!(log.append(&[event(9)]).unwrap(), 4);
        assert_eq!(read_all(&mut log).len(), 4);
    }

    #[test]
    fn flipped_bit_in_last_record_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = FileEventLog::open(dir.path(), FileEventLogConfig::default()).unwrap();
        log.append(&[event(1), event(2)]).unwrap();
        drop(log);
        let seg = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&seg).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        fs::write(&seg, &bytes).unwrap();
        let mut log = FileEventLog::open(dir.path(), FileEventLogConfig::default()).unwrap();
        assert_eq!(log.bounds().last_seq, 1);
        assert_eq!(read_all(&mut log).len(), 1);
    }

    #[test]
    fn corruption_before_the_tail_is_an_error_not_silent_loss() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = FileEventLog::open(dir.path(), small()).unwrap();
        for n in 0..40 {
            log.append(&[event(n)]).unwrap();
        }
        drop(log);
        let seg = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&seg).unwrap();
        bytes[20] ^= 1;
        fs::write(&seg, &bytes).unwrap();
        let err = FileEventLog::open(dir.path(), small()).err().unwrap();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    }

    #[test]
    fn retention_drops_oldest_segments_and_reports_first_seq() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileEventLogConfig {
            max_total_bytes: 1024,
            ..small()
        };
        let mut log = FileEventLog::open(dir.path(), config).unwrap();
        for n in 0..200 {
            log.append(&[event(n)]).unwrap();
        }
        let bounds = log.bounds();
        assert_eq!(bounds.last_seq, 200);
        assert!(bounds.first_seq > 1, "{bounds:?}");
        assert!(log.total_bytes() <= 1024 + 256);
        let all = read_all(&mut log);
        assert_eq!(all.first().unwrap().seq, bounds.first_seq);
        assert_eq!(all.last().unwrap().seq, 200);
        drop(log);
        let log = FileEventLog::open(dir.path(), config).unwrap();
        assert_eq!(log.bounds(), bounds);
    }

    #[test]
    fn cache_and_disk_reads_agree() {
        let dir = tempfile::tempdir().unwrap();
        let cached = FileEventLogConfig {
            cache_bytes: 1 << 20,
            ..small()
        };
        let mut log = FileEventLog::open(dir.path(), cached).unwrap();
        let batch: Vec<_> = (0..50).map(event).collect();
        log.append(&batch).unwrap();
        let from_cache = read_all(&mut log);
        drop(log);
        let mut log = FileEventLog::open(dir.path(), small()).unwrap();
        assert_eq!(read_all(&mut log), from_cache);
        assert_eq!(from_cache.len(), 50);
    }

    #[test]
    fn oversized_records_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = FileEventLog::open(dir.path(), small()).unwrap();
        let big = NewEvent {
            to: None,
            body: Bytes::from(vec![b'x'; 2000]),
        };
        assert!(matches!(
            log.append(&[big]),
            Err(StoreError::RecordTooLarge { .. })
        ));
        assert_eq!(log.bounds().last_seq, 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Whatever prefix of the newest segment survives a crash, reopening keeps every complete
        /// record before the cut and nothing after it, and appends continue gap-free.
        #[test]
        fn any_crash_point_keeps_a_gap_free_prefix(count in 1usize..30, cut in any::<prop::sample::Index>()) {
            let dir = tempfile::tempdir().unwrap();
            let mut log = FileEventLog::open(dir.path(), FileEventLogConfig::default()).unwrap();
            let batch: Vec<_> = (0..count).map(event).collect();
            log.append(&batch).unwrap();
            drop(log);
            let seg = segment_path(dir.path(), 1);
            let bytes = fs::read(&seg).unwrap();
            let cut_at = MAGIC.len() + cut.index(bytes.len() - MAGIC.len() + 1);
            fs::write(&seg, &bytes[..cut_at]).unwrap();
            let mut log = FileEventLog::open(dir.path(), FileEventLogConfig::default()).unwrap();
            let survivors = read_all(&mut log);
            for (i, e) in survivors.iter().enumerate() {
                prop_assert_eq!(e.seq, i as u64 + 1);
                prop_assert_eq!(&*e.body, &batch[i].body[..]);
            }
            let next = log.append(&[event(99)]).unwrap();
            prop_assert_eq!(next, survivors.len() as u64 + 1);
        }
    }
}
