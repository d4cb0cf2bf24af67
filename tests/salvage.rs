//! Garbage over one inode slot or one directory block made the whole image unusable: mount and
//! fsck stopped at the first undecodable field ("bad inode mode at byte …") with no findings,
//! and not even the undamaged files could be read. Now the image mounts, every damaged object is
//! reported, operations reaching a damaged inode fail naming the damage, nothing it may own is
//! handed out, the rest reads back byte-exact, and repair mends it all.

use udax::layout::{Geometry, RawExtent, RawInode, ROOT_INO};
use udax::{Creds, Device, Error, Fs, MkfsOptions};

fn small_fs() -> Fs {
    let opts = MkfsOptions { block_size: 4096, inodes: 256, ..Default::default() };
    Fs::mkfs(Device::anonymous(16 << 20).unwrap(), &opts).unwrap()
}

/// Deterministic garbage (xorshift), never a valid mode or a plausible inode number.
fn garbage(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&(seed | 0x8080_8080_8080_8080).to_le_bytes());
    }
    v.truncate(len);
    v
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt)).collect()
}

fn kinds(fs: &Fs) -> Vec<(&'static str, Option<u64>)> {
    let mut v: Vec<_> = udax::check::check(fs, &mut |_, _| {}).findings.iter().map(|f| (f.kind, f.ino)).collect();
    v.sort();
    v
}

fn remount(fs: Fs) -> Fs {
    Fs::mount(fs.unmount().unwrap().expect("last handle")).unwrap()
}

fn geometry(dev: &Device) -> Geometry {
    Geometry::from_superblock(&dev.read_obj(0).unwrap(), dev.len()).unwrap()
}

#[test]
fn garbage_over_a_directory_inode_leaves_the_rest_usable_and_repair_mends_it() {
    let fs = small_fs();
    let keep = pattern(10_000, 1);
    let inner = pattern(7_000, 2);
    let deep = pattern(3_000, 3);
    fs.write_file("/keep", &keep).unwrap();
    fs.mkdir_all("/d/s", 0o755).unwrap();
    fs.write_file("/d/f", &inner).unwrap();
    fs.write_file("/d/s/g", &deep).unwrap();
    let ino = |p: &str| fs.resolve(p, false).unwrap();
    let (d, f, s, g) = (ino("/d"), ino("/d/f"), ino("/d/s"), ino("/d/s/g"));
    let dev = fs.unmount().unwrap().unwrap();
    let geo = geometry(&dev);
    dev.write(geo.inode_at(d), &garbage(256, 7)).unwrap();

    let fs = Fs::mount(dev).expect("one damaged inode does not stop the mount");
    assert_eq!(fs.read_file("/keep").unwrap(), keep);
    match fs.stat("/d") {
        Err(e @ Error::Corrupt { what: "inode mode", at }) => {
            assert_eq!(at, geo.inode_at(d));
            assert_eq!(e.errno(), libc::EUCLEAN);
        }
        other => panic!("a damaged inode was served: {other:?}"),
    }
    assert!(matches!(fs.readdir(d, 0), Err(Error::Corrupt { .. })));
    assert!(matches!(fs.unlink(ROOT_INO, b"d"), Err(Error::IsDir | Error::Corrupt { .. })));
    assert!(matches!(fs.rmdir(ROOT_INO, b"d"), Err(Error::Corrupt { .. })));
    assert!(matches!(fs.create(ROOT_INO, b"d", 0o644, Creds::ROOT), Err(Error::Exists)));
    // What it held is intact, only unreachable until repair.
    assert_eq!(fs.read(f, &mut vec![0; 7_000], 0).unwrap(), 7_000);
    let found = kinds(&fs);
    for want in [
        ("damaged inode", Some(d)),
        ("dangling entry", Some(ROOT_INO)),
        ("disconnected", Some(f)),
        ("disconnected", Some(s)),
        ("disconnected", Some(g)),
        ("directory links", Some(s)),
    ] {
        assert!(found.contains(&want), "fsck should find {want:?}: {found:?}");
    }
    // The number stays out of use.
    for i in 0..20 {
        assert_ne!(fs.create(ROOT_INO, format!("n{i}").as_bytes(), 0o644, Creds::ROOT).unwrap().ino, d);
    }

    let done = fs.repair().unwrap();
    assert!(done.iter().any(|r| r.kind == "damaged inode" && r.ino == d), "{done:#?}");
    assert_eq!(kinds(&fs), vec![], "clean after repair: {done:#?}");
    let fs = remount(fs);
    assert_eq!(kinds(&fs), vec![], "clean after a remount");
    assert_eq!(fs.read_file("/keep").unwrap(), keep);
    assert_eq!(fs.read_file(format!("/lost+found/#{f}")).unwrap(), inner);
    assert_eq!(fs.read_file(format!("/lost+found/#{s}/g")).unwrap(), deep);
    assert_eq!(fs.lookup(s, b"..").unwrap().ino, fs.resolve("/lost+found", false).unwrap());
    assert!(fs.stat("/d").is_err());
    assert_eq!(fs.repair().unwrap(), vec![]);
}

