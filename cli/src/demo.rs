//! `udax demo`: a guided tour on a scratch image.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use udax::ROOT_INO;
use udax::{Counters, Creds, Device, Error, Fs, MkfsOptions, MmapStats, OpenOptions, Prot, RenameMode, Share};

use crate::common::{describe, describe_open, CliResult, Failure, OutResult};
use crate::size::human;
use crate::DemoArgs;

const SIZE: u64 = 64 << 20;

/// Picks a directory for the scratch image: --dir, else /dev/shm when writable, else the
/// temp directory.
fn scratch_dir(a: &DemoArgs) -> PathBuf {
    if let Some(d) = &a.dir {
        return d.clone();
    }
    let shm = Path::new("/dev/shm");
    let probe = shm.join(format!(".udax-demo-probe-{}", std::process::id()));
    if std::fs::write(&probe, b"").is_ok() {
        let _ = std::fs::remove_file(&probe);
        return shm.to_path_buf();
    }
    std::env::temp_dir()
}

/// Prints a demo line (stdout may be closed: then the demo ends quietly).
macro_rules! say {
    ($($t:tt)*) => { writeln!(std::io::stdout(), $($t)*).out()? };
}

fn step(n: u32, title: &str) -> CliResult {
    say!("\n== {n}. {title}");
    Ok(())
}

fn counters_line(d: Counters) -> String {
    format!("{} cache line(s) written back, {} fence(s), {} non-temporal byte(s)", d.flush_lines, d.fences, d.nt_bytes)
}

/// Every fault the mmap fault service has taken (all kinds).
fn faults(s: MmapStats) -> u64 {
    s.faults_zero_page
        + s.faults_first_store
        + s.faults_huge
        + s.faults_clustered
        + s.faults_sigbus
        + s.faults_mapped
        + s.faults_copied
}

pub fn run(a: &DemoArgs) -> CliResult {
    let dir = scratch_dir(a);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let img = dir.join(format!("udax-demo-{}-{nanos:08x}.img", std::process::id()));
    let r = tour(&img);
    if a.keep {
        if img.exists() {
            let _ = writeln!(std::io::stdout(), "\nKept the image: {}", img.display());
        }
    } else {
        let _ = std::fs::remove_file(&img);
        if r.is_ok() {
            say!("\nRemoved the scratch image (run with --keep to look at it with udax ls/info/fsck).");
        }
    }
    r
}

fn tour(img: &Path) -> CliResult {
    let fs = made(img)?;
    tree(&fs)?;
    let data = written(&fs)?;
    let block = costs(&fs)?;
    sparse(&fs, &block)?;
    let (at, stored) = mapped_hole(&fs)?;
    mapped_file(&fs, &data)?;
    renamed(&fs)?;
    remounted(fs, img, &Expected { data, block, at, stored: stored.to_vec() })
}

fn fail(what: &str, e: Error) -> Failure {
    Failure::new("demo", what, describe(&e))
}

/// What step 9 expects to find after the remount.
struct Expected {
    data: Vec<u8>,
    block: Vec<u8>,
    at: u64,
    stored: Vec<u8>,
}

fn made(img: &Path) -> Result<Fs, Failure> {
    step(1, "mkfs")?;
    let dev = Device::create(img, SIZE).map_err(|e| Failure::new("demo", img.display(), describe_open(&e)))?;
    let fs = Fs::mkfs(dev, &MkfsOptions::default()).map_err(|e| fail("mkfs", e))?;
    let info = fs.info();
    let g = info.geometry;
    say!("Made a {} image at {}.", human(SIZE), img.display());
    say!(
        "Block size {}, {} inodes, a {} journal, {} data blocks ({}).",
        g.block_size,
        g.inode_count,
        human(g.journal_len),
        g.data_blocks,
        human(g.data_blocks * g.block_size)
    );
    say!(
        "The whole image is mapped into this process (backend: {}); MAP_SYNC {}.",
        info.device.backend,
        if info.device.map_sync { "held" } else { "did not hold (this is not a DAX medium)" }
    );
    say!("Durability here: {}.", info.durability);
    say!("Cache lines are written back with {}; long copies use {}.", info.device.flush, info.device.nt_copy);
    Ok(fs)
}

