//! fsck must catch damage that still mounts: each case plants one problem on the medium of a
//! clean image, remounts, and expects that finding (and only a clean image to pass).

use udax::layout::{Geometry, RawDirent, RawInode};
use udax::{Device, Fs, MkfsOptions};
use zerocopy::IntoBytes;

/// A clean image with a small tree; returns it unmounted.
fn image() -> Device {
    let fs = Fs::mkfs(Device::anonymous(16 << 20).unwrap(), &MkfsOptions::default()).unwrap();
    fs.mkdir_all("/d", 0o755).unwrap();
    fs.write_file("/d/f", &[1; 5000]).unwrap();
    fs.write_file("/g", b"short").unwrap();
    fs.unmount().unwrap().expect("last handle")
}

fn findings(dev: Device) -> Vec<&'static str> {
    let fs = Fs::mount(dev).unwrap();
    udax::check::check(&fs, &mut |_, _| {}).findings.iter().map(|f| f.kind).collect()
}

fn geometry(dev: &Device) -> Geometry {
    Geometry::from_superblock(&dev.read_obj(0).unwrap(), dev.len()).unwrap()
}

/// Finds an inode by name through a throwaway mount of a copy of the medium.
fn ino_of(dev: &Device, path: &str) -> u64 {
    let copy = Device::anonymous(dev.len()).unwrap();
    let mut bytes = vec![0u8; dev.len() as usize];
    dev.read(0, &mut bytes).unwrap();
    copy.write(0, &bytes).unwrap();
    Fs::mount(copy).unwrap().resolve(path, false).unwrap()
}

fn edit_inode(dev: &Device, ino: u64, f: impl FnOnce(&mut RawInode)) {
    let at = geometry(dev).inode_at(ino);
    let mut raw: RawInode = dev.read_obj(at).unwrap();
    f(&mut raw);
    dev.write_obj(at, &raw).unwrap();
}

#[test]
fn a_clean_image_has_no_findings() {
    assert!(findings(image()).is_empty());
}

#[test]
fn a_wrong_link_count_is_found() {
    let dev = image();
    let f = ino_of(&dev, "/d/f");
    edit_inode(&dev, f, |r| r.nlink = 3.into());
    assert!(findings(dev).contains(&"link count"));
}

#[test]
fn a_wrong_directory_link_count_is_found() {
    let dev = image();
    let d = ino_of(&dev, "/d");
    edit_inode(&dev, d, |r| r.nlink = 5.into());
    assert!(findings(dev).contains(&"link count"));
}

/// Bytes past EOF in the last block are what a mapping may leave there: not a finding, and
/// growing the file does not show them.
#[test]
fn bytes_past_eof_in_the_last_block_are_allowed_and_never_shown() {
    let dev = image();
    let g = ino_of(&dev, "/g");
    let geo = geometry(&dev);
    let raw: RawInode = dev.read_obj(geo.inode_at(g)).unwrap();
    let size = raw.size.get();
    assert!(size < 100, "/g is short");
    let block = raw.extents[0].physical.get();
    dev.write(geo.block_at(block) + 100, b"stale").unwrap();
    let fs = Fs::mount(dev).unwrap();
    assert!(udax::check::check(&fs, &mut |_, _| {}).findings.is_empty());
    fs.truncate(g, 4096).unwrap();
    let mut back = vec![1u8; 4096];
    fs.read(g, &mut back, 0).unwrap();
    assert!(back[size as usize..].iter().all(|&b| b == 0), "stale bytes resurfaced after truncate up");
}

#[test]
fn a_written_extent_past_eof_is_found() {
    let dev = image();
    let f = ino_of(&dev, "/d/f");
    edit_inode(&dev, f, |r| r.size = 10.into());
    let got = findings(dev);
    assert!(got.contains(&"extent past EOF"), "{got:?}");
}

