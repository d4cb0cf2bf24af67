//! Whole-image commands: mkfs, fsck, info.

use std::io::{Read, Write};
use std::path::Path;

use udax::{Device, Fs, MkfsOptions};

use crate::common::{
    close_image, describe, describe_open, open_for_reading, stderr_is_tty, CliResult, Failure, OutResult, Progress,
};
use crate::json;
use crate::size::human;
use crate::time::fmt_full;
use crate::{FsckArgs, InfoArgs, MkfsArgs};

/// Images larger than this get a progress bar while mkfs clears the inode table.
const MKFS_PROGRESS_MIN: u64 = 256 << 20;

/// fsck exit statuses (as e2fsck: 1 = errors corrected, 4 = errors left uncorrected, 8 =
/// operational error, 16 = usage error).
const FSCK_MENDED: u8 = 1;
const FSCK_FINDINGS: u8 = 4;
const FSCK_CANNOT_OPEN: u8 = 8;
pub const FSCK_USAGE: u8 = 16;

/// Whether the file at `path` already starts with the udax magic.
pub fn holds_udax(path: &Path) -> bool {
    let mut magic = [0u8; 8];
    match std::fs::File::open(path) {
        Ok(mut f) => f.read_exact(&mut magic).is_ok() && magic == udax::MAGIC,
        Err(_) => false,
    }
}

pub fn mkfs(a: &MkfsArgs) -> CliResult {
    const CMD: &str = "mkfs";
    let img = &a.image;
    let fail = |m: String| Failure::new(CMD, img.display(), m);
    let existing = std::fs::metadata(img).ok();
    if existing.is_some() && !a.force && holds_udax(img) {
        return Err(fail("already holds a udax file system; use --force to overwrite it".into()).errno(libc::EEXIST));
    }
    if existing.as_ref().is_some_and(|m| m.is_file() && m.len() > 0) && !a.force {
        let why = "is a file with data in it, not a udax image; use --force to overwrite it";
        return Err(fail(why.into()).errno(libc::EEXIST));
    }
    let size = match (a.size, &existing) {
        (Some(s), _) => s,
        (None, Some(m)) if m.is_file() && m.len() > 0 => m.len(),
        (None, Some(m)) if !m.is_file() => 0, // device-dax: the device's own size
        _ => return Err(fail("--size is required to create a new image (e.g. --size 1G)".into())),
    };
    let block_size = u32::try_from(a.block_size)
        .ok()
        .filter(|b| udax::BLOCK_SIZES.contains(b))
        .ok_or_else(|| fail(format!("block size {} is not one of 1024, 2048, 4096", a.block_size)))?;
    let opts = MkfsOptions {
        block_size,
        inodes: a.inodes.unwrap_or(0),
        journal_bytes: a.journal_size.unwrap_or(0),
        label: a.label.clone(),
        // Refusing an image without --force happened above, with the path in the message.
        overwrite: true,
    };
    if opts.label.len() > 31 {
        return Err(fail(format!("label {:?} is longer than 31 bytes", opts.label)));
    }
    // Check the geometry before touching the file, so a bad size leaves nothing behind.
    let table_bytes = if size > 0 {
        let g = udax::Geometry::plan(size, block_size, opts.inodes, opts.journal_bytes).map_err(|e| {
            match udax::Geometry::min_size(block_size, opts.inodes, opts.journal_bytes).filter(|&min| size < min) {
                Some(min) => {
                    fail(format!("{}: it needs at least {} ({min} bytes) with these options", describe(&e), human(min)))
                }
                None => fail(describe(&e)),
            }
            .errno(e.errno())
        })?;
        g.inode_count * udax::INODE_SIZE
    } else {
        0
    };
    let created = existing.is_none();
    let create = if a.sparse { Device::create_sparse } else { Device::create };
    let dev = create(img, size).map_err(|e| {
        if created {
            let _ = std::fs::remove_file(img);
        }
        match e.errno() {
            libc::ENOMEM => fail(format!(
                "{}: the kernel would not map {} ({size} bytes) into this process (address space, or \
                 the overcommit limit: vm.overcommit_memory){}",
                describe_open(&e),
                human(size),
                if created { "" } else { "; the old contents are untouched" }
            )),
            _ => fail(describe_open(&e)),
        }
        .errno(e.errno())
    })?;
    let dev_len = dev.len();
    let sparse = dev.is_sparse();
    let progress = Progress::new(stderr_is_tty() && dev_len > MKFS_PROGRESS_MIN, table_bytes, true, "mkfs");
    let fs = Fs::mkfs_with_progress(dev, &opts, &mut |done, total| progress.set(done, total)).map_err(|e| {
        if created {
            let _ = std::fs::remove_file(img);
        }
        fail(describe(&e)).errno(e.errno())
    })?;
    progress.done();
    let info = fs.info();
    close_image(CMD, img, fs)?;
    if a.json {
        let mut o = json::info(&info);
        o.insert("sparse".into(), sparse.into());
        return json::print(o);
    }
    let g = info.geometry;
    let mut o = std::io::stdout().lock();
    let rows = [
        ("size", format!("{} ({} bytes)", human(g.size_bytes), g.size_bytes)),
        ("block size", g.block_size.to_string()),
        ("inodes", format!("{} ({} bytes each, table at {:#x})", g.inode_count, udax::INODE_SIZE, g.inode_off)),
        ("journal", format!("{} at {:#x}", human(g.journal_len), udax::JOURNAL_RING_OFF)),
        (
            "data blocks",
            format!("{} ({}), from block {}", g.data_blocks, human(g.data_blocks * g.block_size), g.data_start),
        ),
        ("uuid", info.uuid.clone()),
        ("label", if info.label.is_empty() { "(none)".into() } else { info.label.clone() }),
        ("host space", if sparse { "taken as the image fills (--sparse)".into() } else { "reserved".into() }),
        ("MAP_SYNC", if info.device.map_sync { "yes".into() } else { "no".into() }),
        ("durability", info.durability.into()),
    ];
    writeln!(o, "Creating udax file system on {}", img.display()).out()?;
    print_rows(&mut o, &rows)
}