fn tree(fs: &Fs) -> CliResult {
    step(2, "a directory tree")?;
    fs.mkdir_all("/docs/notes", 0o755).map_err(|e| fail("/docs/notes", e))?;
    fs.write_file("/docs/hello.txt", b"hello, persistent memory\n").map_err(|e| fail("/docs/hello.txt", e))?;
    fs.write_file("/docs/notes/todo.txt", b"1. try udax\n").map_err(|e| fail("/docs/notes/todo.txt", e))?;
    fs.symlink_path("docs/hello.txt", "/hello").map_err(|e| fail("/hello", e))?;
    say!("Created /docs/notes, /docs/hello.txt, /docs/notes/todo.txt and a symlink /hello -> docs/hello.txt.");
    say!("Each create is one journal transaction: atomic, and durable when the call returns.");
    let via_link = fs.read_file("/hello").map_err(|e| fail("/hello", e))?;
    say!("Reading through the symlink gives: {:?}", String::from_utf8_lossy(&via_link));
    Ok(())
}

fn written(fs: &Fs) -> Result<Vec<u8>, Failure> {
    step(3, "writing and reading back")?;
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let f = fs.open("/data.bin", OpenOptions::create()).map_err(|e| fail("/data.bin", e))?;
    let n = f.write_at(&data, 0).map_err(|e| fail("/data.bin", e))?;
    let mut back = vec![0u8; data.len()];
    let m = f.read_at(&mut back, 0).map_err(|e| fail("/data.bin", e))?;
    say!("Wrote {n} bytes to /data.bin and read {m} back: {}.", if back == data { "identical" } else { "DIFFERENT" });
    say!("Both calls copy straight between this buffer and the mapped device: no page cache,");
    say!("no bounce buffer, no system call.");
    Ok(data)
}

fn costs(fs: &Fs) -> Result<Vec<u8>, Failure> {
    step(4, "what persistence costs")?;
    let dev = fs.device();
    let ino = fs.stat("/data.bin").map_err(|e| fail("/data.bin", e))?.ino;
    let block = vec![0x5au8; 4096];
    let c0 = dev.counters();
    fs.write(ino, &block, 0).map_err(|e| fail("/data.bin", e))?;
    let c1 = dev.counters();
    fs.write(ino, &block, 4096).map_err(|e| fail("/data.bin", e))?;
    let c2 = dev.counters();
    fs.append(ino, &block).map_err(|e| fail("/data.bin", e))?;
    let c3 = dev.counters();
    fs.create(ROOT_INO, b"new.txt", 0o644, Creds::current()).map_err(|e| fail("/new.txt", e))?;
    let c4 = dev.counters();
    say!("udax counts the write-backs and fences it issues. For each operation below:");
    say!("4 KiB overwrite inside the file: {}", counters_line(c1 - c0));
    say!("  The data goes in place with non-temporal stores, then one fence.");
    if (c1 - c0).flush_lines > 0 {
        say!("  The coarse clock had ticked past the file's times, so they change too, through a");
        say!("  small record written back under that same fence (never stored in place: a time");
        say!("  is 12 bytes, and the medium only promises 8 at a time).");
    } else {
        say!("  The file's times were set within this tick of the coarse clock: no journal record.");
    }
    say!("the same again:                  {}", counters_line(c2 - c1));
    say!("  Within the same tick: data and one fence, and the data is durable.");
    say!("4 KiB append:                    {}", counters_line(c3 - c2));
    say!("  The new block is filled and fenced, then one commit links it and sets the size.");
    say!("create /new.txt:                 {}", counters_line(c4 - c3));
    say!("  One commit: the inode, the directory entry and the parent's times in one record.");
    say!("A commit is one fence: its record is written back and fenced once, and that fence is");
    say!("the moment the operation becomes durable. Content it links (a new block's data and");
    say!("zeros) is fenced before it, so an append takes two; a commit that must first move the");
    say!("journal's checkpoint takes one more (DESIGN.md lists every path).");
    Ok(block)
}

fn sparse(fs: &Fs, block: &[u8]) -> CliResult {
    step(5, "a sparse file")?;
    let free0 = fs.statfs().blocks_free;
    let sf = fs.open("/sparse", OpenOptions::create()).map_err(|e| fail("/sparse", e))?;
    sf.write_at(block, 40 << 20).map_err(|e| fail("/sparse", e))?;
    let st = sf.metadata().map_err(|e| fail("/sparse", e))?;
    let free1 = fs.statfs().blocks_free;
    say!("Wrote 4 KiB at offset 40 MiB of /sparse on this {} image.", human(SIZE));
    say!(
        "Size {} ({}), but only {} bytes allocated ({} 512-byte blocks).",
        st.size,
        human(st.size),
        st.blocks * 512,
        st.blocks
    );
    say!("Free blocks went from {free0} to {free1}: holes cost nothing and read back as zeros.");
    drop(sf);
    Ok(())
}

