//! What a mount server publishes to direct clients: file maps that name the bytes in the image,
//! paged, and a map generation that moves with every change to a file's size or blocks.

use std::os::unix::fs::FileExt;

use udax::direct::{DirectTable, Image, LeaseIo, MapIo, EXTENT_WRITTEN, MAP_EXTENTS, STATE_CLOSED, STATE_LIVE};
use udax::{Device, FallocMode, Fs, MkfsOptions, OpenOptions};

struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn scratch(what: &str) -> Scratch {
    let dir = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
    Scratch(dir.join(format!("udax-direct-{what}-{}", std::process::id())))
}

/// A fresh image of `mib` MiB publishing its maps: the image's and the table's scratch files,
/// and the file system.
fn published(what: &str, mib: u64) -> (Scratch, Scratch, Fs) {
    let image = scratch(what);
    let table = scratch(&format!("{what}-table"));
    let fs = Fs::mkfs(Device::create(&image.0, mib << 20).unwrap(), &MkfsOptions::default()).unwrap();
    fs.publish_maps(DirectTable::create(&table.0, fs.geometry().inode_count, 0o600).unwrap()).unwrap();
    (image, table, fs)
}

/// All of a file's extents, page by page.
fn whole_map(fs: &Fs, ino: u64) -> (u64, u64, Vec<udax::direct::MapExtent>) {
    let (mut from, mut all) = (0, Vec::new());
    loop {
        let m: MapIo = fs.file_map(ino, from).unwrap();
        all.extend_from_slice(m.extents());
        if m.next_block == u64::MAX {
            return (m.generation, m.size, all);
        }
        assert_eq!(m.count as usize, MAP_EXTENTS, "only a full page has a next one");
        from = m.next_block;
    }
}

#[test]
fn maps_name_the_files_bytes_in_the_image() {
    let image = scratch("image");
    let table_path = scratch("table");
    let fs = Fs::mkfs(Device::create(&image.0, 64 << 20).unwrap(), &MkfsOptions::default()).unwrap();
    let table = DirectTable::create(&table_path.0, fs.geometry().inode_count, 0o600).unwrap();
    fs.publish_maps(table).unwrap();
    let again = DirectTable::create(&scratch("second").0, fs.geometry().inode_count, 0o600).unwrap();
    assert_eq!(fs.publish_maps(again).unwrap_err().errno(), libc::EBUSY);
    let client = DirectTable::open(&table_path.0, false).unwrap();
    assert_eq!(client.state(), STATE_LIVE);
    assert_eq!(client.server_pid(), u64::from(std::process::id()));

    // Every other block written: one extent per block, more than a page of them.
    let f = fs.open("/sparse", OpenOptions::create()).unwrap();
    let bs = fs.geometry().block_size;
    let blocks = 2 * MAP_EXTENTS as u64 + 7;
    for b in 0..blocks {
        f.write_at(&[(b % 250) as u8 + 1; 100], 2 * b * bs).unwrap();
    }
    let ino = f.metadata().unwrap().ino;
    let (generation, size, map) = whole_map(&fs, ino);
    assert_eq!(generation, client.generation(ino).unwrap());
    assert_eq!(size, f.metadata().unwrap().size);
    assert_eq!(map.len() as u64, blocks);
    let img = std::fs::File::open(&image.0).unwrap();
    for (b, e) in map.iter().enumerate() {
        assert_eq!((e.logical, e.blocks, e.flags), (2 * b as u64, 1, EXTENT_WRITTEN));
        let mut got = [0u8; 100];
        img.read_exact_at(&mut got, e.physical).unwrap();
        assert_eq!(got, [(b % 250) as u8 + 1; 100], "extent {b} names the file's bytes");
    }
    assert_eq!(fs.file_map(1, 0).unwrap_err().errno(), libc::EINVAL, "a directory has no map");
}

