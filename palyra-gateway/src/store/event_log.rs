//! File-backed event log: segment files of checksummed records, fsync before acknowledging,
//! torn-tail recovery on open, retention bounded by total size. Other threads read it through a
//! [`FileLogReader`], which reads only what the page cache holds and so never waits for the disk.
//!
//! Layout: `DIR/<first_seq as 20 digits>.seg`. Each segment starts with the 8-byte magic
//! `PLYLOG01`, followed by records:
//!
//! ```text
//! body_len: u32 LE | crc32: u32 LE (over seq and body) | seq: u64 LE | body
//! body = to_len: u8 | to (to_len bytes, UTF-8) | event JSON
//! ```

use super::{fsync_dir, EventStore, LogBounds, NewEvent, QuickReader, StoreError, StoredEvent};
use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

const MAGIC: &[u8; 8] = b"PLYLOG01";
const HEADER_BYTES: usize = 16;

/// After a read that went to the disk, the kernel is asked to bring this much of what follows
/// into the page cache, so a reader streaming through old records finds the next ones there.
pub const READ_AHEAD_BYTES: u64 = 4 * 1024 * 1024;

/// Segments holding a read handle at once: the descriptors a log keeps open besides the one
/// it appends to. Older segments are opened again when read.
pub const READ_HANDLES: usize = 8;

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
    /// Byte offset of every record in the file; only durable records are listed.
    offsets: Vec<u64>,
    len: u64,
    /// A read-only handle for positional reads, shared with [`FileLogReader`]s; at most
    /// [`READ_HANDLES`] segments hold one.
    reader: Option<Arc<File>>,
}

impl Segment {
    fn last_seq(&self) -> u64 {
        self.first_seq + self.offsets.len() as u64 - 1
    }
}

/// The segments and their record offsets: changed only by the log's thread, read by
/// [`FileLogReader`]s too.
type Index = Arc<RwLock<VecDeque<Segment>>>;

/// Seq bounds of the records `segments` list.
fn bounds_of(segments: &VecDeque<Segment>) -> LogBounds {
    let last_seq = segments.back().map_or(0, Segment::last_seq);
    let first_seq = segments
        .iter()
        .find(|s| !s.offsets.is_empty())
        .map_or(last_seq + 1, |s| s.first_seq);
    LogBounds {
        first_seq,
        last_seq,
    }
}

/// The bytes of consecutive records of one segment that one read fetches.
struct Stretch {
    /// Position of the segment in the index, and its first seq (its file's name).
    segment: usize,
    segment_seq: u64,
    /// Seq of the first record, and how many records.
    first_seq: u64,
    count: usize,
    /// Byte range in the segment file.
    from: u64,
    to: u64,
    reader: Option<Arc<File>>,
}

/// Where the records from seq `start` lie, at most `max_events` and about `max_bytes` (whole
/// records, at least one): one stretch per segment, in order.
fn plan_read(
    segments: &VecDeque<Segment>,
    start: u64,
    max_events: usize,
    max_bytes: usize,
) -> Vec<Stretch> {
    let mut stretches = Vec::new();
    let (mut next, mut events, mut bytes) = (start, 0usize, 0u64);
    let index = segments
        .partition_point(|s| s.first_seq <= start)
        .saturating_sub(1);
    for (i, segment) in segments.iter().enumerate().skip(index) {
        if events >= max_events || bytes >= max_bytes as u64 {
            break;
        }
        if segment.offsets.is_empty() || next > segment.last_seq() {
            continue;
        }
        let first = (next - segment.first_seq) as usize;
        let Some(&from) = segment.offsets.get(first) else {
            continue;
        };
        let last = first
            .saturating_add(max_events - events)
            .min(segment.offsets.len());
        let budget = (max_bytes as u64).saturating_sub(bytes);
        let last = segment.offsets[first + 1..last]
            .iter()
            .position(|&off| off - from >= budget)
            .map_or(last, |cut| first + 1 + cut);
        let to = segment.offsets.get(last).copied().unwrap_or(segment.len);
        stretches.push(Stretch {
            segment: i,
            segment_seq: segment.first_seq,
            first_seq: next,
            count: last - first,
            from,
            to,
            reader: segment.reader.clone(),
        });
        events += last - first;
        bytes += to - from;
        next = segment.first_seq + last as u64;
    }
    stretches
}

