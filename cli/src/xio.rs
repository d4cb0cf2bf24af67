//! `udax io`: xfs_io-style commands on one open file.
//!
//! Each `-c` string is split on whitespace into a verb and its arguments. Every command is
//! parsed before any runs (an unknown verb or a bad argument does nothing), then they run in
//! order on the one open file; a file-system error prints "verb: strerror" and the rest still
//! run, as in xfs_io, with exit status 1 at the end.
//!
//! Adding a verb: a variant of [`Op`], a row in [`VERBS`] (name, usage, help, parser) and an
//! arm in [`Session::exec`].

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use udax::{Error, File, OpenOptions};

use crate::common::{strerror, type_name, with_image, CliResult, Failure, OutResult};
use crate::size::{cvtstr, parse_size};
use crate::IoArgs;

pub const AFTER_HELP: &str = "\
Commands (-c \"help\" lists them too):
  pread [-v] [-q] [-b bsize] off len   read len bytes at off (-v: hexdump them)
  pwrite [-S byte] [-q] [-b bsize] off len
                                       write len bytes of byte (default 0xcd) at off
  truncate size                        set the file's size
  fsync                                make the file durable across power loss
  stat                                 show the inode number, type, size and blocks
  help                                 list the commands

Examples:
  udax io -f img /f -c \"pwrite -S 0xab 0 64k\" -c \"pread -v 0 32\"
  udax io img /f -c \"truncate 1M\" -c stat";

/// Default I/O buffer size, as xfs_io's.
const BSIZE: u64 = 64 << 10;

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Pread { off: u64, len: u64, bsize: u64, verbose: bool, quiet: bool },
    Pwrite { off: u64, len: u64, bsize: u64, seed: u8, quiet: bool },
    Truncate { size: u64 },
    Fsync,
    Stat,
    Help,
}

/// A verb: its name, argument synopsis, one-line help and parser.
struct Verb {
    name: &'static str,
    usage: &'static str,
    help: &'static str,
    parse: fn(&[&str]) -> Result<Op, String>,
}

const VERBS: &[Verb] = &[
    Verb {
        name: "pread",
        usage: "[-v] [-q] [-b bsize] off len",
        help: "reads a range of the file",
        parse: parse_pread,
    },
    Verb {
        name: "pwrite",
        usage: "[-S byte] [-q] [-b bsize] off len",
        help: "writes a range of the file (filled with byte, default 0xcd)",
        parse: parse_pwrite,
    },
    Verb { name: "truncate", usage: "size", help: "sets the file's size", parse: parse_truncate },
    Verb {
        name: "fsync",
        usage: "",
        help: "makes the file durable across power loss",
        parse: |a| no_args(a, Op::Fsync),
    },
    Verb { name: "stat", usage: "", help: "shows the open file's attributes", parse: |a| no_args(a, Op::Stat) },
    Verb { name: "help", usage: "", help: "lists the commands", parse: |_| Ok(Op::Help) },
];

/// Options a command was given, in order: (letter, value).
type Opts<'a> = Vec<(char, Option<&'a str>)>;

/// getopt(3) over a command's words: `spec` lists option letters, ':' after one that takes a
/// value ("vqb:"). Returns the options in order and the remaining operands.
fn getopt<'a>(args: &[&'a str], spec: &str) -> Result<(Opts<'a>, Vec<&'a str>), String> {
    let mut opts = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i];
        if a == "--" {
            i += 1;
            break;
        }
        if !a.starts_with('-') || a.len() == 1 {
            break;
        }
        for (j, c) in a[1..].char_indices() {
            let at = spec.find(c).ok_or_else(|| format!("invalid option -{c}"))?;
            if spec[at + c.len_utf8()..].starts_with(':') {
                let rest = &a[1 + j + c.len_utf8()..];
                let v = if !rest.is_empty() {
                    rest
                } else {
                    i += 1;
                    *args.get(i).ok_or_else(|| format!("option -{c} needs a value"))?
                };
                opts.push((c, Some(v)));
                break;
            }
            opts.push((c, None));
        }
        i += 1;
    }
    Ok((opts, args[i..].to_vec()))
}

fn num(what: &str, s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| format!("bad {what}: {e}"))
}

fn two_operands(rest: &[&str]) -> Result<(u64, u64), String> {
    match rest {
        [off, len] => Ok((num("offset", off)?, num("length", len)?)),
        _ => Err(format!("expected an offset and a length, got {} argument(s)", rest.len())),
    }
}

fn bsize_of(v: &str) -> Result<u64, String> {
    match num("buffer size", v)? {
        0 => Err("bad buffer size: must be positive".into()),
        b if b > 1 << 30 => Err("bad buffer size: at most 1 GiB".into()),
        b => Ok(b),
    }
}

fn parse_pread(args: &[&str]) -> Result<Op, String> {
    let (opts, rest) = getopt(args, "vqb:")?;
    let (mut verbose, mut quiet, mut bsize) = (false, false, BSIZE);
    for (c, v) in opts {
        match (c, v) {
            ('v', _) => verbose = true,
            ('q', _) => quiet = true,
            ('b', Some(v)) => bsize = bsize_of(v)?,
            _ => unreachable!("getopt only returns letters from the spec"),
        }
    }
    let (off, len) = two_operands(&rest)?;
    Ok(Op::Pread { off, len, bsize, verbose, quiet })
}

