//! Corrupt images never panic, hang, read out of bounds or allocate without bound: a proptest
//! damages a real image (bit flips biased toward metadata, zeroed blocks, truncation, plausible
//! values in on-media fields, journal records with valid checksums over garbage) and runs
//! `udax::robust::exercise` on it — mount, fsck, a walk, changes, remount, fsck. A tracking
//! allocator fails any case in which one allocation exceeds 8 MiB (the images are 1–2 MiB).
//! The deterministic tests below are the bugs found while building it (by this harness or by
//! reading the decoders it drives), each saying what broke.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::OnceLock;

use proptest::prelude::*;
use udax::layout::{RawCheckpoint, RawExtent, RawInode, EXTENT_IN_USE, JOURNAL_HEADER_OFF};
use udax::robust::{exercise, Mutation, PlantedEntry, RecordBody, Region, Template, Value};
use udax::{Creds, Device, Error, Fs, MkfsOptions};
use zerocopy::IntoBytes;

/// Largest single allocation a case may make: four times the largest template image.
const ALLOC_LIMIT: usize = 8 << 20;

struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to `System` unchanged; the bookkeeping only reads the layout.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as for `alloc`; `ptr` and `layout` come from this allocator, which is `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

/// Runs `exercise` on `image`; fails when the changes left a mounted image unmountable or a
/// clean one dirty ([`udax::robust::Outcome::violation`]), or on a huge allocation.
fn run(image: &[u8]) -> udax::robust::Outcome {
    LARGEST.with(|l| l.set(0));
    let out = exercise(image);
    let largest = LARGEST.with(|l| l.get());
    assert!(largest <= ALLOC_LIMIT, "one allocation of {largest} bytes");
    if let Some(v) = out.violation() {
        panic!("{v}");
    }
    out
}

fn template(block_size: u32) -> &'static Template {
    static SMALL: OnceLock<Template> = OnceLock::new();
    static LARGE: OnceLock<Template> = OnceLock::new();
    let cell = if block_size == 1024 { &SMALL } else { &LARGE };
    cell.get_or_init(|| Template::build(block_size).expect("template"))
}

fn region() -> impl Strategy<Value = Region> {
    prop_oneof![
        1 => Just(Region::Anywhere),
        1 => Just(Region::Superblock),
        2 => Just(Region::JournalHeader),
        3 => Just(Region::JournalRing),
        2 => Just(Region::InodeTable),
        5 => Just(Region::UsedInodes),
        4 => Just(Region::DirBlocks),
        4 => Just(Region::ExtentBlocks),
        1 => Just(Region::SymlinkBlocks),
        1 => Just(Region::FileData),
        3 => Just(Region::XattrBlocks),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let d = -64i16..64;
    prop_oneof![
        3 => (0u8..16).prop_map(Value::Small),
        1 => any::<u8>().prop_map(Value::Small),
        1 => Just(Value::AllOnes),
        1 => Just(Value::HighBit),
        1 => d.clone().prop_map(Value::SizeBytes),
        2 => d.clone().prop_map(Value::DataEnd),
        2 => d.clone().prop_map(Value::DataStart),
        2 => d.clone().prop_map(Value::Inodes),
        1 => d.clone().prop_map(Value::JournalLen),
        1 => (0u8..4).prop_map(Value::NearMax),
        1 => any::<u64>().prop_map(Value::Raw),
    ]
}

/// Where a planted record's entries aim: mostly where records may write (recovery refuses the
/// rest as a whole).
fn target() -> impl Strategy<Value = Region> {
    prop_oneof![
        1 => region(),
        6 => Just(Region::UsedInodes),
        2 => Just(Region::InodeTable),
        3 => Just(Region::DirBlocks),
        3 => Just(Region::ExtentBlocks),
        1 => Just(Region::SymlinkBlocks),
        1 => Just(Region::FileData),
        3 => Just(Region::XattrBlocks),
    ]
}

fn entry() -> impl Strategy<Value = PlantedEntry> {
    (
        target(),
        any::<u32>(),
        0u8..4,
        value(),
        proptest::option::weighted(0.2, proptest::collection::vec(any::<u8>(), 0..300)),
    )
        .prop_map(|(region, offset, width, value, bytes)| PlantedEntry {
            region,
            offset: offset.into(),
            width,
            value,
            bytes,
        })
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let off = any::<u32>().prop_map(u64::from);
    prop_oneof![
        6 => (region(), off.clone(), any::<u8>()).prop_map(|(region, offset, mask)| Mutation::Flip { region, offset, mask }),
        2 => (region(), off.clone(), any::<bool>()).prop_map(|(region, offset, block)| Mutation::Zero { region, offset, block }),
        1 => (0u64..8 << 20).prop_map(|len| Mutation::Truncate { len }),
        6 => (region(), off.clone(), 0u8..4, value())
            .prop_map(|(region, offset, width, value)| Mutation::Store { region, offset, width, value }),
        1 => (region(), off, proptest::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(region, offset, bytes)| Mutation::Splice { region, offset, bytes }),
        3 => (any::<bool>(), proptest::collection::vec(entry(), 1..6))
            .prop_map(|(after_chain, e)| Mutation::Record { after_chain, body: RecordBody::Entries(e) }),
        1 => (any::<bool>(), 0u32..4, proptest::collection::vec(any::<u8>(), 0..600)).prop_map(
            |(after_chain, entries, bytes)| Mutation::Record { after_chain, body: RecordBody::Garbage { entries, bytes } }
        ),
        1 => Just(Mutation::FixSuperblockCrc),
    ]
}

/// Cases of the proptest: 2,000 for a quick `cargo test`, 10,000 with `UDAX_LONG=1` (as
/// `.ci/run` sets); `UDAX_CORRUPT_CASES` runs any number (README: longer runs).
fn cases() -> u32 {
    let default = if std::env::var("UDAX_LONG").is_ok_and(|v| v == "1") { 10_000 } else { 2_000 };
    std::env::var("UDAX_CORRUPT_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Any damage to a real image: mount and fsck return (an error is fine), an image that
    /// mounts still mounts after changes, and a clean one stays clean.
    #[test]
    fn damaged_images_return_without_panic(
        small in any::<bool>(),
        muts in proptest::collection::vec(mutation(), 1..5),
    ) {
        let t = template(if small { 1024 } else { 4096 });
        run(&t.damaged(&muts));
    }
}

#[test]
fn the_undamaged_template_mounts_clean_and_survives_the_changes() {
    for bs in [1024, 4096] {
        // It holds records to replay and an orphan to free.
        let t = template(bs);
        let dev = Device::anonymous(t.image.len() as u64).unwrap();
        dev.write(0, &t.image).unwrap();
        let fs = Fs::mount(dev).unwrap();
        assert!(fs.recovery().replayed_records > 0);
        let slots_in_use =
            (1..=t.geometry.inode_count).filter(|&i| t.image[t.geometry.inode_at(i) as usize..][..4] != [0; 4]).count();
        assert_eq!(fs.inode_numbers().len(), slots_in_use - 1, "one orphan freed");
        let out = run(&t.image);
        assert!(out.refused.is_none(), "{:?}", out.refused);
        assert_eq!(out.findings, Some(vec![]));
        assert!(matches!(out.remount, Some(Ok(ref f)) if f.is_empty()), "{:?}", out.remount);
    }
}

/// The planting tool works: a record with a valid checksum whose entry sets an inode's mode to
/// garbage is replayed, and fsck names the damage (mount keeps the inode out of use).
#[test]
fn a_planted_record_is_replayed() {
    let t = template(1024);
    let ino2 = t.geometry.inode_off + 256;
    let body = RecordBody::Entries(vec![PlantedEntry {
        region: Region::InodeTable,
        offset: ino2 - t.geometry.inode_off,
        width: 2,
        value: Value::Raw(0xffff_ffff),
        bytes: None,
    }]);
    for after_chain in [false, true] {
        let out = run(&t.damaged(&[Mutation::Record { after_chain, body: body.clone() }]));
        assert_damaged(&out, 2, "inode mode");
    }
}

/// The image mounted and fsck reported inode `ino` as damaged, naming `what`.
#[track_caller]
fn assert_damaged(out: &udax::robust::Outcome, ino: u64, what: &str) {
    assert!(out.refused.is_none(), "{:?}", out.refused);
    let findings = out.findings.as_ref().expect("mounted");
    let hit = findings.iter().any(|f| f.kind == "damaged inode" && f.ino == Some(ino) && f.detail.contains(what));
    assert!(hit, "no damaged inode {ino} ({what}) in {findings:?}");
}

fn small_fs(size: u64) -> Fs {
    let opts = MkfsOptions { block_size: 4096, inodes: 64, ..Default::default() };
    Fs::mkfs(Device::anonymous(size).unwrap(), &opts).unwrap()
}

fn image_of(dev: &Device) -> Vec<u8> {
    let mut image = vec![0u8; dev.len() as usize];
    dev.read(0, &mut image).unwrap();
    image
}

/// A directory's size is checked against the blocks its extents own, but the extents were not
/// checked against the device: five extents each claiming the whole data area made mount
/// allocate five devices' worth of memory to read the directory (and with an overflow chain,
/// up to 16 TiB: an abort) before the double ownership was noticed.
#[test]
fn extents_claiming_more_than_the_device_are_corruption_not_a_huge_allocation() {
    let fs = small_fs(16 << 20);
    let ino = fs.mkdir(1, b"d", 0o755, Creds::ROOT).unwrap().ino;
    let geo = *fs.geometry();
    let dev = fs.unmount().unwrap().unwrap();
    let at = geo.inode_at(ino);
    let mut raw: RawInode = dev.read_obj(at).unwrap();
    let n = geo.data_blocks;
    for (i, slot) in raw.extents.iter_mut().enumerate() {
        *slot = RawExtent {
            logical: (i as u64 * n).into(),
            physical: geo.data_start.into(),
            len: (n as u32).into(),
            flags: EXTENT_IN_USE.into(),
        };
    }
    raw.size = (5 * n * geo.block_size).into();
    dev.write_obj(at, &raw).unwrap();
    let out = run(&image_of(&dev));
    assert_damaged(&out, ino, "extent map size");
}

/// The checkpoint is a log position, 64-byte aligned, and nothing else about it was checked: one
/// near 2^64 mounted, and the first commit overflowed `head + len` (a panic in debug builds, a
/// wrapped position in release ones). Checked in a slot (with a valid checksum and the later
/// sequence) and in the plain word an image from before the slots starts from.
#[test]
fn a_checkpoint_near_the_end_of_the_log_space_is_corruption() {
    let huge = u64::MAX - 63;
    let slots = JOURNAL_HEADER_OFF as usize + 16;
    let mut in_slot = template(1024).image.clone();
    in_slot[slots..slots + 16].copy_from_slice(RawCheckpoint::new(huge, 1000).as_bytes());
    let mut in_word = template(1024).image.clone();
    in_word[slots..slots + 32].fill(0);
    in_word[slots - 8..slots].copy_from_slice(&huge.to_le_bytes());
    for image in [in_slot, in_word] {
        let out = run(&image);
        assert!(matches!(out.refused, Some(Error::Corrupt { what: "journal checkpoint", .. })), "{:?}", out.refused);
    }
}

/// Mount frees orphans — inodes with no links, left by files unlinked while open — but took any
/// inode with nlink 0 for one: a damaged link count on the root freed the root directory (the
/// mount "succeeded" with no root, and the next mount refused the image), and on a named file it
/// freed the file under its entry. Only unnamed inodes are orphans; a named one with nlink 0 is
/// a wrong link count, which mount keeps and fsck reports.
#[test]
fn a_named_inode_with_no_links_is_not_freed_as_an_orphan() {
    let fs = small_fs(16 << 20);
    fs.write_file("/kept", b"still here").unwrap();
    let file = fs.lookup(1, b"kept").unwrap().ino;
    let geo = *fs.geometry();
    let dev = fs.unmount().unwrap().unwrap();
    for ino in [1, file] {
        dev.write(geo.inode_at(ino) + 4, &0u32.to_le_bytes()).unwrap();
    }
    let fs = Fs::mount(dev).unwrap();
    assert_eq!(fs.read_file("/kept").unwrap(), b"still here");
    let report = udax::check::check(&fs, &mut |_, _| {});
    let kinds: Vec<_> = report.findings.iter().map(|f| (f.kind, f.ino)).collect();
    assert_eq!(kinds, vec![("link count", Some(1)), ("link count", Some(file))]);
}

/// The root's parent field was never checked: "/.." named whatever inode it held (a file, or a
/// directory deep in the tree).
#[test]
fn a_root_with_another_parent_is_corruption() {
    let fs = small_fs(16 << 20);
    let sub = fs.mkdir(1, b"sub", 0o755, Creds::ROOT).unwrap().ino;
    let geo = *fs.geometry();
    let dev = fs.unmount().unwrap().unwrap();
    dev.write(geo.inode_at(1) + 104, &sub.to_le_bytes()).unwrap();
    let out = run(&image_of(&dev));
    assert!(matches!(out.refused, Some(Error::Corrupt { what: "root directory parent", .. })), "{:?}", out.refused);
}

/// A directory removed while open (an opendir handle) is an orphan like an unlinked open file,
/// but mount's tree check took it for a directory cut off from the root and refused the image
/// after a crash.
#[test]
fn a_directory_removed_while_open_is_an_orphan_after_a_crash() {
    let fs = small_fs(16 << 20);
    let d = fs.mkdir(1, b"d", 0o755, Creds::ROOT).unwrap().ino;
    fs.open_ino(d).unwrap();
    fs.rmdir(1, b"d").unwrap();
    let out = run(&image_of(fs.device()));
    assert!(out.refused.is_none(), "{:?}", out.refused);
    assert_eq!(out.findings, Some(vec![]));
}

fn findings(fs: &Fs) -> Vec<(&'static str, Option<u64>)> {
    udax::check::check(fs, &mut |_, _| {}).findings.iter().map(|f| (f.kind, f.ino)).collect()
}

fn remount(fs: Fs) -> Fs {
    Fs::mount(fs.unmount().unwrap().expect("last handle")).unwrap()
}

/// An entry naming a free inode is damage mount keeps (fsck reports it), but its number went
/// back into use: the next inode created got it — a directory under a file's entry, say — and the
/// next mount refused the image. Such numbers now stay out of use while mounted, and unlink
/// removes the dangling name (it used to say ENOENT for a name readdir lists).
#[test]
fn a_dangling_entry_never_names_a_new_inode_and_can_be_removed() {
    let fs = small_fs(16 << 20);
    let x = fs.create(1, b"f", 0o644, Creds::ROOT).unwrap().ino;
    let geo = *fs.geometry();
    let dev = fs.unmount().unwrap().unwrap();
    dev.write(geo.inode_at(x), &0u32.to_le_bytes()).unwrap();
    let fs = Fs::mount(dev).unwrap();
    assert_eq!(findings(&fs), vec![("dangling entry", Some(1))]);
    assert_ne!(fs.mkdir(1, b"d", 0o755, Creds::ROOT).unwrap().ino, x);
    let fs = remount(fs);
    assert_eq!(findings(&fs), vec![("dangling entry", Some(1))]);
    fs.unlink(1, b"f").unwrap();
    let fs = remount(fs);
    assert_eq!(findings(&fs), vec![]);
}

/// A file named twice with a link count of 1 mounts (fsck reports the count); unlinking one name
/// freed it under the other, and its number went to the next inode created, which the remaining
/// entry then named with the wrong type. The number now stays out of use until the next mount,
/// which finds a dangling entry (removable) instead of refusing the image.
#[test]
fn a_file_freed_under_a_second_name_keeps_its_number_out_of_use() {
    let fs = small_fs(16 << 20);
    let x = fs.create(1, b"a", 0o644, Creds::ROOT).unwrap().ino;
    fs.link(x, 1, b"b").unwrap();
    let geo = *fs.geometry();
    let dev = fs.unmount().unwrap().unwrap();
    dev.write(geo.inode_at(x) + 4, &1u32.to_le_bytes()).unwrap();
    let fs = Fs::mount(dev).unwrap();
    assert_eq!(findings(&fs), vec![("link count", Some(x))]);
    fs.unlink(1, b"a").unwrap();
    assert_ne!(fs.mkdir(1, b"d", 0o755, Creds::ROOT).unwrap().ino, x);
    let fs = remount(fs);
    assert_eq!(findings(&fs), vec![("dangling entry", Some(1))]);
    fs.unlink(1, b"b").unwrap();
    assert_eq!(findings(&remount(fs)), vec![]);
}