/// Whether a read may wait for the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Yes,
    /// Only what the page cache holds: anything else is an error (`WouldBlock` where the
    /// kernel can tell).
    No,
}

/// Reads `len` bytes at `offset` into a new buffer, filling its spare capacity (zeroing a
/// buffer the read overwrites costs as much as the read).
#[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
fn read_at(file: &File, offset: u64, len: usize, wait: Wait) -> io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let flags = match wait {
        Wait::Yes => 0,
        Wait::No => libc::RWF_NOWAIT,
    };
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let at = libc::off_t::try_from(offset + buf.len() as u64)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let want = len - buf.len();
        let spare = &mut buf.spare_capacity_mut()[..want];
        let iov = libc::iovec {
            iov_base: spare.as_mut_ptr().cast(),
            iov_len: spare.len(),
        };
        // SAFETY: `iov` describes `spare`, memory `buf` owns and nothing else refers to; the
        // kernel writes at most `iov_len` bytes there and returns how many it wrote.
        let read = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, at, flags) };
        match read {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n if n > 0 => {
                // SAFETY: the kernel initialised the first `n <= iov_len` spare bytes.
                unsafe { buf.set_len(buf.len() + n as usize) };
            }
            _ => {
                // With `Wait::No`: EAGAIN where the page cache lacks the data, EOPNOTSUPP
                // from a kernel that cannot promise not to wait.
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
    Ok(buf)
}

/// Reads `len` bytes at `offset` into a new buffer; without a read that can refuse to wait,
/// `Wait::No` always answers `WouldBlock`.
#[cfg(not(all(target_os = "linux", any(target_env = "gnu", target_env = "musl"))))]
fn read_at(file: &File, offset: u64, len: usize, wait: Wait) -> io::Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    if wait == Wait::No {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    let mut buf = Vec::with_capacity(len);
    let mut file = file;
    file.seek(SeekFrom::Start(offset))?;
    if file.take(len as u64).read_to_end(&mut buf)? != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(buf)
}

/// Asks the kernel to read `len` bytes at `offset` into the page cache, without waiting.
fn advise_will_need(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        if let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) {
            // SAFETY: posix_fadvise only reads its integer arguments; a failure is harmless.
            unsafe {
                libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_WILLNEED)
            };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Validates the records read for `stretch` and slices them out of `buf` without copying.
/// `Err((offset, reason))` names the first bad record's file offset.
fn decode_stretch(
    buf: Vec<u8>,
    stretch: &Stretch,
    max_body: usize,
    out: &mut Vec<StoredEvent>,
) -> Result<(), (u64, String)> {
    let buf = Bytes::from(buf);
    let (mut pos, mut seq) = (0usize, stretch.first_seq);
    while pos < buf.len() {
        let at = stretch.from + pos as u64;
        if buf.len() - pos < HEADER_BYTES {
            return Err((at, "record header cut".into()));
        }
        let len = body_len(&buf[pos..pos + HEADER_BYTES], max_body).map_err(|r| (at, r))?;
        let end = pos + HEADER_BYTES + len;
        if end > buf.len() {
            return Err((at, "record body cut".into()));
        }
        out.push(decode_record(buf.slice(pos..end), seq).map_err(|r| (at, r))?);
        seq += 1;
        pos = end;
    }
    Ok(())
}

/// Reads a [`FileEventLog`] from any thread, only where that never waits for the device: what
/// the page cache holds, from segments the log keeps a read handle for. Everything else is
/// left to the log's thread.
pub struct FileLogReader {
    index: Index,
    max_body: usize,
}

impl QuickReader for FileLogReader {
    fn try_read_after(
        &self,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Option<Vec<StoredEvent>> {
        let stretches = {
            let segments = self.index.read().unwrap_or_else(|p| p.into_inner());
            let bounds = bounds_of(&segments);
            let start = after.saturating_add(1).max(bounds.first_seq);
            if start > bounds.last_seq || max_events == 0 {
                return Some(Vec::new());
            }
            plan_read(&segments, start, max_events, max_bytes)
        };
        let mut out = Vec::with_capacity(stretches.iter().map(|s| s.count).sum());
        for stretch in &stretches {
            let read = stretch.reader.as_ref().and_then(|file| {
                let buf = read_at(
                    file,
                    stretch.from,
                    (stretch.to - stretch.from) as usize,
                    Wait::No,
                );
                let buf = buf.ok()?;
                decode_stretch(buf, stretch, self.max_body, &mut out).ok()
            });
            if read.is_none() {
                break;
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

/// The default durable [`EventStore`].
pub struct FileEventLog {
    dir: PathBuf,
    config: FileEventLogConfig,
    index: Index,
    /// First seqs of the segments holding a read handle, oldest opened first.
    handles: VecDeque<u64>,
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
            index: Arc::new(RwLock::new(segments)),
            handles: VecDeque::new(),
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
                    reader: None,
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
            reader: None,
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
            reader: None,
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
        self.segments_mut().push_back(segment);
        Ok(())
    }

    /// Writes `buf` to the active segment and syncs it; on failure the segment is cut back.
    fn write_active(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        let Some((path, before)) = self.segments().back().map(|s| (s.path.clone(), s.len)) else {
            return Err(StoreError::Corrupt("no active segment".into()));
        };
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
        while self.total_bytes > self.config.max_total_bytes && self.segments().len() > 1 {
            let Some(old) = self.segments_mut().pop_front() else {
                break;
            };
            self.handles.retain(|&first| first != old.first_seq);
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

    fn segments(&self) -> RwLockReadGuard<'_, VecDeque<Segment>> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn segments_mut(&self) -> RwLockWriteGuard<'_, VecDeque<Segment>> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The read handle of the `index`th segment, opened if it has none (closing the handle
    /// opened longest ago beyond [`READ_HANDLES`]).
    fn reader(&mut self, index: usize) -> Result<Arc<File>, StoreError> {
        let (first_seq, path) = match self.segments().get(index) {
            Some(Segment {
                reader: Some(file), ..
            }) => return Ok(Arc::clone(file)),
            Some(segment) => (segment.first_seq, segment.path.clone()),
            None => return Err(StoreError::Corrupt("read of a removed segment".into())),
        };
        let file = Arc::new(
            File::open(&path).map_err(StoreError::io(format!("opening {}", path.display())))?,
        );
        let mut segments = self.index.write().unwrap_or_else(|p| p.into_inner());
        if let Some(segment) = segments.get_mut(index) {
            segment.reader = Some(Arc::clone(&file));
        }
        self.handles.push_back(first_seq);
        while self.handles.len() > READ_HANDLES {
            let Some(oldest) = self.handles.pop_front() else {
                break;
            };
            if let Some(segment) = segments.iter_mut().find(|s| s.first_seq == oldest) {
                segment.reader = None;
            }
        }
        Ok(file)
    }

    /// Reads events from the segment files: one read per segment for the whole byte range of the
    /// batch, then records are validated and sliced out of that buffer without copying. The
    /// kernel is asked to bring what follows into the page cache.
    fn read_from_disk(
        &mut self,
        start: u64,
        max_events: usize,
        max_bytes: usize,
        out: &mut Vec<StoredEvent>,
    ) -> Result<(), StoreError> {
        let stretches = plan_read(&self.segments(), start, max_events, max_bytes);
        let max_body = self.config.max_record_bytes + 256;
        for stretch in &stretches {
            let file = match &stretch.reader {
                Some(file) => Arc::clone(file),
                None => self.reader(stretch.segment)?,
            };
            let path = || {
                segment_path(&self.dir, stretch.segment_seq)
                    .display()
                    .to_string()
            };
            let buf = read_at(
                &file,
                stretch.from,
                (stretch.to - stretch.from) as usize,
                Wait::Yes,
            )
            .map_err(|e| StoreError::io(format!("reading {}", path()))(e))?;
            out.reserve(stretch.count);
            decode_stretch(buf, stretch, max_body, out).map_err(|(at, reason)| {
                StoreError::Corrupt(format!("{} at offset {at}: {reason}", path()))
            })?;
            advise_will_need(&file, stretch.to, READ_AHEAD_BYTES);
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
            let (active_len, active_has_records) = {
                let segments = self.segments();
                let active = segments.back();
                (
                    active.map_or(0, |s| s.len) + buf.len() as u64,
                    active.is_some_and(|s| !s.offsets.is_empty()) || !pending.is_empty(),
                )
            };
            if active_has_records && active_len + record_len > self.config.segment_bytes {
                self.commit(&buf, &pending, events, first)?;
                buf.clear();
                pending.clear();
                self.roll()?;
            }
            seq += 1;
            let offset = self.segments().back().map_or(0, |s| s.len) + buf.len() as u64;
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
        bounds_of(&self.segments())
    }

    fn quick_reader(&self) -> Option<Arc<dyn QuickReader>> {
        Some(Arc::new(FileLogReader {
            index: Arc::clone(&self.index),
            max_body: self.config.max_record_bytes + 256,
        }))
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
        if let Some(segment) = self.segments_mut().back_mut() {
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
            id: None,
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
    #[cfg(target_os = "linux")] // reads that refuse to wait for the disk
    fn quick_reads_agree_with_the_log_and_keep_few_handles_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = FileEventLog::open(dir.path(), small()).unwrap();
        let batch: Vec<_> = (0..200).map(event).collect();
        log.append(&batch).unwrap();
        let reader = log.quick_reader().unwrap();
        // No segment has a read handle before the log's thread read it.
        assert!(reader.try_read_after(0, 10, usize::MAX).is_none());
        let all = read_all(&mut log);
        assert_eq!(all.len(), 200);
        let segments = log.segments().len();
        assert!(segments > READ_HANDLES, "{segments} segments");
        let open = log.segments().iter().filter(|s| s.reader.is_some()).count();
        assert_eq!(open, READ_HANDLES, "handles are bounded");
        // Whatever the reader returns is what the log holds, from where it was asked.
        for (after, max_events, max_bytes) in [(185, 7, usize::MAX), (199, 5, 1), (188, 100, 64)] {
            let quick = reader.try_read_after(after, max_events, max_bytes);
            let quick = quick.expect("newest segments have handles and are in the page cache");
            let expected: Vec<_> = all[after as usize..].iter().take(quick.len()).collect();
            assert!(!quick.is_empty() && quick.len() <= max_events);
            assert_eq!(quick.iter().collect::<Vec<_>>(), expected);
        }
        assert_eq!(reader.try_read_after(200, 10, usize::MAX), Some(Vec::new()));
        // Out of the page cache, a quick read refuses rather than waits (where the kernel
        // can say so), and is never wrong.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let file = File::open(entry.unwrap().path()).unwrap();
            #[cfg(target_os = "linux")]
            // SAFETY: posix_fadvise only reads its integer arguments.
            unsafe {
                use std::os::fd::AsRawFd;
                libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            }
        }
        if let Some(quick) = reader.try_read_after(190, 10, usize::MAX) {
            assert_eq!(
                quick.iter().collect::<Vec<_>>(),
                all[190..].iter().take(quick.len()).collect::<Vec<_>>()
            );
        }
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
            id: None,
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