fn parse_pwrite(args: &[&str]) -> Result<Op, String> {
    let (opts, rest) = getopt(args, "qS:b:")?;
    let (mut seed, mut quiet, mut bsize) = (0xcd, false, BSIZE);
    for (c, v) in opts {
        match (c, v) {
            ('q', _) => quiet = true,
            ('S', Some(v)) => {
                seed =
                    u8::try_from(num("fill byte", v)?).map_err(|_| format!("bad fill byte {v:?}: must be 0..=255"))?
            }
            ('b', Some(v)) => bsize = bsize_of(v)?,
            _ => unreachable!("getopt only returns letters from the spec"),
        }
    }
    let (off, len) = two_operands(&rest)?;
    Ok(Op::Pwrite { off, len, bsize, seed, quiet })
}

fn parse_truncate(args: &[&str]) -> Result<Op, String> {
    match args {
        [s] => Ok(Op::Truncate { size: num("size", s)? }),
        _ => Err(format!("expected one size, got {} argument(s)", args.len())),
    }
}

fn no_args(args: &[&str], op: Op) -> Result<Op, String> {
    if args.is_empty() {
        Ok(op)
    } else {
        Err(format!("takes no arguments, got {:?}", args.join(" ")))
    }
}

/// Parses one command string into its verb's name and the operation.
fn parse(cmd: &str) -> Result<Option<(&'static str, Op)>, String> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let Some((name, args)) = words.split_first() else { return Ok(None) };
    let verb = VERBS
        .iter()
        .find(|v| v.name == *name)
        .ok_or_else(|| format!("command \"{name}\" not found (\"help\" lists the commands)"))?;
    (verb.parse)(args).map(|op| Some((verb.name, op))).map_err(|e| format!("{name}: {e}\nusage: {name} {}", verb.usage))
}

/// The open file and what the commands share.
struct Session {
    file: File,
    path: PathBuf,
    writable: bool,
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

impl Session {
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

pub fn run(a: &IoArgs) -> CliResult {
    const CMD: &str = "io";
    let lines: Vec<String> = if a.commands.is_empty() {
        let mut v = Vec::new();
        for l in std::io::stdin().lock().lines() {
            let l = l.map_err(|e| Failure::plain(CMD, format!("reading commands from stdin: {e}")))?;
            if !l.trim_start().starts_with('#') {
                v.push(l);
            }
        }
        v
    } else {
        a.commands.clone()
    };
    let mut ops = Vec::new();
    for l in &lines {
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
        let mut s = Session { file, path: a.path.clone(), writable: !a.read_only };
        let mut status = Ok(());
        for (name, op) in &ops {
            match s.exec(op) {
                Ok(()) => {}
                Err(CmdError::Fs(e)) => {
                    let _ = writeln!(std::io::stderr(), "{name}: {}", strerror(e.errno()));
                    status = Err(Failure::status(1));
                }
                Err(CmdError::Msg(m)) if m.is_empty() => return Err(Failure::status(0)),
                Err(CmdError::Msg(m)) => {
                    let _ = writeln!(std::io::stderr(), "{m}");
                    status = Err(Failure::status(1));
                }
            }
        }
        status
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(
            parse("pwrite -S 0xab 4k 1M").unwrap(),
            Some(("pwrite", Op::Pwrite { off: 4096, len: 1 << 20, bsize: BSIZE, seed: 0xab, quiet: false }))
        );
        assert_eq!(
            parse("  pread -vq -b4k 0 0x20 ").unwrap(),
            Some(("pread", Op::Pread { off: 0, len: 32, bsize: 4096, verbose: true, quiet: true }))
        );
        assert_eq!(
            parse("pwrite 0 10").unwrap(),
            Some(("pwrite", Op::Pwrite { off: 0, len: 10, bsize: BSIZE, seed: 0xcd, quiet: false }))
        );
        assert_eq!(parse("truncate 1G").unwrap(), Some(("truncate", Op::Truncate { size: 1 << 30 })));
        assert_eq!(parse("fsync").unwrap(), Some(("fsync", Op::Fsync)));
        assert_eq!(parse("").unwrap(), None);
    }

    #[test]
    fn rejects_bad_commands() {
        assert!(parse("frobnicate 1").unwrap_err().contains("\"frobnicate\" not found"));
        assert!(parse("pread 0").unwrap_err().starts_with("pread:"));
        assert!(parse("pread -x 0 1").unwrap_err().contains("invalid option -x"));
        assert!(parse("pwrite -S 256 0 1").unwrap_err().contains("fill byte"));
        assert!(parse("pwrite -S").unwrap_err().contains("needs a value"));
        assert!(parse("pwrite zz 1").unwrap_err().contains("bad offset"));
        assert!(parse("truncate").is_err());
        assert!(parse("fsync now").is_err());
        assert!(parse("pread -b 0 0 1").is_err());
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
