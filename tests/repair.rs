//! fsck found damage but could not mend it: wrong link counts, entries naming free inodes,
//! unreachable files, entries of the wrong type, written blocks past EOF and generation 0 mounted
//! and stayed until someone rebuilt the tree by hand. `Fs::repair` (`udax fsck --repair`) mends
//! each, keeps every reachable file, and leaves an image that checks clean after a remount.

use udax::layout::{DIRENT_HEADER, ROOT_INO};
use udax::{Creds, Device, Fs, MkfsOptions};

fn small_fs() -> Fs {
    let opts = MkfsOptions { block_size: 4096, inodes: 64, ..Default::default() };
    Fs::mkfs(Device::anonymous(16 << 20).unwrap(), &opts).unwrap()
}

fn kinds(fs: &Fs) -> Vec<(&'static str, Option<u64>)> {
    let mut v: Vec<_> = udax::check::check(fs, &mut |_, _| {}).findings.iter().map(|f| (f.kind, f.ino)).collect();
    v.sort();
    v
}

fn remount(fs: Fs) -> Fs {
    Fs::mount(fs.unmount().unwrap().expect("last handle")).unwrap()
}

/// Device offset of the directory entry whose name is `name` (unique in the data area; the
/// journal's ring may hold copies).
fn entry_at(dev: &Device, geo: &udax::layout::Geometry, name: &[u8]) -> u64 {
    let start = geo.block_at(geo.data_start);
    let mut data = vec![0u8; (dev.len() - start) as usize];
    dev.read(start, &mut data).unwrap();
    let at = data.windows(name.len()).position(|w| w == name).expect("name in the data area");
    start + (at - DIRENT_HEADER) as u64
}

#[test]
fn repair_mends_every_damage_mount_tolerates_and_keeps_every_file() {
    let fs = small_fs();
    fs.mkdir_all("/d/sub", 0o755).unwrap();
    fs.write_file("/d/kept", b"kept bytes").unwrap();
    fs.write_file("/d/linked", b"two names").unwrap();
    fs.link_path("/d/linked", "/linked-too").unwrap();
    fs.write_file("/gone-name", b"only the name goes").unwrap();
    fs.write_file("/lost-entry-name", b"unreachable after the damage").unwrap();
    fs.write_file("/typed-entry-name", b"a file its entry calls a symlink").unwrap();
    fs.write_file("/long", &vec![7u8; 5 * 4096]).unwrap();
    fs.mkdir_all("/dangling-dir-name", 0o755).unwrap();
    let ino = |p: &str| fs.resolve(p, false).unwrap();
    let (kept, linked, gone, lost, long, dd, sub) = (
        ino("/d/kept"),
        ino("/d/linked"),
        ino("/gone-name"),
        ino("/lost-entry-name"),
        ino("/long"),
        ino("/dangling-dir-name"),
        ino("/d/sub"),
    );
    let geo = *fs.geometry();
    let dev = fs.unmount().unwrap().unwrap();
    let put_u32 = |at: u64, v: u32| dev.write(at, &v.to_le_bytes()).unwrap();
    put_u32(geo.inode_at(kept) + 4, 5); // nlink 5, named once
    put_u32(geo.inode_at(linked) + 4, 1); // nlink 1, named twice
    put_u32(geo.inode_at(ROOT_INO) + 4, 9); // the root's count
    put_u32(geo.inode_at(sub) + 4, 0); // a directory's count
    put_u32(geo.inode_at(gone), 0); // the inode freed under its name
    put_u32(geo.inode_at(dd), 0); // a directory freed under its name
    let lost_entry = entry_at(&dev, &geo, b"lost-entry-name");
    dev.write(lost_entry, &[0u8; 32]).unwrap(); // its only entry (one 32-byte unit) wiped
    dev.write(entry_at(&dev, &geo, b"typed-entry-name") + 10, &[10u8]).unwrap(); // DT_LNK
    dev.write(geo.inode_at(long) + 16, &100u64.to_le_bytes()).unwrap(); // size 100: 4 blocks past EOF
    put_u32(geo.inode_at(kept) + 24, 0); // generation 0

    let fs = Fs::mount(dev).unwrap();
    let found = kinds(&fs);
    for want in [
        ("link count", Some(kept)),
        ("link count", Some(linked)),
        ("link count", Some(ROOT_INO)),
        ("link count", Some(sub)),
        ("dangling entry", Some(ROOT_INO)),
        ("disconnected", Some(lost)),
        ("entry type", Some(ROOT_INO)),
        ("extent past EOF", Some(long)),
        ("inode", Some(kept)),
    ] {
        assert!(found.contains(&want), "fsck should find {want:?}: {found:?}");
    }
    let free_before = fs.statfs().blocks_free;

    let done = fs.repair().unwrap();
    let mut what: Vec<_> = done.iter().map(|r| r.kind).collect();
    what.sort();
    what.dedup();
    assert_eq!(
        what,
        ["dangling entry", "disconnected", "entry type", "extent past EOF", "inode", "link count"],
        "{done:#?}"
    );
    assert_eq!(kinds(&fs), vec![], "clean after repair: {done:#?}");
    // Four blocks past EOF freed, one taken by /lost+found.
    assert_eq!(fs.statfs().blocks_free, free_before + 4 - 1, "the blocks past EOF are free");

    let fs = remount(fs);
    assert_eq!(kinds(&fs), vec![], "clean after a remount");
    assert_eq!(fs.read_file("/d/kept").unwrap(), b"kept bytes");
    assert_eq!(fs.read_file("/d/linked").unwrap(), b"two names");
    assert_eq!(fs.stat("/linked-too").unwrap().nlink, 2);
    assert_eq!(fs.read_file("/typed-entry-name").unwrap(), b"a file its entry calls a symlink");
    let typed_entry = fs.read_dir_path("/").unwrap().into_iter().find(|e| e.name == b"typed-entry-name").unwrap();
    assert_eq!(typed_entry.dtype, 8, "DT_REG");
    assert_eq!(fs.read_file("/long").unwrap(), vec![7u8; 100]);
    assert_eq!(fs.read_file(format!("/lost+found/#{lost}")).unwrap(), b"unreachable after the damage");
    assert_eq!(fs.stat("/lost+found").unwrap().mode & 0o7777, 0o700);
    assert!(fs.stat("/gone-name").is_err() && fs.stat("/dangling-dir-name").is_err());
    assert_eq!(fs.stat("/").unwrap().nlink, 2 + 2, "/d and /lost+found, no dangling directory");
    // A second repair has nothing to do.
    assert_eq!(fs.repair().unwrap(), vec![]);
}

