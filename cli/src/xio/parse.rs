//! The `udax io` command language: xfs_io-style verbs and their options, parsed into [`Op`]s.

use udax::{FallocMode, Prot, Share};

use crate::size::parse_size;

/// Default I/O buffer size, as xfs_io's.
pub(super) const BSIZE: u64 = 64 << 10;

/// One parsed command. `Mmap`'s `prot` is None when neither -r nor -w was given: the mapping
/// is then writable if the file was opened writable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Op {
    Pread { off: u64, len: u64, bsize: u64, verbose: bool, quiet: bool },
    Pwrite { off: u64, len: u64, bsize: u64, seed: u8, quiet: bool },
    Truncate { size: u64 },
    Falloc { off: u64, len: u64, mode: FallocMode },
    Seek { off: u64, data: bool, hole: bool, recurse: bool, start: bool },
    Bmap { verbose: bool },
    Fsync,
    Stat,
    Mmap { off: u64, len: u64, prot: Option<Prot>, share: Share },
    Mread { off: u64, len: u64, verbose: bool, quiet: bool },
    Mwrite { off: u64, len: u64, seed: u8, quiet: bool },
    Msync,
    Munmap,
    Stats,
    Help,
}

/// A verb: its name, argument synopsis, one-line help and parser.
pub(super) struct Verb {
    pub(super) name: &'static str,
    pub(super) usage: &'static str,
    pub(super) help: &'static str,
    pub(super) parse: fn(&[&str]) -> Result<Op, String>,
}

pub(super) const VERBS: &[Verb] = &[
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
        name: "falloc",
        usage: "[-k] off len",
        help: "allocates unwritten space (reads as zeros); -k keeps the size",
        parse: |a| parse_falloc(a, |keep_size| FallocMode::Allocate { keep_size }),
    },
    Verb {
        name: "fpunch",
        usage: "off len",
        help: "de-allocates space (punches a hole)",
        parse: |a| parse_falloc(a, |_| FallocMode::PunchHole),
    },
    Verb {
        name: "fzero",
        usage: "[-k] off len",
        help: "zeroes space; -k keeps the size",
        parse: |a| parse_falloc(a, |keep_size| FallocMode::ZeroRange { keep_size }),
    },
    Verb {
        name: "seek",
        usage: "-a | -d | -h [-r] [-s] off",
        help: "locates the next data and/or hole (-r: all to EOF, -s: print the start)",
        parse: parse_seek,
    },
    Verb { name: "bmap", usage: "[-v]", help: "prints the file's extent map", parse: parse_bmap },
    Verb {
        name: "fsync",
        usage: "",
        help: "makes the file durable across power loss",
        parse: |a| no_args(a, Op::Fsync),
    },
    Verb { name: "stat", usage: "", help: "shows the open file's attributes", parse: |a| no_args(a, Op::Stat) },
    Verb {
        name: "mmap",
        usage: "[-r|-w] [-p] off len",
        help: "maps a range of the file (-r read-only, -w read-write, -p private)",
        parse: parse_mmap,
    },
    Verb {
        name: "mread",
        usage: "[-v] [-q] off len",
        help: "loads a range of the file through the mapping",
        parse: parse_mread,
    },
    Verb {
        name: "mwrite",
        usage: "[-S byte] [-q] off len",
        help: "stores to a range of the file through the mapping (byte, default 0xcd)",
        parse: parse_mwrite,
    },
    Verb {
        name: "msync",
        usage: "",
        help: "makes the mapping's stores durable across power loss",
        parse: |a| no_args(a, Op::Msync),
    },
    Verb { name: "munmap", usage: "", help: "unmaps the current mapping", parse: |a| no_args(a, Op::Munmap) },
    Verb { name: "stats", usage: "", help: "shows the mmap fault-service counters", parse: |a| no_args(a, Op::Stats) },
    Verb { name: "help", usage: "", help: "lists the commands", parse: |_| Ok(Op::Help) },
];

/// Options a command was given, in order: (letter, value).
type Opts<'a> = Vec<(char, Option<&'a str>)>;

/// getopt(3) over a command's words: `spec` lists option letters, ':' after one that takes a
/// value ("vqb:"). Returns the options in order and the remaining operands.
pub(super) fn getopt<'a>(args: &[&'a str], spec: &str) -> Result<(Opts<'a>, Vec<&'a str>), String> {
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

pub(super) fn num(what: &str, s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| format!("bad {what}: {e}"))
}

pub(super) fn two_operands(rest: &[&str]) -> Result<(u64, u64), String> {
    match rest {
        [off, len] => Ok((num("offset", off)?, num("length", len)?)),
        _ => Err(format!("expected an offset and a length, got {} argument(s)", rest.len())),
    }
}

