//! DAX mmap: the seed scenarios S1, S3, S4, S5 and the mapping halves of S2 and S6 (SPEC §6),
//! plus SIGBUS, truncate while mapped, private mappings, kernel-side faults, fragmented files
//! and durability across a remount.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;

use udax::{Device, FallocMode, File, Fs, MkfsOptions, OpenOptions, Prot, Share, PAGE};

const BLOCK_SIZES: [u32; 3] = [1024, 2048, 4096];

fn fs_with(bs: u32, bytes: u64) -> Fs {
    Fs::mkfs(Device::anonymous(bytes).unwrap(), &MkfsOptions { block_size: bs, ..Default::default() }).unwrap()
}

fn used_blocks(fs: &Fs) -> u64 {
    let s = fs.statfs();
    s.blocks - s.blocks_free
}

fn rw(fs: &Fs, path: &str) -> File {
    fs.open(path, OpenOptions::create()).unwrap()
}

fn fsck_clean(fs: &Fs) {
    let r = udax::check::check(fs, &mut |_, _| {});
    assert!(r.findings.is_empty(), "{:?}", r.findings);
}

fn remount(fs: Fs) -> Fs {
    let dev = fs.unmount().unwrap().expect("last handle");
    Fs::mount(dev).unwrap()
}

fn read_all(fs: &Fs, path: &str) -> Vec<u8> {
    fs.read_file(path).unwrap()
}