#[test]
fn a_damaged_file_keeps_its_blocks_and_number_out_of_use() {
    let fs = small_fs();
    let data = pattern(64 << 10, 9);
    fs.write_file("/victim", &data).unwrap();
    fs.write_file("/other", b"other bytes").unwrap();
    let victim = fs.resolve("/victim", false).unwrap();
    let dev = fs.unmount().unwrap().unwrap();
    let geo = geometry(&dev);
    // Only the mode is garbage: its extents still name its blocks.
    dev.write(geo.inode_at(victim), &0xffff_ffffu32.to_le_bytes()).unwrap();
    let raw: RawInode = dev.read_obj(geo.inode_at(victim)).unwrap();
    let runs: Vec<RawExtent> = raw.extents.iter().copied().filter(|e| e.len.get() > 0).collect();
    assert!(!runs.is_empty());

    let fs = Fs::mount(dev).unwrap();
    assert!(matches!(fs.stat("/victim"), Err(Error::Corrupt { what: "inode mode", .. })));
    assert!(matches!(fs.unlink(ROOT_INO, b"victim"), Err(Error::Corrupt { .. })));
    assert_eq!(fs.read_file("/other").unwrap(), b"other bytes");
    assert_eq!(kinds(&fs), vec![("damaged inode", Some(victim)), ("dangling entry", Some(ROOT_INO))]);
    // Fill the device: nothing lands on the damaged inode's blocks.
    let mut i = 0;
    while fs.write_file(format!("/fill{i}"), &vec![0xee; 1 << 20]).is_ok() {
        assert_ne!(fs.resolve(format!("/fill{i}"), false).unwrap(), victim);
        i += 1;
    }
    let untouched = |fs: &Fs| {
        let mut got = Vec::new();
        for e in &runs {
            let mut buf = vec![0u8; (u64::from(e.len.get()) * geo.block_size) as usize];
            fs.device().read(geo.block_at(e.physical.get()), &mut buf).unwrap();
            got.extend_from_slice(&buf);
        }
        got.truncate(data.len());
        got == data
    };
    assert!(untouched(&fs), "a damaged inode's blocks were handed out");
    assert!(kinds(&fs).iter().all(|k| k.0 != "free space"), "{:?}", kinds(&fs));
    for j in 0..i {
        fs.unlink(ROOT_INO, format!("fill{j}").as_bytes()).unwrap();
    }

    let done = fs.repair().unwrap();
    let what: Vec<_> = done.iter().map(|r| r.kind).collect();
    assert_eq!(what, ["damaged inode", "dangling entry"], "{done:#?}");
    assert_eq!(kinds(&fs), vec![], "clean after repair: {done:#?}");
    assert!(untouched(&fs));
    let fs = remount(fs);
    assert_eq!(kinds(&fs), vec![]);
    assert_eq!(fs.read_file("/other").unwrap(), b"other bytes");
    assert!(fs.stat("/victim").is_err());
}

