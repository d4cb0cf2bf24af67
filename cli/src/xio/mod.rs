//! `udax io`: xfs_io-style commands on one open file.
//!
//! Each `-c` string is split on whitespace into a verb and its arguments. Every command is
//! parsed before any runs (an unknown verb or a bad argument does nothing), then they run in
//! order on the one open file; a file-system error prints "verb: strerror" and the rest still
//! run, as in xfs_io, with exit status 1 at the end.
//!
//! `mmap` keeps one current mapping of the file (a new one replaces it); `mread`, `mwrite` and
//! `msync` go through it, at file offsets as in xfs_io. A load or store at or past the page
//! holding EOF raises SIGBUS, which kills `udax io`, as it kills xfs_io.
//!
//! Adding a verb: a variant of [`Op`], a row in [`VERBS`] (name, usage, help, parser) and an
//! arm in [`Session::exec`].

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use udax::{Error, File, Mapping, MmapStats, OpenOptions, Prot};

use crate::common::{strerror, type_name, with_image, CliResult, Failure, OutResult};
use crate::extents::print_map;
use crate::size::cvtstr;
use crate::IoArgs;

mod parse;

use parse::{parse, Op, BSIZE, VERBS};

pub const AFTER_HELP: &str = "\
Commands (-c \"help\" lists them too):
  pread [-v] [-q] [-b bsize] off len   read len bytes at off (-v: hexdump them)
  pwrite [-S byte] [-q] [-b bsize] off len
                                       write len bytes of byte (default 0xcd) at off
  truncate size                        set the file's size
  falloc [-k] off len                  preallocate (unwritten blocks that read as zeros);
                                       grows the size unless -k (keep size)
  fpunch off len                       punch a hole: free the blocks, zero partial ones
  fzero [-k] off len                   make the range read zeros; grows the size unless -k
  seek -a | -d | -h [-r] [-s] off      next data (-d), hole (-h) or both (-a) at or after
                                       off; -r all of them to EOF, -s also print the start
  bmap [-v]                            the extent map, xfs_bmap style (-v: the table of
                                       `udax extents`, with each extent's state)
  fsync                                make the file durable across power loss
  stat                                 show the inode number, type, size and blocks
  mmap [-r|-w] [-p] off len            map len bytes of the file at off (a multiple of 4 KiB),
                                       replacing the current mapping: -r read-only, -w
                                       read-write (default: as the file was opened), -p
                                       private (stores stay in memory), else shared
  mread [-v] [-q] off len              load len bytes at file offset off through the mapping
                                       (-v: hexdump them)
  mwrite [-S byte] [-q] off len        store len bytes of byte (default 0xcd) at file offset
                                       off through the mapping
  msync                                make the mapping's stores durable across power loss
  munmap                               unmap the current mapping
  stats                                the fault service's counters since the image was opened
  help                                 list the commands

A load or store through the mapping at or past the page holding EOF kills udax io with
SIGBUS, as with xfs_io; loads from holes get zeros, and the first store to one allocates it.

Examples:
  udax io -f img /f -c \"pwrite -S 0xab 0 64k\" -c \"pread -v 0 32\"
  udax io img /f -c \"truncate 1M\" -c stat
  udax io -f img /f -c \"falloc 0 1m\" -c \"pwrite 512k 4k\" -c \"bmap -v\" -c \"seek -a -r 0\"
  udax io -f img /f -c \"truncate 16k\" -c \"mmap 0 16k\" -c \"mwrite -S 0x61 4k 10\" -c stats
  udax io img /f -c \"mmap -r 0 16k\" -c \"mread -v 4k 16\"";

/// The open file and what the commands share.
struct Session {
    file: File,
    path: PathBuf,
    writable: bool,
    /// The current mapping (`mmap`), unmapped by `munmap`, the next `mmap` or the end.
    map: Option<Mapping>,
}

/// Why a command failed: a file-system error (printed as strerror) or a plain message.
enum CmdError {
    Fs(Error),
    Msg(String),
}

impl From<Error> for CmdError {
    fn from(e: Error) -> Self {
        CmdError::Fs(e)
    }
}

impl From<Failure> for CmdError {
    fn from(f: Failure) -> Self {
        CmdError::Msg(f.msg.unwrap_or_default())
    }
}

/// xfs_io's dump_buffer: "%08x:  " then 16 "%02x " then " " then isalnum-or-dot.
fn hexdump(o: &mut impl Write, offset: u64, data: &[u8]) -> std::io::Result<()> {
    for (i, line) in data.chunks(16).enumerate() {
        write!(o, "{:08x}:  ", offset + i as u64 * 16)?;
        for b in line {
            write!(o, "{b:02x} ")?;
        }
        write!(o, " ")?;
        let text: String = line.iter().map(|&b| if b.is_ascii_alphanumeric() { b as char } else { '.' }).collect();
        writeln!(o, "{text}")?;
    }
    Ok(())
}

/// xfs_io's timestr: "0.0012 sec" under a second, "HH:MM:SS.cc" above.
fn timestr(d: Duration) -> String {
    let s = d.as_secs();
    if s == 0 {
        format!("0.{:04} sec", d.subsec_micros() / 100)
    } else {
        format!("{:02}:{:02}:{:02}.{:02}", s / 3600, s / 60 % 60, s % 60, d.subsec_millis() / 10)
    }
}

/// xfs_io's report_io_times line.
fn io_times(o: &mut impl Write, bytes: u64, ops: u64, d: Duration) -> std::io::Result<()> {
    let secs = d.as_secs_f64().max(1e-9);
    writeln!(
        o,
        "{}, {ops} ops; {} ({}/sec and {:.4} ops/sec)",
        cvtstr(bytes as f64),
        timestr(d),
        cvtstr(bytes as f64 / secs),
        ops as f64 / secs
    )
}

/// Indexes into `seek`'s pairs: what SEEK_DATA and SEEK_HOLE find.
const DATA: usize = 0;
const HOLE: usize = 1;
const WHENCE: [&str; 2] = ["DATA", "HOLE"];

/// The counters of `stats`, in [`MmapStats`]'s field order (the flag as 0 or 1).
fn stat_lines(st: &MmapStats) -> [(&'static str, u64); 10] {
    let MmapStats {
        faults_zero_page,
        faults_first_store,
        faults_huge,
        faults_clustered,
        faults_sigbus,
        faults_mapped,
        faults_copied,
        pages_mapped_eagerly,
        pages_invalidated,
        user_mode_only,
    } = *st;
    [
        ("faults_zero_page", faults_zero_page),
        ("faults_first_store", faults_first_store),
        ("faults_huge", faults_huge),
        ("faults_clustered", faults_clustered),
        ("faults_sigbus", faults_sigbus),
        ("faults_mapped", faults_mapped),
        ("faults_copied", faults_copied),
        ("pages_mapped_eagerly", pages_mapped_eagerly),
        ("pages_invalidated", pages_invalidated),
        ("user_mode_only", u64::from(user_mode_only)),
    ]
}

impl Session {
    /// The current mapping, for `verb`.
    fn current(&self, verb: &str) -> Result<&Mapping, CmdError> {
        self.map.as_ref().ok_or_else(|| CmdError::Msg(format!("{verb}: no mapping; use mmap first")))
    }

    /// The current mapping and where file offset `off` lies in it, for `verb`; `[off, off+len)`
    /// must lie inside the mapping (EINVAL otherwise).
    fn mapped(&self, verb: &str, off: u64, len: u64) -> Result<(&Mapping, u64), CmdError> {
        let m = self.current(verb)?;
        let (start, end) = (m.offset(), m.offset() + m.len());
        if off < start || off.checked_add(len).is_none_or(|e| e > end) {
            return Err(CmdError::Msg(format!(
                "{verb}: range {off}:{len} is outside the mapping {start}:{}: {}",
                m.len(),
                strerror(libc::EINVAL)
            )));
        }
        Ok((m, off - start))
    }

    /// lseek(SEEK_DATA or SEEK_HOLE); None for ENXIO (at or past EOF, or no data follows).
    fn lseek(&self, at: u64, what: usize) -> Result<Option<u64>, Error> {
        let r = if what == DATA { self.file.seek_data(at) } else { self.file.seek_hole(at) };
        match r {
            Ok(x) => Ok(Some(x)),
            Err(Error::NoSuchOffset) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// xfs_io's seek: find which kind of region `off` starts, then alternate data and hole
    /// boundaries, printing the kinds asked for: the first of each, or with `recurse` all of
    /// them until EOF. ENXIO on the first lookup prints "EOF".
    fn seek(
        &self,
        o: &mut impl Write,
        off: u64,
        mut want: [bool; 2],
        recurse: bool,
        start: bool,
    ) -> Result<(), CmdError> {
        let bad = |from: u64, what: usize, got: u64| {
            CmdError::Msg(format!("Invalid seek result: lseek(<fd>, {from}, SEEK_{}) = {got}", WHENCE[what]))
        };
        let mut cur = HOLE;
        let mut res = if want[HOLE] { self.lseek(off, HOLE)? } else { None };
        if !want[HOLE] || (want[DATA] && res != Some(off)) {
            cur = DATA;
            res = self.lseek(off, DATA)?;
        }
        if let Some(r) = res.filter(|&r| r < off) {
            return Err(bad(off, cur, r));
        }
        writeln!(o, "{}", if start { "Whence\tStart\tResult" } else { "Whence\tResult" }).out()?;
        let mut from = off;
        let mut first = true;
        while want[DATA] || want[HOLE] {
            let Some(at) = res else {
                if first {
                    let s = if start { format!("{from}\t") } else { String::new() };
                    writeln!(o, "{}\t{s}EOF", WHENCE[cur]).out()?;
                }
                break;
            };
            if want[cur] {
                let s = if start { format!("{from}\t") } else { String::new() };
                writeln!(o, "{}\t{s}{at}", WHENCE[cur]).out()?;
            }
            if !recurse {
                want[cur] = false;
                if !(want[DATA] || want[HOLE]) {
                    break;
                }
            }
            cur ^= 1;
            from = at;
            res = self.lseek(from, cur)?;
            if let Some(r) = res.filter(|&r| r <= from) {
                return Err(bad(from, cur, r));
            }
            first = false;
        }
        Ok(())
    }

    fn exec(&mut self, op: &Op) -> Result<(), CmdError> {
        let mut o = std::io::stdout().lock();
        match *op {
            Op::Pread { off, len, bsize, verbose, quiet } => {
                let mut buf = vec![0u8; bsize.min(len).max(1) as usize];
                let (mut done, mut ops) = (0u64, 0u64);
                let start = Instant::now();
                while done < len {
                    let want = (len - done).min(bsize) as usize;
                    let n = self.file.read_at(&mut buf[..want], off + done)?;
                    ops += 1;
                    if verbose && !quiet {
                        hexdump(&mut o, off + done, &buf[..n]).out()?;
                    }
                    done += n as u64;
                    if n < want {
                        break;
                    }
                }
                let took = start.elapsed();
                if !quiet {
                    writeln!(o, "read {done}/{len} bytes at offset {off}").out()?;
                    io_times(&mut o, done, ops, took).out()?;
                }
            }
            Op::Pwrite { off, len, bsize, seed, quiet } => {
                let buf = vec![seed; bsize.min(len).max(1) as usize];
                let (mut done, mut ops) = (0u64, 0u64);
                let start = Instant::now();
                while done < len {
                    let want = (len - done).min(bsize) as usize;
                    let n = self.file.write_at(&buf[..want], off + done)?;
                    ops += 1;
                    done += n as u64;
                    if n < want {
                        break;
                    }
                }
                let took = start.elapsed();
                if !quiet {
                    writeln!(o, "wrote {done}/{len} bytes at offset {off}").out()?;
                    io_times(&mut o, done, ops, took).out()?;
                }
            }
            Op::Truncate { size } => self.file.set_len(size)?,
            Op::Falloc { off, len, mode } => self.file.fallocate(off, len, mode)?,
            Op::Seek { off, data, hole, recurse, start } => self.seek(&mut o, off, [data, hole], recurse, start)?,
            Op::Bmap { verbose } => {
                let exts = self.file.extents()?;
                let size = self.file.metadata()?.size;
                let block_size = self.file.fs().statfs().block_size;
                print_map(&mut o, &self.path, &exts, size, block_size, verbose).out()?;
            }
            Op::Fsync => self.file.sync_all()?,
            Op::Stat => {
                let st = self.file.metadata()?;
                let flags = if self.writable { "read-write" } else { "read-only" };
                writeln!(o, "fd.path = \"{}\"", self.path.display()).out()?;
                writeln!(o, "fd.flags = non-sync,non-direct,{flags}").out()?;
                writeln!(o, "stat.ino = {}", st.ino).out()?;
                writeln!(o, "stat.type = {}", type_name(st.mode, 1)).out()?;
                writeln!(o, "stat.size = {}", st.size).out()?;
                writeln!(o, "stat.blocks = {}", st.blocks).out()?;
            }
            Op::Mmap { off, len, prot, share } => {
                let prot = prot.unwrap_or(if self.writable { Prot::ReadWrite } else { Prot::Read });
                let m = self.file.mmap(off, len, prot, share)?;
                self.map = Some(m);
            }
            Op::Mread { off, len, verbose, quiet } => {
                let (m, at) = self.mapped("mread", off, len)?;
                let mut buf = vec![0u8; BSIZE.min(len).max(1) as usize];
                let (mut done, mut ops) = (0u64, 0u64);
                let start = Instant::now();
                while done < len {
                    let n = (len - done).min(BSIZE) as usize;
                    m.read_at(&mut buf[..n], at + done)?;
                    ops += 1;
                    if verbose && !quiet {
                        hexdump(&mut o, off + done, &buf[..n]).out()?;
                    }
                    done += n as u64;
                }
                let took = start.elapsed();
                if !quiet {
                    writeln!(o, "read {done}/{len} bytes at offset {off}").out()?;
                    io_times(&mut o, done, ops, took).out()?;
                }
            }
            Op::Mwrite { off, len, seed, quiet } => {
                let (m, at) = self.mapped("mwrite", off, len)?;
                let start = Instant::now();
                m.fill(at, len, seed)?;
                let took = start.elapsed();
                if !quiet {
                    writeln!(o, "wrote {len}/{len} bytes at offset {off}").out()?;
                    io_times(&mut o, len, 1, took).out()?;
                }
            }
            Op::Msync => self.current("msync")?.flush()?,
            Op::Munmap => {
                self.current("munmap")?;
                self.map = None;
            }
            Op::Stats => {
                for (name, value) in stat_lines(&self.file.fs().mmap_stats()) {
                    writeln!(o, "{name}: {value}").out()?;
                }
            }
            Op::Help => {
                for v in VERBS {
                    let syn = if v.usage.is_empty() { v.name.to_string() } else { format!("{} {}", v.name, v.usage) };
                    writeln!(o, "{syn} -- {}", v.help).out()?;
                }
            }
        }
        Ok(())
    }
}

/// Runs commands: those of `-c`, all checked before any runs (a script with a typo runs
/// nothing); or, without `-c`, each line of stdin as it is read, as xfs_io does, with a prompt
/// on a terminal: a line that does not parse is reported and the next one read.
pub fn run(a: &IoArgs) -> CliResult {
    const CMD: &str = "io";
    let mut ops = Vec::new();
    for l in &a.commands {
        if let Some(op) = parse(l).map_err(|e| Failure::plain(CMD, e))? {
            ops.push(op);
        }
    }
    with_image(CMD, &a.image, |fs| {
        let opts = if a.read_only {
            OpenOptions::read_only()
        } else if a.create {
            OpenOptions::create()
        } else {
            OpenOptions::read_write()
        };
        let file = fs.open(&a.path, opts).map_err(|e| Failure::fs(CMD, &a.path, &e))?;
        let mut s = Session { file, path: a.path.clone(), writable: !a.read_only, map: None };
        let mut status = Ok(());
        if !a.commands.is_empty() {
            for (name, op) in &ops {
                if !s.run_one(name, op, &mut status) {
                    break;
                }
            }
            return status;
        }
        let stdin = std::io::stdin();
        let prompt = std::io::IsTerminal::is_terminal(&stdin);
        let mut lines = stdin.lock().lines();
        loop {
            if prompt {
                let mut o = std::io::stdout().lock();
                write!(o, "udax io> ").out()?;
                o.flush().out()?;
            }
            let Some(line) = lines.next() else { break };
            let line = line.map_err(|e| Failure::plain(CMD, format!("reading commands from stdin: {e}")))?;
            if line.trim_start().starts_with('#') {
                continue;
            }
            match parse(&line) {
                Ok(Some((name, op))) => {
                    if !s.run_one(name, &op, &mut status) {
                        break;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = writeln!(std::io::stderr(), "{e}");
                    status = Err(Failure::status(1));
                }
            }
        }
        status
    })
}

impl Session {
    /// Runs one command, printing its failure as xfs_io does (and noting it in `status`);
    /// false when it asked to quit.
    fn run_one(&mut self, name: &str, op: &Op, status: &mut CliResult) -> bool {
        match self.exec(op) {
            Ok(()) => {}
            Err(CmdError::Fs(e)) => {
                let _ = writeln!(std::io::stderr(), "{name}: {}", strerror(e.errno()));
                *status = Err(Failure::status(1));
            }
            Err(CmdError::Msg(m)) if m.is_empty() => return false,
            Err(CmdError::Msg(m)) => {
                let _ = writeln!(std::io::stderr(), "{m}");
                *status = Err(Failure::status(1));
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_follow_the_struct() {
        let st = MmapStats { faults_zero_page: 3, pages_invalidated: 8, ..Default::default() };
        let lines = stat_lines(&st);
        assert_eq!(lines[0], ("faults_zero_page", 3));
        assert_eq!(lines[8], ("pages_invalidated", 8));
        let json = serde_json::to_value(st).unwrap();
        let fields = json.as_object().unwrap();
        assert_eq!(fields.len(), lines.len());
        for (name, value) in lines {
            let field = &fields[name];
            assert_eq!(field.as_u64().or(field.as_bool().map(u64::from)), Some(value), "{name}");
        }
    }

    #[test]
    fn dump_matches_xfs_io() {
        let mut v = Vec::new();
        let data: Vec<u8> = b"ABCDEFGHIJKLMNOP\xcd\xcd-z".to_vec();
        hexdump(&mut v, 0x10, &data).unwrap();
        assert_eq!(
            String::from_utf8(v).unwrap(),
            "00000010:  41 42 43 44 45 46 47 48 49 4a 4b 4c 4d 4e 4f 50  ABCDEFGHIJKLMNOP\n\
             00000020:  cd cd 2d 7a  ...z\n"
        );
    }

    #[test]
    fn every_verb_is_documented() {
        for v in VERBS {
            assert!(AFTER_HELP.contains(&format!("  {}", v.name)), "{} missing from the help", v.name);
        }
    }
}
