//! Read-only opens. Every open was O_RDWR and every mount replayed and rewrote the journal, so
//! `ls`, `info`, `fsck`, `get` and `cat` needed write access to the image, and unknown
//! `ro_compat` feature bits were ignored (a read-write mount changed such an image).

use std::io::Read;

use udax::layout::{superblock_crc, RawSuperblock, SUPERBLOCK_OFF};
use udax::{Device, Error, FallocMode, Fs, MkfsOptions, OpenOptions, Prot, SetAttr, Share, XattrFlags};
use zerocopy::IntoBytes;

fn image() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let p = dir.path().join("img");
    let fs = Fs::mkfs(Device::create(&p, 32 << 20).unwrap(), &MkfsOptions::default()).unwrap();
    fs.mkdir_all("/d", 0o755).unwrap();
    fs.write_file("/d/f", b"hello").unwrap();
    fs.unmount().unwrap();
    (dir, p)
}

fn erofs<T: std::fmt::Debug>(r: udax::Result<T>) {
    match r {
        Err(e @ Error::ReadOnly) => assert_eq!(e.errno(), libc::EROFS),
        other => panic!("expected EROFS, got {other:?}"),
    }
}

#[test]
fn a_read_only_open_reads_everything_changes_nothing_and_writes_nothing() {
    let (_d, p) = image();
    // Records left to replay: changes made and never checkpointed (no unmount).
    let fs = Fs::open_image(&p).unwrap();
    fs.write_file("/d/g", b"world").unwrap();
    drop(fs);
    let before = std::fs::read(&p).unwrap();

    let fs = Fs::open_image_read_only(&p).unwrap();
    assert!(fs.is_read_only());
    assert_eq!(fs.read_file("/d/g").unwrap(), b"world", "the replay shows in memory");
    let mut f = fs.open("/d/f", OpenOptions::read_only()).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello");
    let m = f.mmap(0, 4096, Prot::Read, Share::Shared).unwrap();
    let mut b = [0u8; 5];
    m.read_at(&mut b, 0).unwrap();
    assert_eq!(&b, b"hello");
    drop(m);
    // A private writable mapping is the process's own: allowed, as on Linux.
    drop(f.mmap(0, 4096, Prot::ReadWrite, Share::Private).unwrap());
    // A file open for reading cannot be mapped shared and writable (EACCES, as on Linux), and
    // no file opens for writing.
    assert!(matches!(f.mmap(0, 4096, Prot::ReadWrite, Share::Shared), Err(Error::AccessDenied(_))));
    erofs(fs.open("/d/f", OpenOptions::read_write()));
    erofs(fs.open("/d/new", OpenOptions::create()));
    erofs(fs.mkdir_path("/e", 0o755));
    erofs(fs.unlink_path("/d/f"));
    erofs(fs.rmdir_path("/d"));
    erofs(fs.rename_path("/d/f", "/d/h"));
    erofs(fs.link_path("/d/f", "/d/h"));
    erofs(fs.symlink_path("f", "/d/s"));
    erofs(fs.truncate(f.ino(), 0));
    erofs(fs.fallocate(f.ino(), 0, 4096, FallocMode::PunchHole));
    erofs(fs.write(f.ino(), b"x", 0));
    erofs(fs.setattr(f.ino(), &SetAttr { mode: Some(0o600), ..Default::default() }));
    erofs(fs.setxattr(f.ino(), b"user.a", b"1", XattrFlags::default()));
    erofs(fs.removexattr(f.ino(), b"user.a"));
    // Another reader at the same time; no writer.
    let second = Fs::open_image_read_only(&p).unwrap();
    assert!(matches!(Fs::open_image(&p), Err(Error::InUse { .. })));
    drop((f, second));
    fs.unmount().unwrap();
    assert!(std::fs::read(&p).unwrap() == before, "a read-only open changed the image");
    // A read-write open replays for good.
    let fs = Fs::open_image(&p).unwrap();
    assert_eq!(fs.read_file("/d/g").unwrap(), b"world");
}

#[test]
fn unknown_ro_compat_features_allow_read_only_opens_only() {
    let (_d, p) = image();
    let mut bytes = std::fs::read(&p).unwrap();
    let mut sb = zerocopy::FromBytes::read_from_prefix(&bytes[SUPERBLOCK_OFF as usize..]).map(|(s, _)| s).unwrap();
    let sb: &mut RawSuperblock = &mut sb;
    sb.features_ro_compat = (1u64 << 40).into();
    sb.crc = superblock_crc(sb).into();
    bytes[..std::mem::size_of::<RawSuperblock>()].copy_from_slice(sb.as_bytes());
    std::fs::write(&p, &bytes).unwrap();
    let e = Fs::open_image(&p).unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
    let fs = Fs::open_image_read_only(&p).unwrap();
    assert_eq!(fs.read_file("/d/f").unwrap(), b"hello");
    erofs(fs.mkdir_path("/e", 0o755));
}