pub(super) fn bsize_of(v: &str) -> Result<u64, String> {
    match num("buffer size", v)? {
        0 => Err("bad buffer size: must be positive".into()),
        b if b > 1 << 30 => Err("bad buffer size: at most 1 GiB".into()),
        b => Ok(b),
    }
}

pub(super) fn parse_pread(args: &[&str]) -> Result<Op, String> {
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

pub(super) fn fill_byte(v: &str) -> Result<u8, String> {
    u8::try_from(num("fill byte", v)?).map_err(|_| format!("bad fill byte {v:?}: must be 0..=255"))
}

pub(super) fn parse_pwrite(args: &[&str]) -> Result<Op, String> {
    let (opts, rest) = getopt(args, "qS:b:")?;
    let (mut seed, mut quiet, mut bsize) = (0xcd, false, BSIZE);
    for (c, v) in opts {
        match (c, v) {
            ('q', _) => quiet = true,
            ('S', Some(v)) => seed = fill_byte(v)?,
            ('b', Some(v)) => bsize = bsize_of(v)?,
            _ => unreachable!("getopt only returns letters from the spec"),
        }
    }
    let (off, len) = two_operands(&rest)?;
    Ok(Op::Pwrite { off, len, bsize, seed, quiet })
}

/// `-w` anywhere asks for a writable mapping (xfs_io ORs the protection flags together).
pub(super) fn parse_mmap(args: &[&str]) -> Result<Op, String> {
    let (opts, rest) = getopt(args, "rwp")?;
    let (mut prot, mut share) = (None, Share::Shared);
    for (c, _) in opts {
        match c {
            'r' => prot = prot.or(Some(Prot::Read)),
            'w' => prot = Some(Prot::ReadWrite),
            'p' => share = Share::Private,
            _ => unreachable!("getopt only returns letters from the spec"),
        }
    }
    let (off, len) = two_operands(&rest)?;
    Ok(Op::Mmap { off, len, prot, share })
}

pub(super) fn parse_mread(args: &[&str]) -> Result<Op, String> {
    let (opts, rest) = getopt(args, "vq")?;
    let verbose = opts.iter().any(|&(c, _)| c == 'v');
    let quiet = opts.iter().any(|&(c, _)| c == 'q');
    let (off, len) = two_operands(&rest)?;
    Ok(Op::Mread { off, len, verbose, quiet })
}

pub(super) fn parse_mwrite(args: &[&str]) -> Result<Op, String> {
    let (opts, rest) = getopt(args, "qS:")?;
    let (mut seed, mut quiet) = (0xcd, false);
    for (c, v) in opts {
        match (c, v) {
            ('q', _) => quiet = true,
            ('S', Some(v)) => seed = fill_byte(v)?,
            _ => unreachable!("getopt only returns letters from the spec"),
        }
    }
    let (off, len) = two_operands(&rest)?;
    Ok(Op::Mwrite { off, len, seed, quiet })
}

pub(super) fn parse_truncate(args: &[&str]) -> Result<Op, String> {
    match args {
        [s] => Ok(Op::Truncate { size: num("size", s)? }),
        _ => Err(format!("expected one size, got {} argument(s)", args.len())),
    }
}

/// falloc, fpunch and fzero: `-k` (keep size) where the mode has it, then offset and length.
pub(super) fn parse_falloc(args: &[&str], mode: fn(bool) -> FallocMode) -> Result<Op, String> {
    let spec = if matches!(mode(false), FallocMode::PunchHole) { "" } else { "k" };
    let (opts, rest) = getopt(args, spec)?;
    let keep = opts.iter().any(|&(c, _)| c == 'k');
    let (off, len) = two_operands(&rest)?;
    Ok(Op::Falloc { off, len, mode: mode(keep) })
}

pub(super) fn parse_seek(args: &[&str]) -> Result<Op, String> {
    let (opts, rest) = getopt(args, "adhrs")?;
    let (mut data, mut hole, mut recurse, mut start) = (false, false, false, false);
    for (c, _) in opts {
        match c {
            'a' => (data, hole) = (true, true),
            'd' => data = true,
            'h' => hole = true,
            'r' => recurse = true,
            's' => start = true,
            _ => unreachable!("getopt only returns letters from the spec"),
        }
    }
    if !(data || hole) {
        return Err("needs -a, -d or -h".into());
    }
    match rest[..] {
        [off] => Ok(Op::Seek { off: num("offset", off)?, data, hole, recurse, start }),
        _ => Err(format!("expected one offset, got {} argument(s)", rest.len())),
    }
}

pub(super) fn parse_bmap(args: &[&str]) -> Result<Op, String> {
    let (opts, rest) = getopt(args, "v")?;
    if !rest.is_empty() {
        return Err(format!("takes no operands, got {:?}", rest.join(" ")));
    }
    Ok(Op::Bmap { verbose: !opts.is_empty() })
}

pub(super) fn no_args(args: &[&str], op: Op) -> Result<Op, String> {
    if args.is_empty() {
        Ok(op)
    } else {
        Err(format!("takes no arguments, got {:?}", args.join(" ")))
    }
}

/// Parses one command string into its verb's name and the operation.
pub(super) fn parse(cmd: &str) -> Result<Option<(&'static str, Op)>, String> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let Some((name, args)) = words.split_first() else { return Ok(None) };
    let verb = VERBS
        .iter()
        .find(|v| v.name == *name)
        .ok_or_else(|| format!("command \"{name}\" not found (\"help\" lists the commands)"))?;
    (verb.parse)(args).map(|op| Some((verb.name, op))).map_err(|e| format!("{name}: {e}\nusage: {name} {}", verb.usage))
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
    fn parses_space_commands() {
        let falloc = |off, len, mode| Some(("falloc", Op::Falloc { off, len, mode }));
        assert_eq!(parse("falloc 0 1m").unwrap(), falloc(0, 1 << 20, FallocMode::Allocate { keep_size: false }));
        assert_eq!(parse("falloc -k 4k 0x10").unwrap(), falloc(4096, 16, FallocMode::Allocate { keep_size: true }));
        assert_eq!(
            parse("fpunch 1k 2k").unwrap(),
            Some(("fpunch", Op::Falloc { off: 1024, len: 2048, mode: FallocMode::PunchHole }))
        );
        assert_eq!(
            parse("fzero -k 0 1").unwrap(),
            Some(("fzero", Op::Falloc { off: 0, len: 1, mode: FallocMode::ZeroRange { keep_size: true } }))
        );
        assert!(parse("fpunch -k 0 1").unwrap_err().contains("invalid option -k"));
        assert!(parse("falloc 0").unwrap_err().contains("usage: falloc [-k] off len"));
        let seek = |off, data, hole, recurse, start| Some(("seek", Op::Seek { off, data, hole, recurse, start }));
        assert_eq!(parse("seek -d 512").unwrap(), seek(512, true, false, false, false));
        assert_eq!(parse("seek -h 4k").unwrap(), seek(4096, false, true, false, false));
        assert_eq!(parse("seek -a -r 0").unwrap(), seek(0, true, true, true, false));
        assert_eq!(parse("seek -drs 0x10").unwrap(), seek(16, true, false, true, true));
        assert!(parse("seek 0").unwrap_err().contains("-a, -d or -h"));
        assert!(parse("seek -d").is_err());
        assert!(parse("seek -d 0 1").is_err());
        assert_eq!(parse("bmap").unwrap(), Some(("bmap", Op::Bmap { verbose: false })));
        assert_eq!(parse("bmap -v").unwrap(), Some(("bmap", Op::Bmap { verbose: true })));
        assert!(parse("bmap 0").is_err());
    }

    #[test]
    fn parses_mmap_commands() {
        let mmap = |off, len, prot, share| Some(("mmap", Op::Mmap { off, len, prot, share }));
        assert_eq!(parse("mmap 0 16k").unwrap(), mmap(0, 16384, None, Share::Shared));
        assert_eq!(parse("mmap -r 4k 1").unwrap(), mmap(4096, 1, Some(Prot::Read), Share::Shared));
        assert_eq!(parse("mmap -wp 0 1m").unwrap(), mmap(0, 1 << 20, Some(Prot::ReadWrite), Share::Private));
        assert_eq!(parse("mmap -w -r 0 1").unwrap(), mmap(0, 1, Some(Prot::ReadWrite), Share::Shared));
        assert!(parse("mmap 0").unwrap_err().contains("usage: mmap [-r|-w] [-p] off len"));
        assert!(parse("mmap -x 0 1").unwrap_err().contains("invalid option -x"));
        assert_eq!(
            parse("mread -v 4k 10").unwrap(),
            Some(("mread", Op::Mread { off: 4096, len: 10, verbose: true, quiet: false }))
        );
        assert_eq!(
            parse("mwrite -S 0x61 4096 10").unwrap(),
            Some(("mwrite", Op::Mwrite { off: 4096, len: 10, seed: 0x61, quiet: false }))
        );
        assert_eq!(
            parse("mwrite -q -S 97 0 1").unwrap(),
            Some(("mwrite", Op::Mwrite { off: 0, len: 1, seed: 97, quiet: true }))
        );
        assert_eq!(
            parse("mwrite 0 1").unwrap(),
            Some(("mwrite", Op::Mwrite { off: 0, len: 1, seed: 0xcd, quiet: false }))
        );
        assert!(parse("mwrite -S 256 0 1").unwrap_err().contains("fill byte"));
        assert_eq!(parse("msync").unwrap(), Some(("msync", Op::Msync)));
        assert_eq!(parse("munmap").unwrap(), Some(("munmap", Op::Munmap)));
        assert_eq!(parse("stats").unwrap(), Some(("stats", Op::Stats)));
        assert!(parse("stats -v").is_err());
    }
}