/// Runs this test binary's `child` test in a child process with `env` set; returns the signal
/// that ended it, if any.
fn child_signal(child: &str, env: &str) -> Option<i32> {
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", child, "--ignored", "--nocapture", "--test-threads=1"])
        .env(env, "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.signal().is_some() || status.success(), "child failed: {status:?}");
    status.signal()
}

#[test]
fn s5_zero_page_then_first_store_is_seen_by_every_mapping() {
    for bs in BLOCK_SIZES {
        let fs = fs_with(bs, 64 << 20);
        let f = rw(&fs, "/s5");
        f.set_len(16 * PAGE).unwrap();
        let a = f.mmap(0, 16 * PAGE, Prot::ReadWrite, Share::Shared).unwrap();
        let b = f.mmap(0, 16 * PAGE, Prot::ReadWrite, Share::Shared).unwrap();
        let before = used_blocks(&fs);
        let mut buf = [1u8; 64];
        a.read_at(&mut buf, 3 * PAGE).unwrap();
        assert_eq!(buf, [0; 64]);
        b.read_at(&mut buf, 3 * PAGE).unwrap();
        let st = fs.mmap_stats();
        assert_eq!(st.faults_zero_page, 2, "{st:?}");
        assert_eq!(used_blocks(&fs), before, "a load allocates nothing");
        a.write_at(b"dax", 3 * PAGE + 5).unwrap();
        let st = fs.mmap_stats();
        assert_eq!(st.faults_first_store, 1, "{st:?}");
        assert_eq!(used_blocks(&fs), before + PAGE / bs as u64, "one page of blocks");
        b.read_at(&mut buf[..3], 3 * PAGE + 5).unwrap();
        assert_eq!(&buf[..3], b"dax", "the second mapping sees the store at once");
        let mut via_read = [0u8; 3];
        f.read_at(&mut via_read, 3 * PAGE + 5).unwrap();
        assert_eq!(&via_read, b"dax");
        drop((a, b));
        fsck_clean(&fs);
    }
}

#[test]
fn sparse_store_allocates_one_page_and_loads_nothing() {
    for bs in BLOCK_SIZES {
        let fs = fs_with(bs, 64 << 20);
        let f = rw(&fs, "/sparse");
        f.set_len(64 * PAGE).unwrap();
        let m = f.mmap(0, 64 * PAGE, Prot::ReadWrite, Share::Shared).unwrap();
        let before = used_blocks(&fs);
        for p in 0..64 {
            let mut b = [9u8; 1];
            m.read_at(&mut b, p * PAGE + 7).unwrap();
            assert_eq!(b, [0]);
        }
        assert_eq!(used_blocks(&fs), before);
        m.write_at(&[0xee], 40 * PAGE + 1).unwrap();
        assert_eq!(used_blocks(&fs), before + PAGE / bs as u64);
        let ext = f.extents().unwrap();
        assert_eq!(ext.len(), 1, "{ext:?}");
        assert_eq!((ext[0].logical, ext[0].length, ext[0].state), (40 * PAGE, PAGE, "written"));
        let data = read_all(&fs, "/sparse");
        assert_eq!(data.iter().filter(|&&b| b != 0).count(), 1);
        assert_eq!(data[(40 * PAGE + 1) as usize], 0xee);
    }
}

#[test]
fn s1_block_smaller_than_page_stores_survive_growth_and_remount() {
    for bs in BLOCK_SIZES {
        for grow_by_write in [false, true] {
            let mut fs = fs_with(bs, 64 << 20);
            {
                let f = rw(&fs, "/s1");
                f.set_len(0).unwrap();
                f.write_at(&[0x11; 1024], 0).unwrap();
                let m = f.mmap(0, PAGE, Prot::ReadWrite, Share::Shared).unwrap();
                m.write_at(&[0xaa], 0).unwrap();
                if grow_by_write {
                    f.write_at(&[0x22], 10000).unwrap();
                } else {
                    f.set_len(10000).unwrap();
                }
                m.write_at(&[0xbb], 2000).unwrap();
                f.sync_all().unwrap();
                fsck_clean(&fs);
            }
            fs = remount(fs);
            let got = read_all(&fs, "/s1");
            let mut want = vec![0u8; if grow_by_write { 10001 } else { 10000 }];
            want[..1024].fill(0x11);
            want[0] = 0xaa;
            want[2000] = 0xbb;
            if grow_by_write {
                want[10000] = 0x22;
            }
            assert!(got == want, "bs {bs}, grow by write {grow_by_write}: contents differ");
            fsck_clean(&fs);
        }
    }
}

#[test]
fn s3_sparse_gigabyte_reads_allocate_nothing_and_one_store_allocates_one_run() {
    // Every page at every block size in the long run (`UDAX_LONG=1`, as `.ci/run` sets); a quick
    // one reads every page at the first block size and every 16th at the others.
    let long = std::env::var("UDAX_LONG").is_ok_and(|v| v == "1");
    for (i, bs) in BLOCK_SIZES.into_iter().enumerate() {
        let fs = fs_with(bs, 64 << 20);
        let f = rw(&fs, "/s3");
        f.set_len(1 << 30).unwrap();
        let m = f.mmap(0, 1 << 30, Prot::ReadWrite, Share::Shared).unwrap();
        let before = used_blocks(&fs);
        let mut b = [0xffu8; 1];
        let step = if long || i == 0 { 1 } else { 16 };
        for p in (0..(1u64 << 30) / PAGE).step_by(step) {
            m.read_at(&mut b, p * PAGE + p % PAGE).unwrap();
            assert_eq!(b, [0]);
        }
        assert_eq!(used_blocks(&fs), before, "bs {bs}: loads allocated");
        assert_eq!(fs.mmap_stats().faults_zero_page, (1 << 30) / PAGE / step as u64);
        m.write_at(&[1], (300 << 20) + 12345).unwrap();
        let st = fs.mmap_stats();
        assert_eq!(st.faults_huge, 1, "{st:?}");
        assert_eq!(used_blocks(&fs) - before, udax::HUGE / bs as u64, "bs {bs}: one aligned 2 MiB run");
        let ext = f.extents().unwrap();
        assert_eq!(ext.len(), 1);
        assert_eq!(ext[0].logical, 300 << 20);
        assert_eq!(ext[0].physical % udax::HUGE, 0, "device run aligned");
        fsck_clean(&fs);
    }
}

#[test]
fn s2_store_into_an_unwritten_page_converts_exactly_that_page() {
    for bs in BLOCK_SIZES {
        let fs = fs_with(bs, 64 << 20);
        let f = rw(&fs, "/s2");
        f.fallocate(0, 1 << 20, FallocMode::Allocate { keep_size: false }).unwrap();
        f.write_at(&[7; 4096], 512 << 10).unwrap();
        let states = |f: &File| f.extents().unwrap().iter().map(|e| (e.logical, e.length, e.state)).collect::<Vec<_>>();
        assert_eq!(states(&f).len(), 3);
        let m = f.mmap(0, 1 << 20, Prot::ReadWrite, Share::Shared).unwrap();
        let mut b = [1u8; 16];
        m.read_at(&mut b, 100 * PAGE).unwrap();
        assert_eq!(b, [0; 16]);
        m.write_at(b"x", 25 * PAGE + 10).unwrap();
        let p = 25 * PAGE;
        assert_eq!(
            states(&f),
            vec![
                (0, p, "unwritten"),
                (p, PAGE, "written"),
                (p + PAGE, (512 << 10) - p - PAGE, "unwritten"),
                (512 << 10, 4096, "written"),
                ((512 << 10) + 4096, (512 << 10) - 4096, "unwritten"),
            ],
            "bs {bs}"
        );
        let data = read_all(&fs, "/s2");
        assert_eq!(data.iter().filter(|&&b| b != 0).count(), 4096 + 1);
        fsck_clean(&fs);
    }
}

/// Fills the free space with a secret, then frees it all.
fn plant_secret(fs: &Fs, secret: u8) {
    let free = fs.statfs().blocks_free * fs.statfs().block_size;
    let f = rw(fs, "/secret");
    let chunk = vec![secret; 1 << 20];
    let mut off = 0;
    while off + (1 << 20) < free - (4 << 20) {
        f.write_at(&chunk, off).unwrap();
        off += 1 << 20;
    }
    drop(f);
    fs.unlink_path("/secret").unwrap();
}

#[test]
fn s6_mapped_stores_into_holes_never_show_stale_data() {
    const SECRET: u8 = 0x5e;
    for bs in BLOCK_SIZES {
        let fs = fs_with(bs, 64 << 20);
        plant_secret(&fs, SECRET);
        // Store into a hole, an unwritten range, a 2 MiB hole, and past EOF before a truncate up.
        let f = rw(&fs, "/hole");
        f.set_len(8 << 20).unwrap();
        let m = f.mmap(0, 8 << 20, Prot::ReadWrite, Share::Shared).unwrap();
        m.write_at(&[1], 3 * PAGE + 1).unwrap();
        m.write_at(&[2], (4 << 20) + 5).unwrap();
        let g = rw(&fs, "/unwritten");
        g.fallocate(0, 1 << 20, FallocMode::Allocate { keep_size: false }).unwrap();
        let n = g.mmap(0, 1 << 20, Prot::ReadWrite, Share::Shared).unwrap();
        n.write_at(&[3], 77 * PAGE + 3).unwrap();
        let h = rw(&fs, "/tail");
        h.write_at(&[4; 100], 0).unwrap();
        let t = h.mmap(0, PAGE, Prot::ReadWrite, Share::Shared).unwrap();
        t.write_at(&[SECRET; 50], 200).unwrap(); // past EOF, inside the EOF page
        h.set_len(3 * PAGE).unwrap();
        let pages = [(&m, 8u64 << 20), (&n, 1 << 20), (&t, PAGE)];
        for (map, len) in pages {
            let mut buf = vec![0u8; len as usize];
            map.read_at(&mut buf, 0).unwrap();
            assert!(!buf.contains(&SECRET), "bs {bs}: a mapping shows the secret");
        }
        for path in ["/hole", "/unwritten", "/tail"] {
            assert!(!read_all(&fs, path).contains(&SECRET), "bs {bs}: {path} shows the secret");
        }
        drop((m, n, t));
        fsck_clean(&fs);
    }
}

#[test]
fn s4_write_fault_and_truncate_race_on_one_page() {
    const SECRET: u8 = 0x5e;
    for bs in BLOCK_SIZES {
        let fs = fs_with(bs, 64 << 20);
        plant_secret(&fs, SECRET);
        let f = rw(&fs, "/s4");
        f.set_len(3 * PAGE).unwrap();
        let m = f.mmap(0, PAGE, Prot::ReadWrite, Share::Shared).unwrap();
        let rounds = 1500;
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..rounds {
                    f.write_at(&[(i % 60 + 1) as u8; 512], (i % 4) * 512).unwrap();
                }
            });
            s.spawn(|| {
                for i in 0..rounds {
                    f.set_len(if i % 2 == 0 { 200 } else { 3 * PAGE }).unwrap();
                }
            });
            s.spawn(|| {
                let mut page = vec![0u8; PAGE as usize];
                for _ in 0..rounds {
                    m.write_at(&[0x77; 16], 100).unwrap();
                    m.read_at(&mut page, 0).unwrap();
                    assert!(!page.contains(&SECRET), "bs {bs}: the mapping showed stale data");
                }
            });
        });
        let data = read_all(&fs, "/s4");
        assert!(!data.contains(&SECRET), "bs {bs}: the file shows stale data");
        drop(m);
        fsck_clean(&fs);
    }
}

