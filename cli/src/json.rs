//! `--json`: one object per invocation, in one style for every command (README, "JSON output").
//!
//! A command prints exactly one JSON object on stdout, never a bare list: its report when it
//! succeeds (or ends with a verdict, as fsck with findings), else the error object
//! `{"error": {"errno": N, "message": "…"}}`, which [`Failure::exit`](crate::common::Failure::exit)
//! prints for every command; the exit status is the one without `--json`.
//!
//! - Times: RFC 3339 strings in UTC with nanoseconds, each with its integer nanoseconds since
//!   1970 beside it: `"mtime": "2025-11-29T15:14:03.123456789Z", "mtime_ns": 1764429243123456789`.
//! - Modes: the permission bits as an octal string, `"mode": "0644"`; the file type apart, in
//!   `"type"` (regular, directory, symlink, fifo, socket, char_device, block_device).
//! - Counts say what they count, with the same keys everywhere: `blocks_total`, `blocks_used`,
//!   `blocks_free`, `inodes_total`, `inodes_used`, `inodes_free`, `bytes_total`, …
//! - Sizes and offsets are integers in bytes; names and paths are strings (bytes that are not
//!   UTF-8 show as U+FFFD).

use std::io::Write;
use std::path::Path;

use serde_json::{json, Map, Value};
use udax::{FsInfo, Stat, StatFs, Timespec};

use crate::common::{type_key, CliResult, ErrorReport, OutResult};
use crate::time::{nanos, rfc3339};

pub type Object = Map<String, Value>;

/// Prints `v`, the command's one object, on stdout.
pub fn print(v: impl Into<Value>) -> CliResult {
    let v: Value = v.into();
    writeln!(std::io::stdout().lock(), "{v:#}").out()
}

/// `{"error": {"errno": N, "message": "…"}}`.
pub fn error(e: &ErrorReport) -> Value {
    json!({ "error": { "errno": e.errno, "message": e.message } })
}

/// Sets `key` to `t` in RFC 3339 and `key_ns` to its nanoseconds since 1970 (null past what an
/// i64 holds).
pub fn put_time(o: &mut Object, key: &str, t: Timespec) {
    o.insert(key.into(), rfc3339(t).into());
    o.insert(format!("{key}_ns"), nanos(t).map_or(Value::Null, Value::from));
}

/// Permission bits (set-ID and sticky included) as four octal digits: "0644", "4755".
pub fn mode(m: u32) -> String {
    format!("{:04o}", m & 0o7777)
}

/// A path or name as a JSON string.
pub fn text(b: &[u8]) -> Value {
    String::from_utf8_lossy(b).into_owned().into()
}

pub fn path(p: &Path) -> Value {
    p.to_string_lossy().into_owned().into()
}

/// A file's attributes, as `stat --json` and each `ls --json` entry show them.
pub fn stat(st: &Stat) -> Object {
    let mut o = Object::new();
    o.insert("ino".into(), st.ino.into());
    o.insert("generation".into(), st.generation.into());
    o.insert("type".into(), type_key(st.mode).into());
    o.insert("mode".into(), mode(st.mode).into());
    o.insert("nlink".into(), st.nlink.into());
    o.insert("uid".into(), st.uid.into());
    o.insert("gid".into(), st.gid.into());
    o.insert("size".into(), st.size.into());
    o.insert("allocated_bytes".into(), (st.blocks * 512).into());
    o.insert("blksize".into(), st.blksize.into());
    o.insert("rdev".into(), st.rdev.into());
    put_time(&mut o, "atime", st.atime);
    put_time(&mut o, "mtime", st.mtime);
    put_time(&mut o, "ctime", st.ctime);
    put_time(&mut o, "crtime", st.crtime);
    o
}

/// Space and inode counts, as info, df and fsck name them.
pub fn space(s: &StatFs) -> Object {
    let mut o = Object::new();
    o.insert("block_size".into(), s.block_size.into());
    counts(&mut o, "blocks", s.blocks, s.blocks - s.blocks_free);
    counts(&mut o, "bytes", s.blocks * s.block_size, (s.blocks - s.blocks_free) * s.block_size);
    counts(&mut o, "inodes", s.inodes, s.inodes - s.inodes_free);
    o
}

