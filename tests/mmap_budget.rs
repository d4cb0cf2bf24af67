//! Mappings and the process's VMA limit (vm.max_map_count), and read-only mappings. A test
//! binary of its own, its tests one at a time: the budget is the process's.
//!
//! - Every device piece was its own VMA: scattered first stores into a sparse mapping reached
//!   vm.max_map_count after ~31,700 stores and the store died of SIGBUS; many small mappings used
//!   every VMA of the process before `mmap` failed, so the program's next malloc aborted.
//! - A read-only mapping of a file with more extents than the budget died of SIGBUS on load (a
//!   write-protected copy asked of a region registered without WP), and loads through it
//!   allocated blocks (partly written pages were made mappable, as a store would).

use std::sync::{Mutex, MutexGuard};

use udax::{Device, Error, File, Fs, MkfsOptions, OpenOptions, Prot, Share, PAGE};

/// Held by each test: they share the process's mapping budget.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn fs_with(bs: u32, bytes: u64) -> Fs {
    Fs::mkfs(Device::anonymous(bytes).unwrap(), &MkfsOptions { block_size: bs, ..Default::default() }).unwrap()
}

fn rw(fs: &Fs, path: &str) -> File {
    fs.open(path, OpenOptions::create()).unwrap()
}

fn used_blocks(fs: &Fs) -> u64 {
    let s = fs.statfs();
    s.blocks - s.blocks_free
}

fn fsck_clean(fs: &Fs) {
    let r = udax::check::check(fs, &mut |_, _| {});
    assert!(r.findings.is_empty(), "{:?}", r.findings);
}

/// A mapping budget for one test; the one before comes back however the test ends.
struct Budget(u64);

impl Budget {
    fn set(vmas: u64) -> Budget {
        let old = Budget(udax::map_budget());
        udax::set_map_budget(vmas);
        old
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        udax::set_map_budget(self.0);
    }
}

/// This process's VMAs.
fn vmas() -> usize {
    std::fs::read_to_string("/proc/self/maps").unwrap().lines().count()
}

fn max_map_count() -> usize {
    std::fs::read_to_string("/proc/sys/vm/max_map_count").unwrap().trim().parse().unwrap()
}

#[test]
fn scattered_first_stores_into_a_sparse_mapping_complete() {
    let _serial = serial();
    const LEN: u64 = 256 << 20;
    let fs = fs_with(4096, 640 << 20);
    fs.set_mmap_huge(false);
    let f = rw(&fs, "/sparse");
    f.set_len(LEN).unwrap();
    let m = f.mmap(0, LEN, Prot::ReadWrite, Share::Shared).unwrap();
    for p in (0..LEN / PAGE).step_by(2) {
        m.write_at(&[(p % 251 + 1) as u8], p * PAGE + 7).unwrap();
    }
    let st = fs.mmap_stats();
    assert!(st.faults_clustered > 0, "the budget never pressed: {st:?}");
    assert!(vmas() < max_map_count() * 3 / 4, "{} VMAs in use", vmas());
    // Every store reached the file; the pages in between read zero.
    let mut page = vec![0u8; PAGE as usize];
    for p in 0..LEN / PAGE {
        f.read_at(&mut page, p * PAGE).unwrap();
        let want = if p % 2 == 0 { (p % 251 + 1) as u8 } else { 0 };
        assert_eq!(page[7], want, "page {p}");
        assert_eq!(page.iter().filter(|&&b| b != 0).count(), usize::from(want != 0), "page {p}");
    }
    drop(m);
    fsck_clean(&fs);
}

#[test]
fn mmap_past_the_budget_fails_cleanly_and_leaves_vmas_for_the_program() {
    let _serial = serial();
    let fs = fs_with(4096, 64 << 20);
    let f = rw(&fs, "/small");
    f.set_len(PAGE).unwrap();
    let mut maps = Vec::new();
    let err = loop {
        match f.mmap(0, PAGE, Prot::ReadWrite, Share::Shared) {
            Ok(m) => maps.push(m),
            Err(e) => break e,
        }
        assert!(maps.len() <= max_map_count(), "mmap never refused");
    };
    assert!(matches!(err, Error::OutOfMappings { .. }), "{err}");
    assert_eq!(err.errno(), libc::ENOMEM);
    assert!(err.to_string().contains("vm.max_map_count"), "{err}");
    assert!(maps.len() as u64 >= max_map_count() as u64 / 2 - 100, "only {} mappings", maps.len());
    // The program keeps VMAs of its own: large allocations (each an mmap) and threads still work.
    let bufs: Vec<Vec<u8>> = (0..1000).map(|i| vec![i as u8; 1 << 20]).collect();
    std::thread::spawn(|| ()).join().unwrap();
    drop(bufs);
    // Mappings still serve faults, and room comes back as they go.
    maps[0].write_at(b"still here", 0).unwrap();
    let mut back = [0u8; 10];
    f.read_at(&mut back, 0).unwrap();
    assert_eq!(&back, b"still here");
    maps.truncate(maps.len() - 10);
    f.mmap(0, PAGE, Prot::Read, Share::Shared).unwrap();
}