#[test]
fn private_mapping_stores_never_reach_the_file() {
    let mut fs = fs_with(4096, 64 << 20);
    {
        let f = rw(&fs, "/p");
        f.write_at(&[b'A'; 2 * PAGE as usize], 0).unwrap();
        f.set_len(3 * PAGE).unwrap();
        let before = used_blocks(&fs);
        let p = f.mmap(0, 3 * PAGE, Prot::ReadWrite, Share::Private).unwrap();
        let s = f.mmap(0, 3 * PAGE, Prot::ReadWrite, Share::Shared).unwrap();
        p.write_at(b"private", 10).unwrap();
        p.write_at(b"hole", 2 * PAGE + 10).unwrap();
        let mut b = [0u8; 7];
        p.read_at(&mut b, 10).unwrap();
        assert_eq!(&b, b"private");
        s.read_at(&mut b, 10).unwrap();
        assert_eq!(&b, b"AAAAAAA", "a shared mapping never sees private stores");
        f.read_at(&mut b, 10).unwrap();
        assert_eq!(&b, b"AAAAAAA");
        assert_eq!(used_blocks(&fs), before, "private stores allocate nothing in the file");
        p.flush().unwrap();
    }
    fs = remount(fs);
    let data = read_all(&fs, "/p");
    assert!(data[..2 * PAGE as usize].iter().all(|&b| b == b'A'));
    assert!(data[2 * PAGE as usize..].iter().all(|&b| b == 0));
    fsck_clean(&fs);
}