#[test]
fn an_entry_naming_a_free_inode_is_found() {
    let dev = image();
    let geo = geometry(&dev);
    let d = ino_of(&dev, "/d");
    let raw: RawInode = dev.read_obj(geo.inode_at(d)).unwrap();
    let at = geo.block_at(raw.extents[0].physical.get());
    let mut e: RawDirent = dev.read_obj(at).unwrap();
    assert_ne!(e.ino.get(), 0, "the directory's first entry is /d/f");
    e.ino = (geo.inode_count - 1).into();
    dev.write(at, e.as_bytes()).unwrap();
    let got = findings(dev);
    assert!(got.contains(&"dangling entry"), "{got:?}");
    assert!(got.contains(&"disconnected"), "the old /d/f is now unreachable: {got:?}");
}

/// Damage that breaks the tree shape itself (which the locking relies on) is refused at mount,
/// naming it, rather than left for fsck.
#[test]
fn a_wrong_parent_pointer_is_refused_at_mount() {
    let dev = image();
    let d = ino_of(&dev, "/d");
    let f = ino_of(&dev, "/d/f");
    edit_inode(&dev, d, |r| r.parent = f.into());
    assert!(matches!(Fs::mount(dev), Err(udax::Error::Corrupt { what: "directory parent", .. })));
}

#[test]
fn a_directory_cycle_is_refused_at_mount() {
    let fs = Fs::mkfs(Device::anonymous(16 << 20).unwrap(), &MkfsOptions::default()).unwrap();
    fs.mkdir_all("/a/b", 0o755).unwrap();
    let a = fs.resolve("/a", true).unwrap();
    let b = fs.resolve("/a/b", true).unwrap();
    let dev = fs.unmount().unwrap().expect("last handle");
    let geo = geometry(&dev);
    // Point root's entry "a" at nothing (a free inode) and make a's parent b: a and b now form a
    // loop that the root cannot reach.
    let root: RawInode = dev.read_obj(geo.inode_at(1)).unwrap();
    let at = geo.block_at(root.extents[0].physical.get());
    let mut e: RawDirent = dev.read_obj(at).unwrap();
    assert_eq!(e.ino.get(), a);
    e.ino = (geo.inode_count - 1).into();
    dev.write(at, e.as_bytes()).unwrap();
    let b_raw: RawInode = dev.read_obj(geo.inode_at(b)).unwrap();
    let b_at = geo.block_at(b_raw.extents.first().map_or(0, |x| x.physical.get()));
    // b is empty; give it an entry naming a, with a's parent set to b.
    let name = b"a";
    let ent = RawDirent { ino: a.into(), name_len: 1.into(), file_type: 4, units: 1, reserved: 0.into() };
    let mut bytes = ent.as_bytes().to_vec();
    bytes.extend_from_slice(name);
    let mut b_raw = b_raw;
    if b_at == 0 {
        // b has no block yet: borrow a's (a's only entry was b, now replaced).
        let a_raw: RawInode = dev.read_obj(geo.inode_at(a)).unwrap();
        b_raw.extents[0] = a_raw.extents[0];
        b_raw.size = a_raw.size;
        let mut a_raw = a_raw;
        a_raw.extents[0] = Default::default();
        a_raw.size = 0.into();
        dev.write_obj(geo.inode_at(a), &a_raw).unwrap();
        dev.write_obj(geo.inode_at(b), &b_raw).unwrap();
    }
    let b_raw: RawInode = dev.read_obj(geo.inode_at(b)).unwrap();
    let b_block = geo.block_at(b_raw.extents[0].physical.get());
    dev.write(b_block, &[0u8; 32]).unwrap();
    dev.write(b_block, &bytes).unwrap();
    edit_inode(&dev, a, |r| r.parent = b.into());
    match Fs::mount(dev) {
        Err(udax::Error::Corrupt { what, .. }) => assert_eq!(what, "unreachable directory"),
        other => panic!("a directory loop mounted: {:?}", other.map(|_| ())),
    }
}
