//! DESIGN.md's table of cache-line write-backs and fences per operation is measured here on the
//! real code: a change that adds a flush or a fence to a hot path fails this test until the
//! table (and the reasoning next to it) is updated.

use udax::{Counters, Creds, Device, FallocMode, Fs, MkfsOptions, OpenOptions, Prot, SetAttr, Share};

/// Parses the rows `| op | flushed lines | nt-stored lines | fences | cached lines |` of
/// DESIGN.md's table.
fn design_table() -> Vec<(String, Counters)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/DESIGN.md")).unwrap();
    let start = text.find("<!-- persist-table -->").expect("DESIGN.md has the persist table marker");
    text[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let n = |i: usize| cells[i].parse::<u64>().unwrap_or_else(|_| panic!("bad cell in row {l}"));
            (
                cells[0].trim_matches('`').to_string(),
                Counters { flush_lines: n(1), nt_bytes: n(2) * 64, fences: n(3), cached_lines: n(4) },
            )
        })
        .collect()
}

/// Runs `op` and returns the persistence work it issued.
fn measure(fs: &Fs, op: impl FnOnce()) -> Counters {
    let before = fs.device().counters();
    op();
    let mut c = fs.device().counters() - before;
    // Count non-temporal stores in whole cache lines, as the table does.
    c.nt_bytes = c.nt_bytes.div_ceil(64) * 64;
    c
}

fn measured() -> Vec<(String, Counters)> {
    let fs = Fs::mkfs(Device::anonymous(64 << 20).unwrap(), &MkfsOptions::default()).unwrap();
    let who = Creds::ROOT;
    // Warm state: the root directory has a block, the files exist, the checkpoint is current.
    for i in 0..4 {
        fs.create(1, format!("warm-{i}").as_bytes(), 0o644, who).unwrap();
    }
    let file = fs.create(1, b"data", 0o644, who).unwrap().ino;
    fs.write(file, &[1; 8192], 0).unwrap();
    fs.write(file, &[2; 4096], 0).unwrap();
    let block = [3u8; 4096];
    let mut rows = vec![];
    rows.push((
        "create".into(),
        measure(&fs, || {
            fs.create(1, b"file-0001", 0o644, who).unwrap();
        }),
    ));
    rows.push(("4k-append".into(), measure(&fs, || assert_eq!(fs.write(file, &block, 8192).unwrap(), 4096))));
    rows.push(("100b-append".into(), measure(&fs, || assert_eq!(fs.write(file, &block[..100], 12288).unwrap(), 100))));
    rows.push((
        "100b-append-in-block".into(),
        measure(&fs, || assert_eq!(fs.write(file, &block[..100], 12388).unwrap(), 100)),
    ));
    // An overwrite once the clock has ticked past the file's times logs them; the next ones,
    // within the tick, store data only (the least of three, in case one straddles a tick).
    let past = udax::SetTime::At(udax::Timespec { sec: 1_000_000_000, nsec: 0 });
    fs.setattr(file, &udax::SetAttr { mtime: Some(past), ..Default::default() }).unwrap();
    rows.push(("4k-overwrite-new-tick".into(), measure(&fs, || assert_eq!(fs.write(file, &block, 0).unwrap(), 4096))));
    let steady = (0..3).map(|_| measure(&fs, || assert_eq!(fs.write(file, &block, 4096).unwrap(), 4096)));
    rows.push(("4k-overwrite".into(), steady.min_by_key(|c| (c.fences, c.flush_lines, c.nt_bytes)).unwrap()));
    rows.push((
        "rename".into(),
        measure(&fs, || fs.rename(1, b"file-0001", 1, b"file-0002", Default::default()).unwrap()),
    ));
    rows.push(("unlink".into(), measure(&fs, || fs.unlink(1, b"file-0002").unwrap())));
    rows.push((
        "mkdir".into(),
        measure(&fs, || {
            fs.mkdir(1, b"dir-0001", 0o755, who).unwrap();
        }),
    ));
    let set = |name: &[u8], len| fs.setxattr(file, name, &vec![7; len], Default::default()).unwrap();
    rows.push(("setxattr-first".into(), measure(&fs, || set(b"user.a", 64))));
    rows.push(("setxattr-100b".into(), measure(&fs, || set(b"user.b", 100))));
    rows.extend(multi_fence_rows(&fs, file));
    rows
}