fn print_rows(o: &mut impl Write, rows: &[(&str, String)]) -> CliResult {
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (k, v) in rows {
        writeln!(o, "{:<w$} {v}", format!("{k}:")).out()?;
    }
    Ok(())
}

pub fn fsck(a: &FsckArgs) -> CliResult {
    let img = &a.image;
    // Checking only reads: a mounted image is checked from a snapshot (see `snapshot`).
    let fs = if a.repair {
        Fs::open_image(img).map_err(|e| {
            Failure::new("fsck", img.display(), describe_open(&e)).errno(e.errno()).code(FSCK_CANNOT_OPEN)
        })?
    } else {
        open_for_reading("fsck", img).map_err(|f| f.code(FSCK_CANNOT_OPEN))?.0
    };
    let check = |fs: &Fs| {
        let progress = Progress::new(stderr_is_tty(), fs.geometry().inode_count, false, "fsck: inodes");
        let report = udax::check::check(fs, &mut |done, total| progress.set(done, total));
        progress.done();
        report
    };
    let report = check(&fs);
    let mut repaired = None;
    if a.repair && !report.is_clean() {
        let repairs = fs.repair().map_err(|e| {
            let msg = format!("repair stopped: {}", describe(&e));
            Failure::new("fsck", img.display(), msg).errno(e.errno()).code(FSCK_FINDINGS)
        })?;
        repaired = Some((repairs, check(&fs)));
    }
    let clean = repaired.as_ref().map_or(&report, |(_, after)| after).is_clean();
    let statfs = fs.statfs();
    let mut o = std::io::stdout().lock();
    if a.json {
        let mut v = json::Object::new();
        v.insert("clean".into(), clean.into());
        v.insert("image".into(), json::path(img));
        v.insert("report".into(), report_json(&report, &statfs).into());
        if let Some((repairs, after)) = &repaired {
            v.insert("repairs".into(), serde_json::json!(repairs));
            v.insert("after".into(), report_json(after, &statfs).into());
        }
        writeln!(o, "{:#}", serde_json::Value::from(v)).out()?;
    } else {
        print_report(&mut o, img, &report)?;
        if let Some((repairs, after)) = &repaired {
            for r in repairs {
                writeln!(o, "repaired {}: ino {}: {}", r.kind, r.ino, r.detail).out()?;
            }
            writeln!(o, "{} repair(s) made; checking again", repairs.len()).out()?;
            print_report(&mut o, img, after)?;
        }
    }
    drop(o);
    close_image("fsck", img, fs).map_err(|f| f.code(FSCK_CANNOT_OPEN))?;
    match (clean, repaired.is_some()) {
        (true, false) => Ok(()),
        (true, true) => Err(Failure::status(FSCK_MENDED)),
        (false, _) => Err(Failure::status(FSCK_FINDINGS)),
    }
}

/// A check's report for `fsck --json`: its findings, what it counted, and the totals beside
/// them under the names info and df use.
fn report_json(r: &udax::check::Report, s: &udax::StatFs) -> json::Object {
    let mut o = json::Object::new();
    o.insert("findings".into(), serde_json::json!(r.findings));
    json::counts(&mut o, "inodes", s.inodes, r.inodes);
    json::counts(&mut o, "blocks", r.blocks_used + r.blocks_free, r.blocks_used);
    for (k, n) in [
        ("directories", r.directories),
        ("regular_files", r.regular_files),
        ("symlinks", r.symlinks),
        ("special_files", r.special_files),
        ("extents", r.extents),
    ] {
        o.insert(k.into(), n.into());
    }
    o
}

