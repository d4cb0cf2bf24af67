//! Bad input gets a clear error and loses nothing: foreign, truncated and corrupted images, a
//! full device, over-long names, non-empty directories, images in use.

use proptest::prelude::*;
use udax::{Creds, Device, Error, Fs, MkfsOptions, OpenOptions};

fn shm_dir() -> tempfile::TempDir {
    match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(_) => tempfile::tempdir().unwrap(),
    }
}

fn small_fs(size: u64, block_size: u32, inodes: u64) -> Fs {
    let opts = MkfsOptions { block_size, inodes, ..Default::default() };
    Fs::mkfs(Device::anonymous(size).unwrap(), &opts).unwrap()
}

fn remount(fs: Fs) -> Fs {
    let dev = fs.unmount().unwrap().expect("last handle");
    let fs = Fs::mount(dev).unwrap();
    let report = udax::check::check(&fs, &mut |_, _| {});
    assert!(report.is_clean(), "{:?}", report.findings);
    fs
}

#[test]
fn a_file_that_is_not_udax_is_refused_by_name() {
    let dir = shm_dir();
    let zeros = dir.path().join("zeros");
    std::fs::write(&zeros, vec![0u8; 1 << 20]).unwrap();
    let text = dir.path().join("text");
    std::fs::write(&text, "hello, this is not a file system\n".repeat(300)).unwrap();
    for p in [&zeros, &text] {
        let e = Fs::open_image(p).unwrap_err();
        assert!(matches!(e, Error::NotUdax(_)), "{e:?}");
        assert!(e.to_string().contains("not a udax image"), "{e}");
    }
    let tiny = dir.path().join("tiny");
    std::fs::write(&tiny, b"udax").unwrap();
    assert!(matches!(Fs::open_image(&tiny), Err(Error::NotUdax(_))));
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(Fs::open_image(&empty), Err(Error::NotUdax(_))));
}

#[test]
fn a_truncated_image_is_refused() {
    let dir = shm_dir();
    let p = dir.path().join("img");
    let fs = Fs::mkfs(Device::create(&p, 16 << 20).unwrap(), &MkfsOptions::default()).unwrap();
    drop(fs);
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(8192).unwrap();
    let e = Fs::open_image(&p).unwrap_err();
    assert!(matches!(e, Error::Corrupt { what, .. } if what.contains("truncated")), "{e:?}");
}

#[test]
fn a_flipped_superblock_bit_is_refused_naming_the_superblock() {
    let dir = shm_dir();
    let p = dir.path().join("img");
    drop(Fs::mkfs(Device::create(&p, 16 << 20).unwrap(), &MkfsOptions::default()).unwrap());
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[40] ^= 0x10;
    std::fs::write(&p, &bytes).unwrap();
    let e = Fs::open_image(&p).unwrap_err();
    assert!(e.to_string().contains("superblock"), "{e}");
}

#[test]
fn an_image_in_use_is_refused() {
    let dir = shm_dir();
    let p = dir.path().join("img");
    let _fs = Fs::mkfs(Device::create(&p, 16 << 20).unwrap(), &MkfsOptions::default()).unwrap();
    let e = Fs::open_image(&p).unwrap_err();
    // The holder is named: this very process.
    let me = format!("process {} (", std::process::id());
    assert!(matches!(&e, Error::InUse { who, .. } if who.starts_with(&me)), "{e}");
    assert_eq!(e.errno(), libc::EBUSY);
    assert!(e.to_string().contains("in use"));
}

#[test]
fn a_full_device_returns_enospc_and_loses_nothing() {
    for bs in [1024, 4096] {
        let fs = small_fs(4 << 20, bs, 256);
        let mut written = Vec::new();
        let mut hit = false;
        for i in 0..1000u32 {
            let name = format!("/f{i}");
            let data: Vec<u8> = (0..70_000u32).map(|k| (k * 31 + i) as u8).collect();
            let f = match fs.open(&name, OpenOptions::create()) {
                Ok(f) => f,
                Err(e) => {
                    assert_eq!(e.errno(), libc::ENOSPC, "{e}");
                    hit = true;
                    break;
                }
            };
            match f.write_at(&data, 0) {
                Ok(n) if n == data.len() => written.push((name, data)),
                Ok(n) => {
                    // A short write: what it says it wrote is there.
                    let mut back = vec![0; n];
                    assert_eq!(f.read_at(&mut back, 0).unwrap(), n);
                    assert_eq!(back, data[..n]);
                    hit = true;
                    break;
                }
                Err(e) => {
                    assert_eq!(e.errno(), libc::ENOSPC, "{e}");
                    assert_eq!(f.metadata().unwrap().size, 0, "a failed write left a size behind");
                    hit = true;
                    break;
                }
            }
        }
        assert!(hit, "the device never filled");
        assert!(!written.is_empty());
        // Everything is still usable and consistent, before and after a remount.
        let fs = remount(fs);
        for (name, data) in &written {
            assert_eq!(&fs.read_file(name).unwrap(), data, "{name} after ENOSPC");
        }
        // Freeing space makes room again.
        fs.unlink_path(&written[0].0).unwrap();
        fs.write_file("/again", &[7u8; 30_000]).unwrap();
        remount(fs);
    }
}