#[test]
fn read_into_an_unpopulated_mapping_of_a_hole_works() {
    let fs = fs_with(4096, 64 << 20);
    let f = rw(&fs, "/dst");
    f.set_len(4 * PAGE).unwrap();
    let m = f.mmap(0, 4 * PAGE, Prot::ReadWrite, Share::Shared).unwrap();
    // A kernel read(2) whose buffer is the mapping: the fault is raised inside the kernel. A
    // process that may only handle user-mode faults (no CAP_SYS_PTRACE,
    // vm.unprivileged_userfaultfd 0) gets EFAULT, as the stats say.
    let mut host = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut host, b"from the kernel").unwrap();
    std::io::Seek::rewind(&mut host).unwrap();
    let n = host.read(mapped(&m, PAGE, 15));
    if fs.mmap_stats().user_mode_only {
        println!("user-mode faults only: read(2) into an unpopulated page fails with EFAULT");
        assert_eq!(n.unwrap_err().raw_os_error(), Some(libc::EFAULT));
        m.write_at(b"from the kernel", PAGE).unwrap();
    } else {
        assert_eq!(n.unwrap(), 15);
    }
    // udax's own read and write with mapped buffers (same file and another one).
    let src = rw(&fs, "/src");
    src.write_at(b"udax data", 0).unwrap();
    let got = src.read_at(mapped(&m, 2 * PAGE, 9), 0).unwrap();
    assert_eq!(got, 9);
    let got = f.read_at(mapped(&m, 2 * PAGE, 9), PAGE).unwrap();
    assert_eq!(got, 9, "reading the file into its own mapping");
    f.write_at(mapped(&m, 3 * PAGE, 100), 3 * PAGE + 100).unwrap();
    let data = read_all(&fs, "/dst");
    assert_eq!(&data[PAGE as usize..PAGE as usize + 15], b"from the kernel");
    assert_eq!(&data[2 * PAGE as usize..2 * PAGE as usize + 9], b"from the ");
    assert!(data[3 * PAGE as usize..].iter().all(|&b| b == 0));
    fsck_clean(&fs);
}