fn print_report(o: &mut impl Write, img: &Path, report: &udax::check::Report) -> CliResult {
    writeln!(
        o,
        "{}: {} inodes ({} directories, {} files, {} symlinks, {} special), {} extents; \
         blocks {} used, {} free",
        img.display(),
        report.inodes,
        report.directories,
        report.regular_files,
        report.symlinks,
        report.special_files,
        report.extents,
        report.blocks_used,
        report.blocks_free
    )
    .out()?;
    for f in &report.findings {
        let ino = f.ino.map_or_else(|| "-".to_string(), |i| i.to_string());
        let at = f.at.map_or_else(|| "-".to_string(), |at| format!("{at:#x}"));
        writeln!(o, "{}: ino {ino} at {at}: {}", f.kind, f.detail).out()?;
    }
    if report.is_clean() {
        writeln!(o, "clean").out()?;
    } else {
        writeln!(o, "{} problem(s) found", report.findings.len()).out()?;
    }
    Ok(())
}

pub fn info(a: &InfoArgs) -> CliResult {
    const CMD: &str = "info";
    let (fs, mounted) = open_for_reading(CMD, &a.image)?;
    let mut i = fs.info();
    close_image(CMD, &a.image, fs)?;
    // The image as named (a mounted image is read from a snapshot, which has no path of its own).
    i.device.path = Some(std::fs::canonicalize(&a.image).unwrap_or_else(|_| a.image.clone()));
    if let Some(dir) = &mounted {
        // The snapshot's own device (a memfd) says nothing about the image's: left out.
        return info_mounted(a, &i, dir);
    }
    if a.json {
        return json::print(json::info(&i));
    }
    let g = &i.geometry;
    let d = &i.device;
    let s = &i.statfs;
    let pct = |free: u64, all: u64| if all == 0 { 0.0 } else { free as f64 * 100.0 / all as f64 };
    let rows = [
        ("image", d.path.as_ref().map_or_else(|| "(anonymous memory)".into(), |p| p.display().to_string())),
        ("backend", d.backend.clone()),
        ("size", format!("{} ({} bytes)", human(g.size_bytes), g.size_bytes)),
        ("device size", format!("{} bytes", d.len_bytes)),
        ("block size", g.block_size.to_string()),
        ("journal", format!("{} ({} bytes)", human(g.journal_len), g.journal_len)),
        ("inode table", format!("{} inodes at {:#x}", g.inode_count, g.inode_off)),
        (
            "data area",
            format!("{} blocks from block {} (byte {:#x})", g.data_blocks, g.data_start, g.data_start * g.block_size),
        ),
        ("uuid", i.uuid.clone()),
        ("label", if i.label.is_empty() { "(none)".into() } else { i.label.clone() }),
        ("created", fmt_full(udax::Timespec { sec: i.mkfs_time, nsec: 0 })),
        ("map_sync", if d.map_sync { "yes".into() } else { "no".into() }),
        ("flush", d.flush.into()),
        ("nt copy", d.nt_copy.into()),
        (
            "blocks free",
            format!(
                "{} of {} ({:.1}%, {})",
                s.blocks_free,
                s.blocks,
                pct(s.blocks_free, s.blocks),
                human(s.blocks_free * s.block_size)
            ),
        ),
        ("inodes free", format!("{} of {} ({:.1}%)", s.inodes_free, s.inodes, pct(s.inodes_free, s.inodes))),
        ("name max", s.name_max.to_string()),
        (
            "recovery",
            format!("replayed {} journal record(s), {} bytes", i.recovery.replayed_records, i.recovery.replayed_bytes),
        ),
        ("mount", i.mount.to_string()),
        ("durability", i.durability.into()),
    ];
    print_rows(&mut std::io::stdout().lock(), &rows)
}

/// `info` of a mounted image, read from a snapshot: the file system's figures, and where it is
/// mounted in place of the device's (backend, MAP_SYNC, flush, durability) and of the mount's
/// times, which the copy cannot tell.
fn info_mounted(a: &InfoArgs, i: &udax::FsInfo, dir: &std::path::Path) -> CliResult {
    let mut v = json::info(i);
    for device_only in ["device", "durability", "mount"] {
        v.remove(device_only);
    }
    v.insert("mounted_on".into(), json::path(dir));
    if a.json {
        return json::print(v);
    }
    let (g, s) = (&i.geometry, &i.statfs);
    let rows = [
        ("image", a.image.display().to_string()),
        ("mounted on", format!("{} (read from a snapshot; device details show when unmounted)", dir.display())),
        ("size", format!("{} ({} bytes)", human(g.size_bytes), g.size_bytes)),
        ("block size", g.block_size.to_string()),
        ("inodes", format!("{} used of {}", s.inodes - s.inodes_free, s.inodes)),
        (
            "blocks",
            format!("{} used of {} ({} free)", s.blocks - s.blocks_free, s.blocks, human(s.blocks_free * s.block_size)),
        ),
        ("uuid", i.uuid.clone()),
        ("label", if i.label.is_empty() { "(none)".into() } else { i.label.clone() }),
    ];
    print_rows(&mut std::io::stdout().lock(), &rows)
}