/// The paths that take more than one fence: a symlink (its target is content), a create that
/// grows its directory by a block, punch and zero range with written edges, growth from inside a
/// written EOF block, a first store through a mapping, and a commit that moves the checkpoint.
fn multi_fence_rows(fs: &Fs, file: u64) -> Vec<(String, Counters)> {
    let who = Creds::ROOT;
    let mut rows = vec![];
    let target = [b'x'; 100];
    rows.push(("symlink".into(), measure(fs, || assert!(fs.symlink(1, b"link-0001", &target, who).is_ok()))));
    let dir = fs.mkdir(1, b"full", 0o755, who).unwrap().ino;
    let mut i = 0;
    let grown = loop {
        let size = fs.getattr(dir).unwrap().size;
        let c = measure(fs, || assert!(fs.create(dir, format!("entry-{i:04}").as_bytes(), 0o644, who).is_ok()));
        i += 1;
        if size > 0 && fs.getattr(dir).unwrap().size > size {
            break c;
        }
    };
    rows.push(("create-growing-its-directory".into(), grown));
    let punch = FallocMode::PunchHole;
    rows.push(("punch-written-edges".into(), measure(fs, || fs.fallocate(file, 100, 8000, punch).unwrap())));
    fs.write(file, &[4; 12288], 0).unwrap();
    let zero = FallocMode::ZeroRange { keep_size: true };
    rows.push(("zero-range-written-edges".into(), measure(fs, || fs.fallocate(file, 100, 8000, zero).unwrap())));
    let size = fs.getattr(file).unwrap().size;
    assert!(size % 4096 != 0, "the EOF block is partly written");
    rows.push(("truncate-up-in-eof-block".into(), measure(fs, || fs.truncate(file, size + 5000).unwrap())));
    let f = fs.open("/sparse", OpenOptions::create()).unwrap();
    f.set_len(1 << 20).unwrap();
    let m = f.mmap(0, 1 << 20, Prot::ReadWrite, Share::Shared).unwrap();
    rows.push(("mmap-first-store".into(), measure(fs, || m.write_at(&[5], 8192).unwrap())));
    drop(m);
    // Fill the ring until a small record no longer fits: that commit checkpoints first. A lap of
    // the ring before, so that the entries it writes back are those of the chmods alone.
    let mode = |m: u32| assert!(fs.setattr(file, &SetAttr { mode: Some(m), ..Default::default() }).is_ok());
    let mut room = fs.journal_room();
    while fs.journal_room() <= room {
        room = fs.journal_room();
        mode(0o644);
    }
    let checkpointing = loop {
        let room = fs.journal_room();
        let c = measure(fs, || mode(0o640));
        if fs.journal_room() > room {
            break c;
        }
    };
    rows.push(("checkpointing-commit".into(), checkpointing));
    rows
}

#[test]
fn design_table_matches_the_code() {
    let want = design_table();
    let got = measured();
    let show = |rows: &[(String, Counters)]| {
        rows.iter()
            .map(|(op, c)| {
                format!("| `{op}` | {} | {} | {} | {} |", c.flush_lines, c.nt_bytes / 64, c.fences, c.cached_lines)
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        want.iter().map(|(o, _)| o.as_str()).collect::<Vec<_>>(),
        got.iter().map(|(o, _)| o.as_str()).collect::<Vec<_>>(),
        "the table's operations"
    );
    assert!(want == got, "DESIGN.md says\n{}\nthe code does\n{}", show(&want), show(&got));
}