fn mapped_hole(fs: &Fs) -> Result<(u64, &'static [u8]), Failure> {
    let (g, dev) = (fs.geometry(), fs.device());
    step(6, "mmap: a hole, then a first store")?;
    let map_len: u64 = 16 << 20;
    let at: u64 = 4 << 20;
    let stored = b"stored through the mapping";
    let mf = fs.open("/mapped", OpenOptions::create()).map_err(|e| fail("/mapped", e))?;
    mf.set_len(map_len).map_err(|e| fail("/mapped", e))?;
    let map = mf.mmap(0, map_len, Prot::ReadWrite, Share::Shared).map_err(|e| fail("/mapped", e))?;
    say!("Made /mapped a {} hole (set_len) and mapped all of it shared and read-write.", human(map_len));
    let (s0, free0) = (fs.mmap_stats(), fs.statfs().blocks_free);
    let mut page = vec![0xffu8; 4096];
    map.read_at(&mut page, at).map_err(|e| fail("/mapped", e))?;
    let (s1, free1) = (fs.mmap_stats(), fs.statfs().blocks_free);
    say!(
        "Loaded the 4 KiB page at {} through the mapping: {}.",
        human(at),
        if page.iter().all(|&b| b == 0) { "all zeros" } else { "NOT zeros" }
    );
    say!(
        "  Zero-page faults {} -> {}, free blocks {free0} -> {free1}: the load got the shared",
        s0.faults_zero_page,
        s1.faults_zero_page
    );
    say!("  zero page, read-only, and nothing was allocated.");
    map.write_at(stored, at + 100).map_err(|e| fail("/mapped", e))?;
    let (s2, free2) = (fs.mmap_stats(), fs.statfs().blocks_free);
    let used = free1.saturating_sub(free2);
    say!("Stored {} bytes at {} + 100 through the mapping.", stored.len(), human(at));
    say!(
        "  The store faulted: faults_huge +{}, faults_first_store +{}; free blocks {free1} -> {free2},",
        s2.faults_huge - s1.faults_huge,
        s2.faults_first_store - s1.faults_first_store
    );
    say!("  so {used} block(s) of {} ({}) were allocated.", human(g.block_size), human(used * g.block_size));
    if s2.faults_huge > s1.faults_huge {
        say!("  The page lies in a 2 MiB-aligned hole that the file and the mapping cover whole, so");
        say!("  udax allocated one aligned 2 MiB run, zeroed it and mapped it in one go.");
    }
    say!("  The allocation was committed before the store went through, as MAP_SYNC requires:");
    say!("  a crash cannot leave stored data in blocks the file does not own.");
    let mut back = vec![0u8; stored.len()];
    mf.read_at(&mut back, at + 100).map_err(|e| fail("/mapped", e))?;
    say!("read_at at the same offset returns {:?} at once:", String::from_utf8_lossy(&back));
    say!("  the mapped page is the device page, so there is nothing to copy back.");
    let s3 = fs.mmap_stats();
    let map2 = mf.mmap(0, map_len, Prot::Read, Share::Shared).map_err(|e| fail("/mapped", e))?;
    let mut back2 = vec![0u8; stored.len()];
    map2.read_at(&mut back2, at + 100).map_err(|e| fail("/mapped", e))?;
    let s4 = fs.mmap_stats();
    say!("A second, read-only mapping of /mapped reads {:?} there.", String::from_utf8_lossy(&back2));
    say!(
        "  {} fault(s): mmap mapped the written run from the device up front ({} page(s)).",
        faults(s4) - faults(s3),
        s4.pages_mapped_eagerly - s3.pages_mapped_eagerly
    );
    let c0 = dev.counters();
    map.flush().map_err(|e| fail("/mapped", e))?;
    let c1 = dev.counters();
    say!("msync (Mapping::flush) of the first mapping: {}", counters_line(c1 - c0));
    say!("  It writes back the mapping's written range; only then do its stores survive power loss.");
    drop((map, map2, mf));
    Ok((at, stored))
}

