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

#[test]
fn bytes_past_eof_in_the_last_block_are_found() {
    let dev = image();
    let g = ino_of(&dev, "/g");
    let geo = geometry(&dev);
    let raw: RawInode = dev.read_obj(geo.inode_at(g)).unwrap();
    let block = raw.extents[0].physical.get();
    dev.write(geo.block_at(block) + 100, b"stale").unwrap();
    assert!(findings(dev).contains(&"data past EOF"));
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

#[test]
fn a_wrong_parent_pointer_is_found() {
    let dev = image();
    let d = ino_of(&dev, "/d");
    let f = ino_of(&dev, "/d/f");
    edit_inode(&dev, d, |r| r.parent = f.into());
    assert!(findings(dev).contains(&"directory parent"));
}