/// Child of `loads_past_eof_raise_sigbus`: dies by SIGBUS at the load past the EOF page.
#[test]
#[ignore = "a child-process entry point, run by its test with its environment set"]
fn sigbus_child_past_eof() {
    if std::env::var_os("UDAX_MMAP_SIGBUS_CHILD").is_none() {
        return;
    }
    let fs = fs_with(4096, 16 << 20);
    let f = rw(&fs, "/short");
    f.write_at(&[1; 100], 0).unwrap();
    let m = f.mmap(0, 2 * PAGE, Prot::ReadWrite, Share::Shared).unwrap();
    let mut b = [9u8; 1];
    m.read_at(&mut b, 200).unwrap(); // inside the EOF page: zero
    assert_eq!(b, [0]);
    m.read_at(&mut b, PAGE).unwrap();
    std::process::exit(3);
}

#[test]
fn loads_past_eof_raise_sigbus() {
    assert_eq!(child_signal("sigbus_child_past_eof", "UDAX_MMAP_SIGBUS_CHILD"), Some(libc::SIGBUS));
}

/// Child of `truncate_down_while_mapped`: the cut page raises SIGBUS.
#[test]
#[ignore = "a child-process entry point, run by its test with its environment set"]
fn sigbus_child_after_truncate() {
    if std::env::var_os("UDAX_MMAP_TRUNC_CHILD").is_none() {
        return;
    }
    let fs = fs_with(4096, 16 << 20);
    let f = rw(&fs, "/t");
    f.write_at(&[1; 3 * PAGE as usize], 0).unwrap();
    let m = f.mmap(0, 3 * PAGE, Prot::ReadWrite, Share::Shared).unwrap();
    let mut b = [0u8; 1];
    m.read_at(&mut b, 2 * PAGE).unwrap();
    assert_eq!(b, [1]);
    f.set_len(100).unwrap();
    m.read_at(&mut b, 2 * PAGE).unwrap();
    std::process::exit(3);
}

#[test]
fn truncate_down_while_mapped() {
    assert_eq!(child_signal("sigbus_child_after_truncate", "UDAX_MMAP_TRUNC_CHILD"), Some(libc::SIGBUS));
    // The freed blocks go to another file; the old mapping neither sees nor changes them.
    let fs = fs_with(4096, 16 << 20);
    let f = rw(&fs, "/a");
    f.write_at(&[b'a'; 3 * PAGE as usize], 0).unwrap();
    let old: Vec<u64> = f.extents().unwrap().iter().map(|e| e.physical).collect();
    let m = f.mmap(0, 3 * PAGE, Prot::ReadWrite, Share::Shared).unwrap();
    let mut page = vec![0u8; PAGE as usize];
    m.read_at(&mut page, 2 * PAGE).unwrap();
    f.set_len(PAGE).unwrap();
    let b = rw(&fs, "/b");
    let free = fs.statfs().blocks_free * PAGE;
    b.fallocate(0, free, FallocMode::Allocate { keep_size: false }).unwrap();
    b.write_at(&vec![b'b'; free as usize], 0).unwrap();
    let reused =
        b.extents().unwrap().iter().any(|e| e.physical <= old[0] + PAGE && old[0] + PAGE < e.physical + e.length);
    assert!(reused, "the freed blocks were not reused: the test proves nothing");
    m.write_at(&[b'A'; PAGE as usize], 0).unwrap();
    m.read_at(&mut page, 0).unwrap();
    assert!(page.iter().all(|&x| x == b'A'));
    assert!(read_all(&fs, "/b").iter().all(|&x| x == b'b'), "the old mapping changed another file's blocks");
    drop(m);
    fsck_clean(&fs);
}

#[test]
fn stores_through_a_mapping_survive_flush_and_remount() {
    for bs in BLOCK_SIZES {
        let mut fs = fs_with(bs, 64 << 20);
        let mut want = vec![0u8; 8 * PAGE as usize];
        {
            let f = rw(&fs, "/keep");
            f.write_at(&[3; 4 * PAGE as usize], 0).unwrap();
            want[..4 * PAGE as usize].fill(3);
            f.set_len(8 * PAGE).unwrap();
            let m = f.mmap(0, 8 * PAGE, Prot::ReadWrite, Share::Shared).unwrap();
            for p in 0..8u64 {
                let at = p * PAGE + p * 97;
                let bytes: Vec<u8> = (0..300).map(|i| (i as u8).wrapping_mul(p as u8 + 1)).collect();
                m.write_at(&bytes, at).unwrap();
                want[at as usize..at as usize + 300].copy_from_slice(&bytes);
            }
            m.flush().unwrap();
        }
        fs = remount(fs);
        assert!(read_all(&fs, "/keep") == want, "bs {bs}: contents differ after remount");
        fsck_clean(&fs);
    }
}

