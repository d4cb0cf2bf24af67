//! The floor: what a durable store or load costs on mapped memory with no file system above it.
//!
//! A [`Floor`] is scratch memory of its own (an anonymous shared mapping, populated), never an
//! image a file system uses. Its stores go through the same device routines as udax's data and
//! journal paths — non-temporal copies or stores plus cache-line write-back, then a fence — so
//! `udax bench` can set each operation's cost beside the cost of the bytes it must move.

use super::Device;
use crate::error::Result;

/// Scratch mapped memory for measuring the floor under udax's operations (see the module docs).
#[derive(Debug)]
pub struct Floor {
    dev: Device,
}

impl Floor {
    /// `len_bytes` of anonymous shared memory, zero-filled and populated, so that no first-touch
    /// fault is ever measured.
    pub fn new(len_bytes: u64) -> Result<Floor> {
        let dev = Device::anonymous(len_bytes)?;
        dev.populate()?;
        Ok(Floor { dev })
    }

    /// Stores `src` at `off` as udax's data path does (non-temporal stores from 256 bytes up,
    /// else plain stores and write-back), then fences: the bytes are durable when it returns.
    pub fn store_durable(&self, off: u64, src: &[u8]) -> Result<()> {
        self.dev.write(off, src)?;
        self.dev.fence();
        Ok(())
    }

    /// Copies the bytes at `off` into `buf`, as udax's reads copy out of an image.
    pub fn load(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.dev.read(off, buf)
    }

    /// One durable commit word: an aligned, failure-atomic 8-byte store of `v` at `off`, its
    /// cache line written back, then a fence.
    pub fn commit_word(&self, off: u64, v: u64) -> Result<()> {
        self.dev.store_u64(off, v)?;
        self.dev.fence();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "maps shared memory")]
    fn stores_read_back() {
        let f = Floor::new(1 << 20).unwrap();
        let src: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 5) as u8).collect();
        f.store_durable(8192, &src).unwrap();
        f.store_durable(3, &src[..17]).unwrap();
        let mut back = vec![0u8; 4096];
        f.load(8192, &mut back).unwrap();
        assert_eq!(back, src);
        f.load(3, &mut back[..17]).unwrap();
        assert_eq!(&back[..17], &src[..17]);

        f.commit_word(64, 0x1122_3344_5566_7788).unwrap();
        let mut word = [0u8; 8];
        f.load(64, &mut word).unwrap();
        assert_eq!(u64::from_ne_bytes(word), 0x1122_3344_5566_7788);

        assert!(f.commit_word(65, 1).is_err(), "unaligned commit word");
        assert!(f.store_durable((1 << 20) - 8, &src[..16]).is_err(), "past the end");
        assert!(f.load(1 << 20, &mut word).is_err(), "past the end");
    }
}