/// `WHAT_total`, `WHAT_used` and `WHAT_free`.
pub fn counts(o: &mut Object, what: &str, total: u64, used: u64) {
    o.insert(format!("{what}_total"), total.into());
    o.insert(format!("{what}_used"), used.into());
    o.insert(format!("{what}_free"), total.saturating_sub(used).into());
}

/// What `info --json` (and `mkfs --json`) report about an image.
pub fn info(i: &FsInfo) -> Object {
    let g = &i.geometry;
    let d = &i.device;
    let mut o = space(&i.statfs);
    o.insert("image".into(), d.path.as_deref().map_or(Value::Null, path));
    o.insert("uuid".into(), i.uuid.clone().into());
    o.insert("label".into(), i.label.clone().into());
    put_time(&mut o, "created", Timespec { sec: i.mkfs_time, nsec: 0 });
    o.insert("name_max".into(), i.statfs.name_max.into());
    o.insert("durability".into(), i.durability.into());
    o.insert(
        "geometry".into(),
        json!({
            "size_bytes": g.size_bytes,
            "block_size": g.block_size,
            "journal_bytes": g.journal_len,
            "inode_table_offset": g.inode_off,
            "inodes_total": g.inode_count,
            "data_start_block": g.data_start,
            "data_blocks": g.data_blocks,
            "xattr": g.xattr,
        }),
    );
    o.insert(
        "device".into(),
        json!({
            "backend": d.backend,
            "path": d.path.as_deref().map(Path::to_string_lossy),
            "size_bytes": d.len_bytes,
            "map_sync": d.map_sync,
            "flush": d.flush,
            "nt_copy": d.nt_copy,
        }),
    );
    o.insert(
        "recovery".into(),
        json!({ "replayed_records": i.recovery.replayed_records, "replayed_bytes": i.recovery.replayed_bytes }),
    );
    // How long each step of the mount took (`*_ns`), and what it went through.
    o.insert("mount".into(), serde_json::to_value(i.mount).unwrap_or(Value::Null));
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal_permission_bits() {
        assert_eq!(mode(udax::mode::S_IFREG | 0o644), "0644");
        assert_eq!(mode(udax::mode::S_IFDIR | 0o1777), "1777");
        assert_eq!(mode(udax::mode::S_IFREG | 0o4755), "4755");
        assert_eq!(mode(0), "0000");
    }

    #[test]
    fn times_come_with_their_nanoseconds() {
        let mut o = Object::new();
        put_time(&mut o, "mtime", Timespec { sec: -1, nsec: 250_000_000 });
        assert_eq!(o["mtime"], "1969-12-31T23:59:59.250000000Z");
        assert_eq!(o["mtime_ns"], -750_000_000);
        put_time(&mut o, "far", Timespec { sec: i64::MAX, nsec: 0 });
        assert_eq!(o["far_ns"], Value::Null);
    }

    #[test]
    fn counts_are_total_used_free() {
        let s = StatFs { block_size: 4096, blocks: 100, blocks_free: 40, inodes: 64, inodes_free: 60, name_max: 255 };
        let o = space(&s);
        assert_eq!(
            (o["blocks_total"].as_u64(), o["blocks_used"].as_u64(), o["blocks_free"].as_u64()),
            (Some(100), Some(60), Some(40))
        );
        assert_eq!(o["bytes_used"], 60 * 4096);
        assert_eq!(
            (o["inodes_total"].as_u64(), o["inodes_used"].as_u64(), o["inodes_free"].as_u64()),
            (Some(64), Some(4), Some(60))
        );
        let e = error(&ErrorReport { errno: 2, message: "/x: No such file or directory".into() });
        assert_eq!(e.to_string(), r#"{"error":{"errno":2,"message":"/x: No such file or directory"}}"#);
    }
}