#[test]
fn every_change_to_size_or_blocks_moves_the_generation() {
    let (_image, table_path, fs) = published("gens", 64);
    let client = DirectTable::open(&table_path.0, false).unwrap();
    let f = fs.open("/f", OpenOptions::create()).unwrap();
    let ino = f.metadata().unwrap().ino;
    let mut last = client.generation(ino).unwrap();
    let mut moved = |what: &str| {
        let now = client.generation(ino).unwrap();
        assert!(now > last, "{what} left the generation at {now}");
        last = now;
    };
    f.write_at(&[1; 10_000], 0).unwrap();
    moved("a write into holes");
    f.write_at(&[2; 10], 10_000).unwrap();
    moved("an append inside the last block");
    fs.fallocate(ino, 64 << 10, 64 << 10, FallocMode::Allocate { keep_size: true }).unwrap();
    moved("fallocate");
    f.write_at(&[3; 4096], 64 << 10).unwrap();
    moved("a write into unwritten blocks");
    fs.fallocate(ino, 4096, 4096, FallocMode::PunchHole).unwrap();
    moved("a punched hole");
    fs.fallocate(ino, 0, 4096, FallocMode::ZeroRange { keep_size: true }).unwrap();
    moved("zero range");
    f.set_len(100).unwrap();
    moved("truncate down");
    f.set_len(1 << 20).unwrap();
    moved("truncate up");
    drop(f);
    fs.unlink_path("/f").unwrap();
    moved("the last unlink, which frees the blocks");
    drop(fs);
    assert_eq!(client.state(), STATE_CLOSED, "the table closes with the file system that published it");
}

#[test]
fn a_closed_or_foreign_table_is_refused_or_marked() {
    let p = scratch("closed");
    let t = DirectTable::create(&p.0, 10, 0o600).unwrap();
    let c = DirectTable::open(&p.0, false).unwrap();
    t.close();
    assert_eq!(c.state(), STATE_CLOSED);
    assert!(c.generation(11).is_err() && c.generation(0).is_err());
    let other = scratch("foreign");
    std::fs::write(&other.0, [7u8; 4096]).unwrap();
    assert!(matches!(DirectTable::open(&other.0, false), Err(udax::Error::Corrupt { .. })));
    drop(t);
    assert!(!p.0.exists(), "the server's table goes with it");
}

/// The device ranges (`[start, end)`) of `f`'s blocks.
fn device_ranges(f: &udax::File) -> Vec<(u64, u64)> {
    f.extents().unwrap().iter().map(|e| (e.physical, e.physical + e.length)).collect()
}

/// Whether any block of `f` lies in `ranges`.
fn holds_any(f: &udax::File, ranges: &[(u64, u64)]) -> bool {
    f.extents().unwrap().iter().any(|e| ranges.iter().any(|&(s, t)| e.physical < t && s < e.physical + e.length))
}

/// Appends 64 KiB writes to `f` from `*off` until one fails (the image is full); returns how
/// many went in.
fn fill(f: &udax::File, off: &mut u64, byte: u8) -> usize {
    let mut n = 0;
    while f.write_at(&[byte; 64 << 10], *off).is_ok() {
        *off += 64 << 10;
        n += 1;
    }
    n
}

#[test]
fn blocks_freed_under_a_direct_write_wait_for_it_to_end() {
    // A writer that checked the generation before a truncate moved it may still store into the
    // blocks the truncate freed: they must not go to another file until it leaves.
    let (_image, table_path, fs) = published("quarantine", 16);
    let client = DirectTable::open(&table_path.0, true).unwrap();
    let slot = client.claim().expect("a free writer slot");
    let f = fs.open("/victim", OpenOptions::create()).unwrap();
    f.write_at(&[1u8; 1 << 20], 0).unwrap();
    let freed = device_ranges(&f);
    client.enter(slot);
    f.set_len(0).unwrap();
    // Fill the rest of the image: every free block but the quarantined ones gets used.
    let g = fs.open("/filler", OpenOptions::create()).unwrap();
    let mut off = 0;
    fill(&g, &mut off, 2);
    assert!(!holds_any(&g, &freed), "a block freed under a direct write went to another file");
    client.leave(slot);
    // Now they may be reused: the next shortage takes them.
    let more = fill(&g, &mut off, 3);
    assert!(more >= 15, "the quarantined megabyte came back ({more} more 64 KiB writes)");
    assert!(holds_any(&g, &freed));
    client.release(slot);
}