#[test]
fn repair_of_a_clean_image_does_nothing_and_a_read_only_one_refuses() {
    let fs = small_fs();
    fs.write_file("/f", b"x").unwrap();
    assert_eq!(fs.repair().unwrap(), vec![]);
    assert!(fs.stat("/lost+found").is_err(), "made only when something is adopted");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("img");
    let fs = Fs::mkfs(Device::create(&p, 16 << 20).unwrap(), &MkfsOptions::default()).unwrap();
    fs.mkdir(ROOT_INO, b"d", 0o755, Creds::ROOT).unwrap();
    fs.unmount().unwrap();
    let fs = Fs::open_image_read_only(&p).unwrap();
    assert!(matches!(fs.repair(), Err(udax::Error::ReadOnly)));
}

/// The corrupt-image harness's repair pass must catch a repair that mends nothing.
#[cfg(feature = "faults")]
#[test]
fn the_harness_catches_a_repair_that_mends_nothing() {
    let fs = small_fs();
    fs.write_file("/f", b"x").unwrap();
    let f = fs.resolve("/f", false).unwrap();
    let geo = *fs.geometry();
    let dev = fs.unmount().unwrap().unwrap();
    dev.write(geo.inode_at(f) + 4, &3u32.to_le_bytes()).unwrap();
    let mut image = vec![0u8; dev.len() as usize];
    dev.read(0, &mut image).unwrap();
    assert_eq!(udax::robust::exercise(&image).violation(), None, "repair mends a wrong link count");
    udax::faults::plant_idle_repair(true);
    let caught = udax::robust::exercise(&image).violation();
    udax::faults::plant_idle_repair(false);
    let caught = caught.expect("an idle repair must be caught");
    assert!(caught.contains("findings after repair"), "{caught}");
}
