//! DESIGN.md's byte tables were written by hand beside the structs, and error sites spelled
//! offsets as numbers (`at + 104`) a third time. Offsets now come from `offset_of!`, and this
//! test holds every byte table of DESIGN.md "Format v1" to the struct it describes: each row's
//! offset and size, in order, must be a field's.

use udax::layout::{RawExtent, RawInode, RawJournalHeader, RawSuperblock, RawXattrHeader};
use zerocopy::FromZeros;

/// (offset, size) of each named field of `$t`, in the order given.
macro_rules! fields {
    ($t:ty; $($f:ident),+ $(,)?) => {{
        let v = <$t>::new_zeroed();
        vec![$((core::mem::offset_of!($t, $f), core::mem::size_of_val(&v.$f))),+]
    }};
}

/// The (offset, size) rows of the table under the DESIGN.md heading that starts with `heading`
/// (rows whose size is not a number, such as "…", end it).
fn table(design: &str, heading: &str) -> Vec<(usize, usize)> {
    let start = design.find(&format!("\n### {heading}")).unwrap_or_else(|| panic!("DESIGN.md has no {heading:?}"));
    let mut rows = Vec::new();
    for line in design[start + 1..].lines().skip(1) {
        if line.starts_with("### ") || line.starts_with("## ") {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 {
            continue;
        }
        match (cells[1].parse(), cells[2].parse()) {
            (Ok(off), Ok(size)) => rows.push((off, size)),
            _ if !rows.is_empty() => break,
            _ => {}
        }
    }
    rows
}

#[test]
fn design_byte_tables_match_the_structs() {
    let design = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/DESIGN.md")).unwrap();
    let checks = [
        (
            "Superblock",
            fields!(RawSuperblock; magic, version, block_size, features_compat, features_incompat,
                features_ro_compat, size_bytes, journal_len, inode_off, inode_count, data_start,
                data_blocks, root_ino, mkfs_time, uuid, label, reserved, crc),
        ),
        ("Journal header", fields!(RawJournalHeader; magic, checkpoint, slots, reserved)),
        (
            "Inode",
            fields!(RawInode; mode, nlink, uid, gid, size, generation, flags, mtime, ctime, atime,
                crtime, rdev, parent, ext_next, xattr, extents, lane),
        ),
        ("Extent", fields!(RawExtent; logical, physical, len, flags)),
        ("Extended-attribute block", fields!(RawXattrHeader; magic, count, reserved, owner)),
    ];
    for (heading, want) in checks {
        assert_eq!(table(&design, heading), want, "DESIGN.md's {heading} table");
    }
}

/// The check must fail on a table that is off by a row.
#[test]
fn a_wrong_table_is_caught() {
    let design = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/DESIGN.md")).unwrap();
    let broken = design.replacen("| 104 | 8 | parent", "| 100 | 8 | parent", 1);
    assert_ne!(broken, design, "the row to break is there");
    assert_ne!(
        table(&broken, "Inode"),
        fields!(RawInode; mode, nlink, uid, gid, size, generation, flags, mtime,
        ctime, atime, crtime, rdev, parent, ext_next, xattr, extents, lane)
    );
}