/// A client's append under a lease, as `udax-direct` makes it: the bytes into the blocks the
/// lease reserved, then the lane raised. False when the lane refused it.
fn append_directly(fs: &Fs, image: &Image, ino: u64, lease: &LeaseIo, data: &[u8], off: u64) -> bool {
    let bs = fs.geometry().block_size;
    let (_, _, map) = whole_map(fs, ino);
    for (i, b) in data.iter().enumerate() {
        let at = off + i as u64;
        let e =
            map.iter().find(|e| e.logical * bs <= at && at < (e.logical + e.blocks) * bs).expect("a reserved block");
        image.write_durable(e.physical + at - e.logical * bs, &[*b]).unwrap();
    }
    image.raise_lane(lease.lane, u64::from(lease.token), off + data.len() as u64).unwrap()
}

#[test]
fn a_lane_holds_returned_appends_through_a_crash() {
    // Appends under a lease move no committed size: after a crash, the lane is what holds them.
    let (image_path, _table, fs) = published("lane", 16);
    let f = fs.open("/log", OpenOptions::create()).unwrap();
    f.write_at(&[1u8; 1000], 0).unwrap();
    let ino = f.metadata().unwrap().ino;
    drop(f);
    let lease = fs.lease(ino, 7, 5000).unwrap();
    assert!(lease.end >= 5000 && lease.size == 1000, "{lease:?}");
    let image = Image::attach(&image_path.0).unwrap();
    assert!(append_directly(&fs, &image, ino, &lease, &[2u8; 4000], 1000));
    // Readers find the lane in the map, and the size in it.
    let m = fs.file_map(ino, 0).unwrap();
    assert_eq!((m.lane, m.size), (lease.lane, 1000));
    assert_eq!(image.lane_size(lease.lane).unwrap(), Some(5000));
    // A crash: no unmount, the lease never ended.
    drop(fs);
    let fs = Fs::open_image(&image_path.0).unwrap();
    let f = fs.open("/log", OpenOptions::read_only()).unwrap();
    assert_eq!(f.metadata().unwrap().size, 5000);
    let mut got = vec![0u8; 5000];
    assert_eq!(f.read_at(&mut got, 0).unwrap(), 5000);
    assert!(got[..1000].iter().all(|&b| b == 1) && got[1000..].iter().all(|&b| b == 2));
    let bs = fs.geometry().block_size;
    assert!(f.extents().unwrap().iter().all(|e| e.logical + e.length <= 5000u64.div_ceil(bs) * bs), "trimmed");
    assert_eq!(image.lane_size(lease.lane).unwrap(), None, "folded");
    assert!(udax::check::check(&fs, &mut |_, _| {}).is_clean());
}

/// An EOF block preallocated inside EOF (unwritten) is converted when a lease reserves from it,
/// so the appends stored there are the file's once the lease ends.
#[test]
fn appends_into_a_preallocated_eof_block_are_kept() {
    let (image_path, _table, fs) = published("unwritten-eof", 16);
    let ino = fs.open("/f", OpenOptions::create()).unwrap().metadata().unwrap().ino;
    fs.fallocate(ino, 0, 6000, FallocMode::Allocate { keep_size: false }).unwrap();
    let image = Image::attach(&image_path.0).unwrap();
    let lease = fs.lease(ino, 1, 7000).unwrap();
    assert!(append_directly(&fs, &image, ino, &lease, &[7u8; 1000], 6000));
    let mut got = vec![1u8; 7000];
    assert_eq!(fs.read(ino, &mut got, 0).unwrap(), 7000);
    assert!(got[..6000].iter().all(|&b| b == 0) && got[6000..].iter().all(|&b| b == 7));
    assert!(udax::check::check(&fs, &mut |_, _| {}).is_clean());
}