#[test]
fn a_file_of_100000_extents_maps_and_reads_correctly() {
    const EXTENTS: u64 = 100_000;
    let fs = fs_with(4096, 512 << 20);
    let f = rw(&fs, "/frag");
    // Written pages with a hole between each: every written page is its own extent.
    for i in 0..EXTENTS {
        f.write_at(&(i as u32).to_le_bytes().repeat(PAGE as usize / 4), 2 * i * PAGE).unwrap();
    }
    assert_eq!(f.extents().unwrap().len() as u64, EXTENTS);
    let m = f.mmap(0, 2 * EXTENTS * PAGE, Prot::ReadWrite, Share::Shared).unwrap();
    let mut page = vec![0u8; PAGE as usize];
    for i in 0..EXTENTS {
        m.read_at(&mut page, 2 * i * PAGE).unwrap();
        assert!(page.chunks(4).all(|c| c == (i as u32).to_le_bytes()), "page {i}");
    }
    let mut hole = [1u8; 8];
    m.read_at(&mut hole, PAGE).unwrap();
    assert_eq!(hole, [0; 8]);
    // A store into a page served as a copy goes to the file.
    m.write_at(b"last", 2 * (EXTENTS - 1) * PAGE).unwrap();
    let mut back = [0u8; 4];
    f.read_at(&mut back, 2 * (EXTENTS - 1) * PAGE).unwrap();
    assert_eq!(&back, b"last");
    // And an overwrite through write() reaches a page served as a copy.
    f.write_at(b"new!", 2 * (EXTENTS - 2) * PAGE).unwrap();
    m.read_at(&mut back, 2 * (EXTENTS - 2) * PAGE).unwrap();
    assert_eq!(&back, b"new!");
    let st = fs.mmap_stats();
    assert!(st.faults_copied > 0 && st.pages_mapped_eagerly > 0, "{st:?}");
    drop(m);
    fsck_clean(&fs);
}

/// Child of `a_first_store_on_a_full_device_raises_sigbus`.
#[test]
#[ignore = "a child-process entry point, run by its test with its environment set"]
fn sigbus_child_enospc() {
    if std::env::var_os("UDAX_MMAP_ENOSPC_CHILD").is_none() {
        return;
    }
    let fs = fs_with(4096, 16 << 20);
    let f = rw(&fs, "/sparse");
    f.set_len(4 * PAGE).unwrap();
    let m = f.mmap(0, 4 * PAGE, Prot::ReadWrite, Share::Shared).unwrap();
    let fill = rw(&fs, "/fill");
    let free = fs.statfs().blocks_free * PAGE;
    fill.fallocate(0, free, FallocMode::Allocate { keep_size: false }).unwrap();
    assert_eq!(fs.statfs().blocks_free, 0);
    m.write_at(&[1], PAGE).unwrap();
    std::process::exit(3);
}

#[test]
fn a_first_store_on_a_full_device_raises_sigbus() {
    // As a kernel file system's page_mkwrite failing with ENOSPC.
    assert_eq!(child_signal("sigbus_child_enospc", "UDAX_MMAP_ENOSPC_CHILD"), Some(libc::SIGBUS));
}

/// A load from a hole through a read-only shared mapping hung: the zero page was installed, then
/// write-protecting it failed (the region has no write-protect registration) and the faulting
/// thread was never woken.
#[test]
fn read_only_mappings_load_holes() {
    let fs = fs_with(4096, 16 << 20);
    let f = rw(&fs, "/ro");
    f.set_len(4 * PAGE).unwrap();
    f.write_at(b"data", 2 * PAGE).unwrap();
    for share in [Share::Shared, Share::Private] {
        let m = f.mmap(0, 4 * PAGE, Prot::Read, share).unwrap();
        let mut b = [9u8; 4];
        m.read_at(&mut b, PAGE).unwrap();
        assert_eq!(b, [0; 4], "{share:?}");
        m.read_at(&mut b, 2 * PAGE).unwrap();
        assert_eq!(&b, b"data", "{share:?}");
        assert!(m.write_at(b"x", 0).is_err(), "a read-only mapping refuses stores");
    }
    assert_eq!(fs.mmap_stats().faults_sigbus, 0);
}

