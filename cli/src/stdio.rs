//! `put IMAGE - PATH` and `get IMAGE PATH -`: one regular file's bytes from stdin or to stdout,
//! as `cat > PATH` and `cat PATH` would move them.

use std::io::{Read, Write};
use std::path::Path;

use udax::{mode, Creds, Error, Fs, OpenOptions};

use crate::common::{with_image, with_image_read_only, CliResult, Failure, OutResult};
use crate::json;
use crate::{GetArgs, PutArgs};

/// Copy unit: one read of stdin or of the file per MiB.
const CHUNK: usize = 1 << 20;

/// Whether a host path argument is `-`, the standard stream.
pub fn is_stdio(p: &Path) -> bool {
    p.as_os_str() == "-"
}

/// Reads until `buf` is full or EOF.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What a stream copy moved, as `put --json` and `get --json` report a tree's.
fn report(image: &Path, source: &Path, destination: &Path, bytes: u64) -> serde_json::Value {
    serde_json::json!({
        "image": json::path(image),
        "source": json::path(source),
        "destination": json::path(destination),
        "files": 1,
        "directories": 0,
        "bytes": bytes,
    })
}

/// Stdin into the image file `a.path`: made (mode 0644) when missing, else emptied first and
/// rewritten, keeping its inode, owner and mode; a final symbolic link is followed. Runs of
/// zeros a MiB long stay holes.
pub fn put(a: &PutArgs) -> CliResult {
    const CMD: &str = "put";
    let dst = &a.path;
    let bytes = with_image(CMD, &a.image, |fs| {
        let err = |e: Error| Failure::fs(CMD, dst, &e);
        if fs.stat(dst).is_ok_and(|st| mode::is_dir(st.mode)) {
            let why = "Is a directory (stdin has no name to copy under: name the file, e.g. /dir/name)";
            return Err(Failure::new(CMD, dst.display(), why).errno(libc::EISDIR));
        }
        let opts = OpenOptions { truncate: true, ..OpenOptions::create() };
        let f = fs.open_as(dst, opts, Creds::current()).map_err(err)?;
        if !mode::is_reg(f.metadata().map_err(err)?.mode) {
            return Err(Failure::new(CMD, dst.display(), "not a regular file"));
        }
        let mut buf = vec![0u8; CHUNK];
        let (mut off, mut written_to) = (0u64, 0u64);
        let mut stdin = std::io::stdin().lock();
        loop {
            let n = read_full(&mut stdin, &mut buf).map_err(|e| Failure::io(CMD, "stdin", &e))?;
            if n == 0 {
                break;
            }
            if buf[..n].iter().any(|&b| b != 0) {
                if f.write_at(&buf[..n], off).map_err(err)? < n {
                    return Err(err(Error::NoSpace));
                }
                written_to = off + n as u64;
            }
            off += n as u64;
        }
        if off > written_to {
            f.set_len(off).map_err(err)?;
        }
        Ok(off)
    })?;
    if a.json {
        return json::print(report(&a.image, &a.host_path, dst, bytes));
    }
    Ok(())
}

/// The image file `a.path` (a final symbolic link followed) to stdout.
pub fn get(a: &GetArgs) -> CliResult {
    const CMD: &str = "get";
    if a.json {
        return Err(Failure::plain(CMD, "--json cannot go with -: stdout carries the file's bytes"));
    }
    let src = &a.path;
    with_image_read_only(CMD, &a.image, |fs| {
        let err = |e: Error| Failure::fs(CMD, src, &e);
        let ino = fs.resolve(src, true).map_err(err)?;
        let st = fs.getattr(ino).map_err(err)?;
        if mode::is_dir(st.mode) {
            let why = "Is a directory (- takes one regular file; give a host directory to copy a tree)";
            return Err(Failure::new(CMD, src.display(), why).errno(libc::EISDIR));
        }
        if !mode::is_reg(st.mode) {
            return Err(Failure::new(CMD, src.display(), "not a regular file"));
        }
        copy_out(fs, ino, src, &mut std::io::stdout().lock())
    })
}

/// Streams image file `ino` (named `src` in messages) into `o`.
fn copy_out(fs: &Fs, ino: u64, src: &Path, o: &mut impl Write) -> CliResult {
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    loop {
        let n = fs.read(ino, &mut buf, off).map_err(|e| Failure::fs("get", src, &e))?;
        if n == 0 {
            break;
        }
        o.write_all(&buf[..n]).out()?;
        off += n as u64;
    }
    o.flush().out()
}