#[test]
fn an_ended_lease_takes_no_more_appends() {
    // A client still in an append when its lease ends (stopped, say) must not move the size the
    // server folded, nor the lane of the next lease: it makes the append through the mount.
    let (image_path, _table, fs) = published("frozen", 16);
    let ino = fs.open("/f", OpenOptions::create()).unwrap().metadata().unwrap().ino;
    let image = Image::attach(&image_path.0).unwrap();
    let first = fs.lease(ino, 1, 100).unwrap();
    assert!(append_directly(&fs, &image, ino, &first, &[5u8; 100], 0));
    // Any other request ends the lease; its appends are the file's.
    assert_eq!(fs.getattr(ino).unwrap().size, 100);
    assert!(!image.raise_lane(first.lane, u64::from(first.token), 200).unwrap(), "the ended lease's lane");
    // Nor does it reach the next lease's lane, even at the same size.
    let second = fs.lease(ino, 2, 200).unwrap();
    assert_ne!(second.token, first.token);
    assert!(!image.raise_lane(second.lane, u64::from(first.token), 200).unwrap());
    assert_eq!(fs.getattr(ino).unwrap().size, 100);
    // Preallocated blocks past EOF are the file's own: no lease over them.
    fs.fallocate(ino, 0, 1 << 20, FallocMode::Allocate { keep_size: true }).unwrap();
    assert_eq!(fs.lease(ino, 3, 4096).unwrap_err().errno(), libc::EBUSY);
    assert!(udax::check::check(&fs, &mut |_, _| {}).is_clean());
}

#[test]
fn blocks_a_client_maps_from_the_image_wait_for_its_open_file_to_go() {
    // A mapping served from the image stores into the blocks it mapped until it is unmapped:
    // freed from the file meanwhile, they must not go to another file before its open file is
    // released.
    let (_image, _table, fs) = published("pinned", 16);
    let f = fs.open("/mapped", OpenOptions::create()).unwrap();
    f.write_at(&[1u8; 1 << 20], 0).unwrap();
    let ino = f.ino();
    let pinned = device_ranges(&f);
    assert_eq!(fs.direct_map(ino, 7, 0, (0, 1 << 20), false).unwrap().pin, 7);
    // Pinned to an open file that pins blocks of this file already, not to the one asking.
    assert_eq!(fs.direct_map(ino, 9, 7, (0, 4096), false).unwrap().pin, 7);
    f.set_len(0).unwrap();
    let g = fs.open("/filler", OpenOptions::create()).unwrap();
    let mut off = 0;
    fill(&g, &mut off, 2);
    assert!(!holds_any(&g, &pinned), "a block a client maps went to another file");
    // The release of an open file that pins nothing frees nothing.
    fs.direct_unmap(9);
    assert_eq!(fill(&g, &mut off, 3), 0);
    fs.direct_unmap(7);
    let more = fill(&g, &mut off, 3);
    assert!(more >= 15, "the pinned megabyte came back ({more} more 64 KiB writes)");
    assert!(holds_any(&g, &pinned));
    assert!(udax::check::check(&fs, &mut |_, _| {}).is_clean());
}

