//! `udax extents` and `io bmap`: a file's extent map, in the manner of xfs_bmap.
//!
//! File offsets and device ranges are in 512-byte units, inclusive, as xfs_bmap prints them
//! (`[0..2047]` is the first MiB); TOTAL is the same count of 512-byte units and LENGTH the
//! bytes. Holes between extents, and from the last extent to EOF, are rows of their own.

use std::io::Write;
use std::path::Path;

use udax::mode;
use udax::{Error, ExtentInfo};

use crate::common::{with_image_read_only, CliResult, Failure, OutResult};
use crate::json;
use crate::ExtentsArgs;

/// xfs_bmap's unit: 512-byte "basic blocks".
const BB: u64 = 512;

/// One row: an extent, or a hole (`ext` is None).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    logical: u64,
    length: u64,
    ext: Option<ExtentInfo>,
}

/// Extents in logical order with the holes between them and, up to EOF rounded up to a whole
/// block, after them.
fn rows(exts: &[ExtentInfo], size: u64, block_size: u64) -> Vec<Row> {
    let mut out = Vec::with_capacity(exts.len() * 2 + 1);
    let mut at = 0u64;
    for e in exts {
        if e.logical > at {
            out.push(Row { logical: at, length: e.logical - at, ext: None });
        }
        out.push(Row { logical: e.logical, length: e.length, ext: Some(*e) });
        at = at.max(e.logical + e.length);
    }
    let eof = size.div_ceil(block_size) * block_size;
    if eof > at {
        out.push(Row { logical: at, length: eof - at, ext: None });
    }
    out
}

fn bb_range(start: u64, len: u64) -> String {
    format!("{}..{}", start / BB, (start + len).div_ceil(BB).saturating_sub(1))
}

/// Prints the map of `path` (`exts` from [`udax::Fs::extents`]): xfs_bmap's short form ("\t0:
/// [0..7]: 96..103") or, with `verbose`, a table with the state of each extent.
pub fn print_map(
    o: &mut impl Write,
    path: &Path,
    exts: &[ExtentInfo],
    size: u64,
    block_size: u64,
    verbose: bool,
) -> std::io::Result<()> {
    let rows = rows(exts, size, block_size);
    if rows.is_empty() {
        return writeln!(o, "{}: no extents", path.display());
    }
    writeln!(o, "{}:", path.display())?;
    let cells: Vec<[String; 6]> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (range, state) = match &r.ext {
                Some(e) => (bb_range(e.physical, e.length), e.state.to_string()),
                None => ("hole".to_string(), String::new()),
            };
            [
                format!("{i}:"),
                format!("[{}]:", bb_range(r.logical, r.length)),
                range,
                r.length.div_ceil(BB).to_string(),
                r.length.to_string(),
                state,
            ]
        })
        .collect();
    if !verbose {
        for c in &cells {
            writeln!(o, "\t{} {} {}", c[0], c[1], c[2])?;
        }
        return Ok(());
    }
    const HEAD: [&str; 6] = ["EXT:", "FILE-OFFSET", "BLOCK-RANGE", "TOTAL", "LENGTH", "STATE"];
    let w: Vec<usize> =
        (0..6).map(|k| cells.iter().map(|c| c[k].len()).chain([HEAD[k].len()]).max().unwrap_or(0)).collect();
    let line = |o: &mut dyn Write, c: [&str; 6]| {
        let s = format!(
            " {:>w0$} {:<w1$} {:<w2$} {:>w3$} {:>w4$} {}",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            c[5],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3],
            w4 = w[4],
        );
        writeln!(o, "{}", s.trim_end())
    };
    line(o, HEAD)?;
    for c in &cells {
        line(o, [&c[0], &c[1], &c[2], &c[3], &c[4], &c[5]])?;
    }
    Ok(())
}

pub fn run(a: &ExtentsArgs) -> CliResult {
    const CMD: &str = "extents";
    with_image_read_only(CMD, &a.image, |fs| {
        let p = &a.path;
        let err = |e: Error| Failure::fs(CMD, p, &e);
        let ino = fs.resolve(p, true).map_err(err)?;
        let st = fs.getattr(ino).map_err(err)?;
        if mode::is_dir(st.mode) {
            return Err(err(Error::IsDir));
        }
        if !mode::is_reg(st.mode) {
            return Err(Failure::new(CMD, p.display(), "not a regular file").errno(libc::EINVAL));
        }
        let exts = fs.extents(ino).map_err(err)?;
        if a.json {
            let v = serde_json::json!({ "path": json::path(p), "size": st.size, "extents": exts });
            return json::print(v);
        }
        print_map(&mut std::io::stdout().lock(), p, &exts, st.size, fs.statfs().block_size, true).out()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(logical: u64, physical: u64, length: u64, state: &'static str) -> ExtentInfo {
        ExtentInfo { logical, physical, length, state }
    }

    fn map(exts: &[ExtentInfo], size: u64, verbose: bool) -> String {
        let mut v = Vec::new();
        print_map(&mut v, Path::new("/f"), exts, size, 4096, verbose).unwrap();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn holes_between_and_after() {
        let exts = [ext(0, 1 << 20, 4096, "written"), ext(12288, 2 << 20, 8192, "unwritten")];
        assert_eq!(
            map(&exts, 40000, false),
            "/f:\n\t0: [0..7]: 2048..2055\n\t1: [8..23]: hole\n\t2: [24..39]: 4096..4111\n\t3: [40..79]: hole\n"
        );
        assert_eq!(
            map(&exts, 40000, true),
            "/f:\n\
             \x20EXT: FILE-OFFSET BLOCK-RANGE TOTAL LENGTH STATE\n\
             \x20  0: [0..7]:     2048..2055      8   4096 written\n\
             \x20  1: [8..23]:    hole           16   8192\n\
             \x20  2: [24..39]:   4096..4111     16   8192 unwritten\n\
             \x20  3: [40..79]:   hole           40  20480\n"
        );
        assert_eq!(map(&[], 0, true), "/f: no extents\n");
        assert_eq!(map(&[], 1, false), "/f:\n\t0: [0..7]: hole\n");
        // Preallocated past EOF (falloc -k): shown, and no trailing hole.
        assert_eq!(map(&[ext(0, 4096, 65536, "unwritten")], 0, false), "/f:\n\t0: [0..127]: 8..135\n");
    }
}