/// Writes every other block of a new file of `blocks` blocks with `byte`, making that many
/// extents; returns the file.
fn fragmented(fs: &Fs, path: &str, blocks: u64, bs: u64) -> File {
    let f = rw(fs, path);
    for b in (0..blocks).step_by(2) {
        f.write_at(&vec![(b % 200 + 1) as u8; bs as usize], b * bs).unwrap();
    }
    f.set_len(blocks * bs).unwrap();
    f
}

#[test]
fn read_only_mappings_past_the_budget_load_copies_and_allocate_nothing() {
    let _serial = serial();
    let fs = fs_with(4096, 64 << 20);
    let _budget = Budget::set(600);
    let f = fragmented(&fs, "/frag", 4000, 4096);
    let want = fs.read_file("/frag").unwrap();
    let used = used_blocks(&fs);
    for prot in [Prot::Read, Prot::ReadWrite] {
        let m = f.mmap(0, want.len() as u64, prot, Share::Shared).unwrap();
        let mut got = vec![0u8; want.len()];
        m.read_at(&mut got, 0).unwrap();
        assert!(got == want, "{prot:?}: the mapping shows other bytes than the file");
        assert_eq!(used_blocks(&fs), used, "{prot:?}: loads allocated blocks");
        if prot == Prot::ReadWrite {
            // A store into a page served as a copy reaches the file.
            m.write_at(b"stored", 3998 * PAGE).unwrap();
            let mut back = [0u8; 6];
            f.read_at(&mut back, 3998 * PAGE).unwrap();
            assert_eq!(&back, b"stored");
        }
    }
    assert!(fs.mmap_stats().faults_copied > 0);
    fsck_clean(&fs);
}

#[test]
fn loads_of_partly_written_pages_allocate_nothing() {
    let _serial = serial();
    // 1 KiB blocks: every page holds one written block and three holes.
    let fs = fs_with(1024, 64 << 20);
    let f = fragmented(&fs, "/part", 64, 1024);
    for b in (0..64).step_by(4) {
        f.fallocate(b * 1024 + 1024, 2048, udax::FallocMode::PunchHole).unwrap();
    }
    let want = fs.read_file("/part").unwrap();
    let used = used_blocks(&fs);
    for prot in [Prot::Read, Prot::ReadWrite] {
        let m = f.mmap(0, want.len() as u64, prot, Share::Shared).unwrap();
        let mut got = vec![0u8; want.len()];
        m.read_at(&mut got, 0).unwrap();
        assert!(got == want, "{prot:?}");
        assert_eq!(used_blocks(&fs), used, "{prot:?}: loads allocated blocks");
    }
    fsck_clean(&fs);
}

/// Copies of written pages (served past the budget) used to stay in a mapping while another
/// shared writable mapping stored to the same pages without faulting: the first mapping kept
/// showing the old bytes.
#[test]
fn copies_never_hide_stores_through_another_mapping() {
    let _serial = serial();
    let _budget = Budget::set(600);
    let fs = fs_with(4096, 64 << 20);
    let f = fragmented(&fs, "/two", 800, 4096);
    let len = 800 * PAGE;
    let a = f.mmap(0, len, Prot::ReadWrite, Share::Shared).unwrap();
    let mut got = vec![0u8; len as usize];
    a.read_at(&mut got, 0).unwrap();
    assert!(fs.mmap_stats().faults_copied > 0, "the budget never pressed");
    let b = f.mmap(0, len, Prot::ReadWrite, Share::Shared).unwrap();
    for p in (0..800).step_by(2) {
        b.write_at(&[0x7a], p * PAGE + 1).unwrap();
    }
    let mut byte = [0u8; 1];
    for p in (0..800).step_by(2) {
        a.read_at(&mut byte, p * PAGE + 1).unwrap();
        assert_eq!(byte, [0x7a], "page {p}: mapping A missed a store through B");
        a.write_at(&[0x7b], p * PAGE + 2).unwrap();
        b.read_at(&mut byte, p * PAGE + 2).unwrap();
        assert_eq!(byte, [0x7b], "page {p}: mapping B missed a store through A");
    }
    drop((a, b));
    fsck_clean(&fs);
}