#[test]
fn a_range_mapped_from_the_image_is_made_written_inside_eof() {
    let (_image, _table, fs) = published("filled", 16);
    let f = fs.open("/sparse", OpenOptions::create()).unwrap();
    f.write_at(&[5u8; 4096], 0).unwrap();
    f.set_len(10 * 4096 + 100).unwrap();
    fs.fallocate(f.ino(), 4 * 4096, 2 * 4096, FallocMode::Allocate { keep_size: true }).unwrap();
    let (before, _, _) = whole_map(&fs, f.ino());
    let reply = fs.direct_map(f.ino(), 1, 0, (0, 16 * 4096), false).unwrap();
    let (generation, size, extents) = whole_map(&fs, f.ino());
    assert_eq!((reply.generation, reply.size, size), (generation, 10 * 4096 + 100, 10 * 4096 + 100));
    assert_ne!(before, generation, "filling moved the generation");
    // Written up to the end of the EOF block, nothing past it.
    let mut at = 0;
    for e in &extents {
        assert_eq!((e.logical, e.flags & EXTENT_WRITTEN), (at, EXTENT_WRITTEN), "{extents:?}");
        at += e.blocks;
    }
    assert_eq!(at, 11);
    let mut back = vec![9u8; 11 * 4096];
    assert_eq!(f.read_at(&mut back, 0).unwrap(), 10 * 4096 + 100);
    assert!(back[..4096].iter().all(|&b| b == 5) && back[4096..10 * 4096 + 100].iter().all(|&b| b == 0));
    // Past EOF in its block, the image holds zeros too (what the mapping shows there).
    let image = Image::attach(&_image.0).unwrap();
    let last = extents.iter().find(|e| e.logical + e.blocks == 11).unwrap();
    let mut tail = vec![1u8; 4096 - 100];
    image.read(last.physical + (10 - last.logical) * 4096 + 100, &mut tail).unwrap();
    assert!(tail.iter().all(|&b| b == 0));
    assert!(udax::check::check(&fs, &mut |_, _| {}).is_clean());
    // A file mapped through the kernel is not mapped from the image as well.
    fs.note_kernel_map(f.ino(), true);
    assert_eq!(fs.direct_map(f.ino(), 2, 1, (0, 4096), false).unwrap_err().errno(), libc::EBUSY);
}

/// A private mapping of a sparse file filled every hole in it (a read-only mapping of a large
/// sparse file spent the whole device): asked to leave holes, the server allocates nothing and
/// still pins the written blocks.
#[test]
fn a_private_mapping_leaves_holes_and_unwritten_blocks_alone() {
    let (_image, _table, fs) = published("holes", 16);
    let f = fs.open("/sparse", OpenOptions::create()).unwrap();
    f.write_at(&[5u8; 4096], 0).unwrap();
    f.set_len(1 << 30).unwrap();
    fs.fallocate(f.ino(), 4 * 4096, 2 * 4096, FallocMode::Allocate { keep_size: true }).unwrap();
    let (before, _, map_before) = whole_map(&fs, f.ino());
    let free = fs.statfs().blocks_free;
    let reply = fs.direct_map(f.ino(), 1, 0, (0, 1 << 30), true).unwrap();
    let (generation, _, map_after) = whole_map(&fs, f.ino());
    assert_eq!((reply.generation, reply.flags), (before, udax::direct::MAP_LEAVE_HOLES));
    assert_eq!((generation, fs.statfs().blocks_free), (before, free), "nothing filled");
    assert_eq!(format!("{map_before:?}"), format!("{map_after:?}"));
    // The written block is pinned: truncated away, it is not reused until the unmap.
    let pinned = device_ranges(&f);
    f.set_len(0).unwrap();
    let g = fs.open("/filler", OpenOptions::create()).unwrap();
    let mut off = 0;
    fill(&g, &mut off, 3);
    assert!(!holds_any(&g, &pinned), "a pinned block went to another file");
    fs.direct_unmap(1);
    while g.write_at(&[3; 4096], off).is_ok() {
        off += 4096;
    }
    assert!(holds_any(&g, &pinned), "the pinned blocks came back");
    assert!(udax::check::check(&fs, &mut |_, _| {}).is_clean());
}