#[test]
fn running_out_of_inodes_is_enospc() {
    let fs = small_fs(4 << 20, 4096, 64);
    let mut made = 0;
    let err = loop {
        match fs.create(1, format!("n{made}").as_bytes(), 0o644, Creds::ROOT) {
            Ok(_) => made += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(err.errno(), libc::ENOSPC);
    assert_eq!(made, 63, "every inode but the root's is usable");
    remount(fs);
}

#[test]
fn names_over_255_bytes_get_enametoolong() {
    let fs = small_fs(8 << 20, 4096, 0);
    let long = vec![b'x'; 256];
    let ok = vec![b'y'; 255];
    assert_eq!(fs.create(1, &long, 0o644, Creds::ROOT).unwrap_err().errno(), libc::ENAMETOOLONG);
    assert_eq!(fs.mkdir(1, &long, 0o755, Creds::ROOT).unwrap_err().errno(), libc::ENAMETOOLONG);
    assert_eq!(fs.lookup(1, &long).unwrap_err().errno(), libc::ENAMETOOLONG);
    fs.create(1, &ok, 0o644, Creds::ROOT).unwrap();
    assert_eq!(fs.rename(1, &ok, 1, &long, Default::default()).unwrap_err().errno(), libc::ENAMETOOLONG);
    assert_eq!(fs.symlink(1, b"l", &vec![b'a'; 4096], Creds::ROOT).unwrap_err().errno(), libc::ENAMETOOLONG);
    for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
        assert_eq!(fs.create(1, bad, 0o644, Creds::ROOT).unwrap_err().errno(), libc::EINVAL, "{bad:?}");
    }
    let fs = remount(fs);
    assert_eq!(fs.lookup(1, &ok).unwrap().size, 0);
}

#[test]
fn removing_a_non_empty_directory_gets_enotempty() {
    let fs = small_fs(8 << 20, 4096, 0);
    fs.mkdir_all("/d/e", 0o755).unwrap();
    assert_eq!(fs.rmdir_path("/d").unwrap_err().errno(), libc::ENOTEMPTY);
    assert_eq!(fs.unlink_path("/d").unwrap_err().errno(), libc::EISDIR);
    fs.write_file("/f", b"x").unwrap();
    assert_eq!(fs.rmdir_path("/f").unwrap_err().errno(), libc::ENOTDIR);
    fs.rmdir_path("/d/e").unwrap();
    fs.rmdir_path("/d").unwrap();
    remount(fs);
}

#[test]
fn an_unlinked_open_file_lives_until_closed_and_orphans_are_freed_at_mount() {
    let fs = small_fs(8 << 20, 4096, 0);
    let f = fs.open("/tmp", OpenOptions::create()).unwrap();
    f.write_at(&[5; 50_000], 0).unwrap();
    let free_before = fs.statfs().blocks_free;
    fs.unlink_path("/tmp").unwrap();
    let mut back = [0u8; 10];
    f.read_at(&mut back, 40_000).unwrap();
    assert_eq!(back, [5; 10]);
    assert_eq!(fs.statfs().blocks_free, free_before, "blocks stay while open");
    drop(f);
    assert!(fs.statfs().blocks_free > free_before, "blocks go at the last close");

    // An orphan left by a process that died with the file open is freed at the next mount.
    let f = fs.open("/tmp2", OpenOptions::create()).unwrap();
    f.write_at(&[6; 50_000], 0).unwrap();
    fs.unlink_path("/tmp2").unwrap();
    std::mem::forget(f);
    let fs_clone = fs.clone();
    drop(fs);
    // The leaked handle keeps one clone alive; copy the image the way a crash would leave it.
    let geo = *fs_clone.geometry();
    let mut image = vec![0u8; geo.size_bytes as usize];
    fs_clone.device().read(0, &mut image).unwrap();
    let dev = Device::anonymous(geo.size_bytes).unwrap();
    dev.write(0, &image).unwrap();
    let fs = Fs::mount(dev).unwrap();
    assert!(udax::check::check(&fs, &mut |_, _| {}).is_clean());
    assert_eq!(fs.inode_numbers(), vec![1]);
}

fn image_with_a_tree() -> Vec<u8> {
    let fs = small_fs(2 << 20, 1024, 64);
    fs.mkdir_all("/a/b", 0o755).unwrap();
    for i in 0..20 {
        fs.write_file(format!("/a/f{i}"), &vec![i as u8; 3000]).unwrap();
    }
    fs.symlink_path("f1", "/a/b/link").unwrap();
    let mut bytes = vec![0u8; 2 << 20];
    fs.device().read(0, &mut bytes).unwrap();
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random damage to the metadata (journal, inode table, directory and data blocks) never
    /// panics mount or fsck: it is refused with an error or mounts and gets checked.
    #[test]
    fn damaged_images_never_panic(flips in proptest::collection::vec((prop_oneof![4096usize..8192, 270_336usize..290_000, 290_000usize..(2 << 20)], any::<u8>()), 1..40)) {
        let mut bytes = image_with_a_tree();
        for (at, v) in flips {
            bytes[at] ^= v | 1;
        }
        let dev = Device::anonymous(bytes.len() as u64).unwrap();
        dev.write(0, &bytes).unwrap();
        if let Ok(fs) = Fs::mount(dev) {
            let _ = udax::check::check(&fs, &mut |_, _| {});
            let _ = fs.read_dir_path("/a");
            let _ = fs.read_file("/a/f3");
        }
    }
}

/// Sizes read from a damaged medium used to drive allocations: a directory or symlink inode
/// claiming 8 TiB made mount or readlink abort the process.
#[test]
fn absurd_sizes_on_the_medium_are_corruption_not_aborts() {
    for (make_dir, what) in [(true, "directory size"), (false, "symlink size")] {
        let fs = small_fs(16 << 20, 4096, 0);
        let ino = if make_dir {
            fs.mkdir(1, b"d", 0o755, Creds::ROOT).unwrap().ino
        } else {
            fs.symlink(1, b"l", b"target", Creds::ROOT).unwrap().ino
        };
        let geo = *fs.geometry();
        let dev = fs.unmount().unwrap().expect("last handle");
        dev.write(geo.inode_at(ino) + 16, &(1u64 << 43).to_le_bytes()).unwrap();
        assert_eq!(damage_of(dev, ino), what);
    }
}

/// Mounts `dev`, on which inode `ino` is damaged: the mount goes on, fsck reports the inode,
/// and reaching it fails as corruption; returns what the decoder found wrong.
#[track_caller]
fn damage_of(dev: Device, ino: u64) -> &'static str {
    let fs = Fs::mount(dev).unwrap();
    let report = udax::check::check(&fs, &mut |_, _| {});
    let damaged: Vec<_> = report.findings.iter().filter(|f| f.kind == "damaged inode").map(|f| f.ino).collect();
    assert_eq!(damaged, vec![Some(ino)], "{:?}", report.findings);
    match fs.getattr(ino) {
        Err(Error::Corrupt { what, at }) => {
            assert!(at >= fs.geometry().inode_at(ino), "{what} at {at:#x}");
            what
        }
        other => panic!("a damaged inode was served: {other:?}"),
    }
}

