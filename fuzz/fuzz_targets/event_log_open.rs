//! Opening an event log whose newest segment holds arbitrary bytes never panics: it either cuts a
//! torn tail and keeps a gap-free prefix, or reports corruption. A quick read (other threads'
//! path) returns nothing or what the log holds. Appends then continue.
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_gateway::store::{EventStore, FileEventLog, FileEventLogConfig, NewEvent};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut contents = b"PLYLOG01".to_vec();
    contents.extend_from_slice(data);
    std::fs::write(dir.path().join("00000000000000000001.seg"), &contents).expect("write");
    let config = FileEventLogConfig {
        max_record_bytes: 4096,
        ..FileEventLogConfig::default()
    };
    let Ok(mut log) = FileEventLog::open(dir.path(), config) else {
        return;
    };
    let bounds = log.bounds();
    let events = log
        .read_after(0, usize::MAX, usize::MAX)
        .expect("read back");
    assert_eq!(events.len() as u64, bounds.last_seq);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1);
    }
    let reader = log.quick_reader().expect("the file log has a quick reader");
    if let Some(quick) = reader.try_read_after(0, usize::MAX, usize::MAX) {
        assert_eq!(quick, events[..quick.len()]);
    }
    let next = log
        .append(&[NewEvent {
            to: None,
            body: b"{}".to_vec().into(),
         id: None, }])
        .expect("append");
    assert_eq!(next, bounds.last_seq + 1);
});