fn mapped_file(fs: &Fs, data: &[u8]) -> CliResult {
    step(7, "mmap: a written file")?;
    let full = data.repeat(8);
    let wf = fs.open("/written", OpenOptions::create()).map_err(|e| fail("/written", e))?;
    wf.write_at(&full, 0).map_err(|e| fail("/written", e))?;
    let s0 = fs.mmap_stats();
    let wmap = wf.mmap(0, full.len() as u64, Prot::Read, Share::Shared).map_err(|e| fail("/written", e))?;
    let s1 = fs.mmap_stats();
    let mut through = vec![0u8; full.len()];
    wmap.read_at(&mut through, 0).map_err(|e| fail("/written", e))?;
    let s2 = fs.mmap_stats();
    say!("Wrote {} to /written with write_at, then mapped it read-only.", human(full.len() as u64));
    say!(
        "mmap mapped {} page(s) straight from the device (pages mapped eagerly {} -> {}).",
        s1.pages_mapped_eagerly - s0.pages_mapped_eagerly,
        s0.pages_mapped_eagerly,
        s1.pages_mapped_eagerly
    );
    say!(
        "Loading all of it through the mapping: {}, {} fault(s) taken.",
        if through == full { "as written" } else { "DIFFERENT" },
        faults(s2) - faults(s1)
    );
    say!("A load or store to a page wholly past EOF raises SIGBUS, as with a kernel file system.");
    say!("Try it by hand on an image kept with --keep:");
    say!("  udax io IMAGE /mapped -c \"mmap 0 20m\" -c \"mread -v 4m 128\" -c \"mread 16m 1\"");
    drop((wmap, wf));
    Ok(())
}

fn renamed(fs: &Fs) -> CliResult {
    step(8, "atomic rename")?;
    fs.write_file("/config", b"version 1\n").map_err(|e| fail("/config", e))?;
    fs.write_file("/config.new", b"version 2\n").map_err(|e| fail("/config.new", e))?;
    let (p1, n1) = (ROOT_INO, b"config.new".as_slice());
    fs.rename(p1, n1, ROOT_INO, b"config", RenameMode::Replace).map_err(|e| fail("/config", e))?;
    let cfg = fs.read_file("/config").map_err(|e| fail("/config", e))?;
    say!("Renamed /config.new over /config; it now reads {:?}.", String::from_utf8_lossy(&cfg));
    say!("The new name, the removed old name and the freed old file are one transaction:");
    say!("a crash at any instant leaves either the old /config or the new one, never neither.");
    Ok(())
}

fn remounted(fs: Fs, img: &Path, want: &Expected) -> CliResult {
    let Expected { data, block, at, stored } = want;
    let at = *at;
    step(9, "unmount, remount, check")?;
    fs.unmount().map_err(|e| fail("unmount", e))?;
    say!("Unmounted (msync'd the image and let go of the lock).");
    let fs = Fs::open_image(img).map_err(|e| Failure::new("demo", img.display(), describe_open(&e)))?;
    let rec = fs.recovery();
    say!(
        "Mounted it again: the journal replay found {} record(s) to redo ({} bytes).",
        rec.replayed_records,
        rec.replayed_bytes
    );
    if rec.replayed_records > 0 {
        say!("Those records were applied in place before the unmount too; replay is idempotent,");
        say!("so redoing them from the last checkpoint is harmless (it is what a crash would need).");
    }
    let hello = fs.read_file("/docs/hello.txt").map_err(|e| fail("/docs/hello.txt", e))?;
    let data2 = fs.read_file("/data.bin").map_err(|e| fail("/data.bin", e))?;
    let mut expect = data.clone();
    expect[..8192].copy_from_slice(&[block.as_slice(), block].concat());
    expect.extend_from_slice(block);
    let sparse = fs.stat("/sparse").map_err(|e| fail("/sparse", e))?;
    say!("/docs/hello.txt: {:?}", String::from_utf8_lossy(&hello));
    say!("/data.bin: {} bytes, {}", data2.len(), if data2 == expect { "as written" } else { "DIFFERENT" });
    say!("/sparse: size {}, {} blocks", sparse.size, sparse.blocks);
    let rf = fs.open("/mapped", OpenOptions::default()).map_err(|e| fail("/mapped", e))?;
    let mut kept = vec![0u8; stored.len()];
    rf.read_at(&mut kept, at + 100).map_err(|e| fail("/mapped", e))?;
    drop(rf);
    say!(
        "/mapped: {:?} at {} + 100, {}",
        String::from_utf8_lossy(&kept),
        human(at),
        if kept == *stored { "as stored through the mapping" } else { "DIFFERENT" }
    );
    let report = udax::check::check(&fs, &mut |_, _| {});
    say!(
        "fsck: {} inodes, {} blocks used, {} free: {}",
        report.inodes,
        report.blocks_used,
        report.blocks_free,
        if report.is_clean() { "clean".to_string() } else { format!("{} problem(s)", report.findings.len()) }
    );
    for f in &report.findings {
        say!("  {}: {}", f.kind, f.detail);
    }
    fs.unmount().map_err(|e| fail("unmount", e))?;
    if report.is_clean() && hello == b"hello, persistent memory\n" && data2 == expect && kept == *stored {
        Ok(())
    } else {
        Err(Failure::plain("demo", "the image did not come back as written"))
    }
}
