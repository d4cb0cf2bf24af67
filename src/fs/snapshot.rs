//! Snapshots: a copy of the image as it stands between two commits, for inspecting an image
//! that a mount holds (`udax ls`, `info`, `fsck -n` … on a mounted image).

use std::os::unix::fs::FileExt;

use super::Fs;
use crate::error::{Error, Result};
use crate::sync::lock;

/// Bytes copied per device read.
const CHUNK: usize = 1 << 20;

impl Fs {
    /// Writes a copy of the whole image into `to`, which it truncates first: every committed
    /// change and no part of one in flight, as a crash at that instant would leave it (a mount
    /// of the copy replays what the journal holds). Changes to metadata wait while the copy is
    /// taken, one pass over the device; file data overwritten meanwhile may show partly new, as
    /// reading a file while another process writes it does. Runs of zeros stay holes in `to`.
    pub fn snapshot(&self, to: &std::fs::File) -> Result<()> {
        let len = self.inner.dev.len();
        to.set_len(0).and_then(|()| to.set_len(len)).map_err(|e| Error::io("size the snapshot", e))?;
        let mut buf = vec![0u8; CHUNK];
        // Commits, with the entries they apply in place, and checkpoints all happen under the
        // journal lock: held, the device holds whole transactions only.
        let _journal = lock(&self.inner.journal);
        let mut off = 0;
        while off < len {
            let n = CHUNK.min((len - off) as usize);
            self.inner.dev.read(off, &mut buf[..n])?;
            if buf[..n].iter().any(|&b| b != 0) {
                to.write_all_at(&buf[..n], off).map_err(|e| Error::io("write the snapshot", e))?;
            }
            off += n as u64;
        }
        Ok(())
    }
}
