//! The heap-device subset, which `.ci/run` also runs under miri (`cargo +nightly miri test
//! --test heap_device`, with the library's unit tests): the journal's commits and replay,
//! extents, directories, extended attributes and the namespace, through `Fs` on
//! [`Device::heap`], so miri checks every pointer the device hands out and every unsafe block
//! beneath these paths. Shared mappings, userfaultfd and image files are outside what miri
//! models; the other tests cover them on mapped devices.

use udax::{Device, FallocMode, Fs, MkfsOptions, OpenOptions, XattrFlags};

/// Small enough for miri, with room for every structure.
const SIZE: u64 = 4 << 20;

fn mkfs(block_size: u32) -> Fs {
    let opts = MkfsOptions { block_size, journal_bytes: 256 << 10, ..MkfsOptions::default() };
    Fs::mkfs(Device::heap(SIZE).unwrap(), &opts).unwrap()
}

/// Unmounts and mounts the same memory again: everything below comes back from the medium.
fn remount(fs: Fs) -> Fs {
    let dev = fs.unmount().unwrap().expect("the last handle gives the device back");
    Fs::mount(dev).unwrap()
}

fn clean(fs: &Fs) {
    let report = udax::check::check(fs, &mut |_, _| {});
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

#[test]
fn namespace_and_data_survive_a_remount() {
    for bs in [1024, 4096] {
        let fs = mkfs(bs);
        fs.mkdir_all("/a/b", 0o755).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        fs.write_file("/a/b/f", &data).unwrap();
        fs.write_file("/a/g", b"second").unwrap();
        fs.link_path("/a/g", "/a/b/g2").unwrap();
        fs.symlink_path("b/f", "/a/s").unwrap();
        fs.rename_path("/a/b/f", "/a/f").unwrap();
        fs.unlink_path("/a/g").unwrap();
        let f = fs.open("/a/f", OpenOptions::read_write()).unwrap();
        fs.setxattr(f.ino(), b"user.k", b"value", XattrFlags::default()).unwrap();
        f.fallocate(bs as u64, bs as u64, FallocMode::PunchHole).unwrap();
        f.write_at(b"overwritten", 2 * bs as u64 + 5).unwrap();
        f.set_len(9_000).unwrap();
        drop(f);
        clean(&fs);

        let fs = remount(fs);
        clean(&fs);
        let mut want = data[..9_000].to_vec();
        want[bs as usize..2 * bs as usize].fill(0);
        let at = 2 * bs as usize + 5;
        want[at..at + 11].copy_from_slice(b"overwritten");
        assert_eq!(fs.read_file("/a/f").unwrap(), want, "bs {bs}");
        assert_eq!(fs.read_file("/a/b/g2").unwrap(), b"second");
        assert_eq!(fs.readlink_path("/a/s").unwrap(), b"b/f");
        let ino = fs.stat("/a/f").unwrap().ino;
        assert_eq!(fs.getxattr(ino, b"user.k").unwrap(), b"value");
        let mut names: Vec<Vec<u8>> = fs.read_dir_path("/a").unwrap().into_iter().map(|e| e.name).collect();
        names.sort();
        assert_eq!(names, [b"b".to_vec(), b"f".to_vec(), b"s".to_vec()]);
        assert!(fs.stat("/a/g").is_err());
    }
}

#[test]
fn a_directory_grows_shrinks_and_reloads() {
    let fs = mkfs(1024);
    fs.mkdir_path("/d", 0o755).unwrap();
    // 40 entries of about 50 bytes: the directory grows past one 1 KiB block.
    for i in 0..40 {
        fs.write_file(format!("/d/entry-with-a-longish-name-{i}"), &[i as u8]).unwrap();
    }
    for i in (0..40).step_by(2) {
        fs.unlink_path(format!("/d/entry-with-a-longish-name-{i}")).unwrap();
    }
    let fs = remount(fs);
    clean(&fs);
    assert_eq!(fs.read_dir_path("/d").unwrap().len(), 20);
    for i in (1..40).step_by(2) {
        assert_eq!(fs.read_file(format!("/d/entry-with-a-longish-name-{i}")).unwrap(), [i as u8]);
    }
    fs.remove_all("/d").unwrap();
    clean(&fs);
}

#[test]
fn the_journal_ring_wraps_and_replays() {
    // A 256 KiB ring and 320 commits that each log a whole 1 KiB attribute block: over 320 KiB
    // of records, so the ring wraps and checkpoints.
    let fs = mkfs(1024);
    let f = fs.open("/f", OpenOptions::create()).unwrap();
    for i in 0..320u64 {
        f.write_at(&i.to_le_bytes(), (i % 50) * 8).unwrap();
        let value = vec![(i % 251) as u8; 900];
        fs.setxattr(f.ino(), b"user.big", &value, XattrFlags::default()).unwrap();
        if i % 8 == 0 {
            f.set_len(400 + i).unwrap();
        }
    }
    drop(f);
    let fs = remount(fs);
    clean(&fs);
    let back = fs.read_file("/f").unwrap();
    assert_eq!(back.len(), 712);
    assert_eq!(&back[49 * 8..50 * 8], &299u64.to_le_bytes());
    let ino = fs.stat("/f").unwrap().ino;
    assert_eq!(fs.getxattr(ino, b"user.big").unwrap(), vec![(319 % 251) as u8; 900]);
}

#[test]
#[cfg_attr(miri, ignore = "mmap starts the userfaultfd service")]
fn files_on_a_heap_device_cannot_be_mapped() {
    // Refused at mmap time, as mmap(2) refuses a file system without it: a hole would
    // otherwise map now and fail only at the first store.
    let fs = mkfs(4096);
    fs.write_file("/f", &[1; 4096]).unwrap();
    fs.write_file("/hole", &[]).unwrap();
    for name in ["/f", "/hole"] {
        let f = fs.open(name, OpenOptions::read_write()).unwrap();
        f.set_len(8192).unwrap();
        let e = f.mmap(0, 8192, udax::Prot::ReadWrite, udax::Share::Shared).unwrap_err();
        assert_eq!(e.errno(), libc::ENODEV, "{name}: {e}");
    }
}