/// The mapped bytes `[off, off+len)` as a slice, for handing mapped memory to code that takes
/// one (a read(2) into the mapping, an argument that lives there). The library lends no such
/// slice: other threads, mappings and processes may change the bytes while it lives.
#[allow(clippy::mut_from_ref)]
fn mapped(m: &udax::Mapping, off: u64, len: u64) -> &mut [u8] {
    assert!(off + len <= m.len(), "inside the mapping");
    // SAFETY: the range lies inside the mapping (checked above), which stays mapped while `m`
    // is borrowed; the test forms no other reference to those bytes while the slice lives, and
    // the stores other mappings make meanwhile are what it means to race.
    unsafe { std::slice::from_raw_parts_mut(m.as_ptr().add(off as usize), len as usize) }
}

/// `Mapping::loadable` probes pages nothing has touched yet — holes, written pages, the EOF page
/// and past it — in every kind of mapping, with or without kernel-mode faults (`UDAX_EXPECT_USER_MODE_ONLY=1`
/// makes the test insist on the user-mode-only path, as `.ci/run` does for an unprivileged user).
#[test]
fn loadable_probes_untouched_pages() {
    let fs = fs_with(4096, 64 << 20);
    let f = rw(&fs, "/f");
    f.write_at(&[7; 4096], PAGE).unwrap(); // page 1 written, page 0 a hole
    f.set_len(3 * PAGE + 10).unwrap(); // page 3 holds EOF
    for (prot, share) in
        [(Prot::ReadWrite, Share::Shared), (Prot::Read, Share::Shared), (Prot::ReadWrite, Share::Private)]
    {
        let m = f.mmap(0, 6 * PAGE, prot, share).unwrap();
        let got: Vec<bool> = (0..6).map(|p| m.loadable(p * PAGE + 5).unwrap()).collect();
        assert_eq!(got, [true, true, true, true, false, false], "{prot:?} {share:?}");
    }
    let user_mode_only = fs.mmap_stats().user_mode_only;
    println!("user-mode faults only: {user_mode_only}");
    if std::env::var("UDAX_EXPECT_USER_MODE_ONLY").is_ok_and(|v| v == "1") {
        assert!(user_mode_only, "this process can handle kernel-mode faults: the user-mode-only path went untested");
    }
}

/// A crash can leave bytes past EOF in the block holding it (a growing write stores them before
/// its commit; a truncate zeroes its new tail after its commit): the first mapping after the
/// mount must show zeros there, as POSIX asks of the page holding EOF, at every block size.
#[test]
fn bytes_a_crash_left_past_eof_read_zero_through_the_first_mapping() {
    for bs in BLOCK_SIZES {
        let fs = fs_with(bs, 16 << 20);
        let f = rw(&fs, "/f");
        let size = 5000u64;
        f.write_at(&vec![7u8; size as usize], 0).unwrap();
        let e = f.extents().unwrap().into_iter().find(|e| e.logical <= size && size < e.logical + e.length).unwrap();
        let junk = bs as u64 - size % bs as u64;
        fs.device().write(e.physical + size - e.logical, &vec![0x5a; junk as usize]).unwrap();
        drop(f);
        let fs = remount(fs);
        let f = fs.open("/f", OpenOptions::read_only()).unwrap();
        let m = f.mmap(PAGE, PAGE, Prot::Read, Share::Shared).unwrap();
        let mut page = vec![0u8; PAGE as usize];
        m.read_at(&mut page, 0).unwrap();
        let inside = (size - PAGE) as usize;
        assert!(page[..inside].iter().all(|&b| b == 7), "bs {bs}: file bytes changed");
        assert!(page[inside..].iter().all(|&b| b == 0), "bs {bs}: a mapping shows bytes past EOF");
        assert_eq!(read_all(&fs, "/f").len(), size as usize);
        drop(m);
        fsck_clean(&fs);
    }
}
