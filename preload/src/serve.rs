//! What the preload library does with a data call on a descriptor: serve it directly, or say
//! that the real call must run. Safe code; `preload` turns C arguments into these calls.

use std::sync::PoisonError;

use crate::fds;
use crate::once::Cached;
use udax_direct::Served;

/// Whether `UDAX_DIRECT_TRACE` is set: each call served or passed on is printed on stderr.
fn tracing() -> bool {
    static ON: Cached = Cached::new();
    ON.flag(|| std::env::var_os("UDAX_DIRECT_TRACE").is_some_and(|v| !v.is_empty() && v != "0"))
}

/// Prints one trace line, in one write(2) of its own, so lines of threads do not mix, and
/// without std's lock on stderr, which a thread of the parent may hold when a child is forked.
pub(crate) fn trace(what: std::fmt::Arguments<'_>) {
    if tracing() {
        let line = format!("udax-direct[{}]: {what}\n", std::process::id());
        crate::sys::write_stderr(line.as_bytes());
    }
}

/// Reads `buf.len()` bytes of `fd` at `off` directly: the bytes read, or `None` when the real
/// call must run (not a file of a udax mount, a server gone, a map that kept changing).
pub(crate) fn read_at(call: &str, fd: libc::c_int, buf: &mut [u8], off: u64) -> Option<usize> {
    let file = fds::direct(fd).filter(|f| f.reads())?;
    let served = {
        let mut cache = file.cache.lock().unwrap_or_else(PoisonError::into_inner);
        file.mount.read_at(crate::sys::borrow(fd)?, file.ino, &mut cache, buf, off)
    };
    outcome(call, fd, buf.len(), off, served)
}

/// What a direct call did, traced: the bytes, or `None` for the real call.
fn outcome(call: &str, fd: libc::c_int, len: usize, off: u64, served: std::io::Result<Served>) -> Option<usize> {
    match served {
        Ok(Served::Bytes(n)) => {
            trace(format_args!("{call}(fd {fd}, {len} at {off}): direct, {n}"));
            Some(n)
        }
        other => {
            trace(format_args!("{call}(fd {fd}, {len} at {off}): passed on ({other:?})"));
            None
        }
    }
}

/// Reads into `bufs` in turn from `off`, stopping at a short piece: the total, or `None` when
/// the first piece could not be served directly (a later one that cannot ends the read short).
pub(crate) fn read_vectored_at(call: &str, fd: libc::c_int, bufs: &mut [&mut [u8]], off: u64) -> Option<usize> {
    let mut done = 0usize;
    for (i, b) in bufs.iter_mut().enumerate() {
        match read_at(call, fd, b, off + done as u64) {
            Some(n) => {
                done += n;
                if n < b.len() {
                    break;
                }
            }
            None if i == 0 => return None,
            None => break,
        }
    }
    Some(done)
}

/// Writes `data` into `fd` at `off` directly (durable on return): the bytes written, or `None`
/// when the real call must run (not open for overwriting, a hole, growth, a server gone).
pub(crate) fn write_at(call: &str, fd: libc::c_int, data: &[u8], off: u64) -> Option<usize> {
    let file = fds::direct(fd).filter(|f| f.overwrites())?;
    let served = {
        let mut cache = file.cache.lock().unwrap_or_else(PoisonError::into_inner);
        file.mount.write_at(crate::sys::borrow(fd)?, file.ino, &mut cache, data, off)
    };
    outcome(call, fd, data.len(), off, served)
}