/// A superblock with a valid checksum but an inode count whose table would overflow the address
/// arithmetic used to panic (debug) or wrap (release).
#[test]
fn a_crafted_geometry_is_refused() {
    let size = 16u64 << 20;
    let geo = udax::layout::Geometry::plan(size, 4096, 0, 0).unwrap();
    let mut sb = geo.superblock(0, [0; 16], "");
    sb.inode_count = (u64::MAX / 256 - 10).into();
    sb.crc = udax::layout::superblock_crc(&sb).into();
    let dev = Device::anonymous(size).unwrap();
    dev.write_obj(0, &sb).unwrap();
    assert!(matches!(Fs::mount(dev), Err(Error::Corrupt { .. })));
}

/// A damaged overflow-extent pointer used to overflow the block-to-offset multiplication before
/// it was range-checked (found by `damaged_images_never_panic`).
#[test]
fn a_wild_extent_chain_pointer_is_corruption() {
    let fs = small_fs(16 << 20, 4096, 0);
    let ino = fs.create(1, b"f", 0o644, Creds::ROOT).unwrap().ino;
    let geo = *fs.geometry();
    let dev = fs.unmount().unwrap().expect("last handle");
    dev.write(geo.inode_at(ino) + 112, &(u64::MAX / 3).to_le_bytes()).unwrap();
    assert_eq!(damage_of(dev, ino), "extent block chain");
}

/// `Fs::mkfs` over an image silently reformatted it, and `Device::create`/`Fs::open_image`
/// took only `&Path` (a `&str` did not compile).
#[test]
fn mkfs_keeps_an_existing_image_unless_told() {
    let dir = shm_dir();
    let p = dir.path().join("img");
    let path: &str = p.to_str().unwrap();
    let fs = Fs::mkfs(Device::create(path, 16 << 20).unwrap(), &MkfsOptions::default()).unwrap();
    fs.open("/kept", OpenOptions::create()).unwrap().write_at(b"data", 0).unwrap();
    drop(fs);
    let e = Fs::mkfs(Device::open(path).unwrap(), &MkfsOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Exists), "{e:?}");
    assert_eq!(Fs::open_image(path).unwrap().read_file("/kept").unwrap(), b"data");
    let again = MkfsOptions { overwrite: true, ..Default::default() };
    let fs = Fs::mkfs(Device::open(path).unwrap(), &again).unwrap();
    assert!(matches!(fs.stat("/kept"), Err(Error::NotFound)));
}