#[test]
fn garbage_over_a_directory_block_keeps_the_entries_that_decode() {
    let fs = small_fs();
    fs.mkdir(ROOT_INO, b"d", 0o755, Creds::ROOT).unwrap();
    // 1-unit entries: 128 to a 4 KiB block, so the second block holds f128 and up and s.
    let mut files = Vec::new();
    for i in 0..180 {
        let path = format!("/d/f{i}");
        let bytes = pattern(100 + i * 37, i as u8);
        fs.write_file(&path, &bytes).unwrap();
        files.push((fs.resolve(&path, false).unwrap(), path, bytes));
    }
    fs.mkdir_all("/d/s", 0o755).unwrap();
    fs.write_file("/d/s/inner", b"inner bytes").unwrap();
    let d = fs.resolve("/d", false).unwrap();
    let s = fs.resolve("/d/s", false).unwrap();
    let dev = fs.unmount().unwrap().unwrap();
    let geo = geometry(&dev);
    let raw: RawInode = dev.read_obj(geo.inode_at(d)).unwrap();
    let second = raw
        .extents
        .iter()
        .find(|e| e.len.get() > 0 && e.logical.get() <= 1 && e.logical.get() + u64::from(e.len.get()) > 1)
        .unwrap();
    let block = second.physical.get() + 1 - second.logical.get();
    dev.write(geo.block_at(block), &garbage(4096, 11)).unwrap();

    let fs = Fs::mount(dev).expect("one damaged directory block does not stop the mount");
    let listed: Vec<Vec<u8>> = fs.read_dir_path("/d").unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(listed.len(), 128, "the first block's entries");
    let mut lost = Vec::new();
    for (ino, path, bytes) in &files {
        match fs.read_file(path) {
            Ok(got) => assert_eq!(&got, bytes, "{path}"),
            Err(Error::NotFound) => lost.push(*ino),
            Err(e) => panic!("{path}: {e}"),
        }
    }
    assert_eq!(lost.len(), 52);
    assert!(fs.stat("/d/s").is_err());
    assert!(matches!(fs.rmdir(d, b"f0"), Err(Error::NotDir)));
    let found = kinds(&fs);
    assert!(found.contains(&("damaged directory entry", Some(d))), "{found:?}");
    assert!(found.contains(&("disconnected", Some(s))), "{found:?}");
    assert!(found.contains(&("link count", Some(d))), "{found:?}");
    for ino in &lost {
        assert!(found.contains(&("disconnected", Some(*ino))), "{ino}: {found:?}");
    }
    // New names never land in the damaged units; a directory with damaged units is not empty.
    for i in 0..50 {
        fs.create(d, format!("new-{i}").as_bytes(), 0o644, Creds::ROOT).unwrap();
    }
    let fs = remount(fs);
    assert_eq!(fs.read_dir_path("/d").unwrap().len(), 128 + 50);

    let done = fs.repair().unwrap();
    assert!(done.iter().any(|r| r.kind == "damaged directory entry" && r.ino == d), "{done:#?}");
    assert_eq!(kinds(&fs), vec![], "clean after repair: {done:#?}");
    let fs = remount(fs);
    assert_eq!(kinds(&fs), vec![], "clean after a remount");
    for (ino, path, bytes) in &files {
        let at = if lost.contains(ino) { format!("/lost+found/#{ino}") } else { path.clone() };
        assert_eq!(&fs.read_file(&at).unwrap(), bytes, "{at}");
    }
    assert_eq!(fs.read_file(format!("/lost+found/#{s}/inner")).unwrap(), b"inner bytes");
}
