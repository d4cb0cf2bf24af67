//! Shared words: a file of 64-bit words that several processes map and change with atomic
//! operations (the direct-access table, `crate::direct`). Not an image: nothing here is made
//! durable, and no word is ever handed out as a reference — only loads, stores and adds.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// A shared mapping of `len` words of a file (see the module docs). Removes its file when
/// dropped if it made it.
#[derive(Debug)]
pub struct SharedWords {
    base: NonNull<AtomicU64>,
    len: usize,
    made: Option<PathBuf>,
}

// SAFETY: the mapping is only reached through atomic operations on whole, aligned words
// (`word` checks the index), which any thread may perform at any time.
unsafe impl Send for SharedWords {}
// SAFETY: as above.
unsafe impl Sync for SharedWords {}

impl SharedWords {
    /// Makes a new file of `len` zero words at `path` (which must not exist) with permission
    /// bits `mode`, maps it shared, and removes it again when dropped.
    pub fn create(path: &Path, len: usize, mode: u32) -> Result<SharedWords> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
        let made = (|| {
            // The umask may have narrowed `mode`: whoever the caller meant to let in must get in.
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
            let bytes = len.checked_mul(8).ok_or(Error::InvalidArgument("shared table too large"))?;
            file.set_len(bytes as u64).map_err(|e| Error::io(format!("size {}", path.display()), e))?;
            Self::map(&file, len, true)
        })();
        match made {
            Ok(mut w) => {
                w.made = Some(path.into());
                Ok(w)
            }
            Err(e) => {
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }

    /// Maps an existing file's words, read-only or read-write as the caller may open it.
    pub fn open(path: &Path, writable: bool) -> Result<SharedWords> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let bytes = file.metadata().map_err(|e| Error::io(path.display(), e))?.len();
        let len = usize::try_from(bytes / 8).map_err(|_| Error::InvalidArgument("shared table too large"))?;
        Self::map(&file, len, writable)
    }

    fn map(file: &File, len: usize, writable: bool) -> Result<SharedWords> {
        if len == 0 {
            return Err(Error::InvalidArgument("shared table is empty"));
        }
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: `file` is open (for writing when `writable`) and at least `len * 8` bytes long
        // (its size was just set or read); no address hint; the result is checked before use.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len * 8, prot, libc::MAP_SHARED, file.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(Error::io("mmap shared table", std::io::Error::last_os_error()));
        }
        let base = NonNull::new(p.cast()).ok_or(Error::InvalidArgument("mmap returned null"))?;
        Ok(SharedWords { base, len, made: None })
    }

    /// The number of words.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no words (never, once made).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn word(&self, i: usize) -> Result<&AtomicU64> {
        if i >= self.len {
            return Err(Error::InvalidArgument("shared word past the table"));
        }
        // SAFETY: `i < len` was just checked, so the word lies inside the live mapping, which is
        // page-aligned (so every word is aligned). Other processes change it only with atomic
        // operations too, which is what `AtomicU64` exists for: the reference is to an atomic
        // cell, never to plain bytes.
        Ok(unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(i).cast()) })
    }

    /// Loads word `i` (sequentially consistent).
    pub fn load(&self, i: usize) -> Result<u64> {
        Ok(self.word(i)?.load(Ordering::SeqCst))
    }

    /// Stores `v` in word `i` (sequentially consistent).
    pub fn store(&self, i: usize, v: u64) -> Result<()> {
        self.word(i)?.store(v, Ordering::SeqCst);
        Ok(())
    }

    /// Stores `v` in word `i` and returns the old value (sequentially consistent: a full
    /// fence on x86).
    pub fn swap(&self, i: usize, v: u64) -> Result<u64> {
        Ok(self.word(i)?.swap(v, Ordering::SeqCst))
    }

    /// Stores `new` in word `i` if it holds `current`; returns whether it did.
    pub fn compare_exchange(&self, i: usize, current: u64, new: u64) -> Result<bool> {
        Ok(self.word(i)?.compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst).is_ok())
    }

    /// Adds `v` to word `i` (sequentially consistent, wrapping); returns the old value.
    pub fn fetch_add(&self, i: usize, v: u64) -> Result<u64> {
        Ok(self.word(i)?.fetch_add(v, Ordering::SeqCst))
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` are this value's own mapping, made in `map`; no reference to
        // it outlives `&self` borrows, which have ended.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len * 8) };
        if let Some(p) = &self.made {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "maps shared memory")]
    fn two_mappings_see_each_others_stores() {
        let path = std::env::temp_dir().join(format!("udax-shared-test-{}", std::process::id()));
        let a = SharedWords::create(&path, 16, 0o600).unwrap();
        let b = SharedWords::open(&path, false).unwrap();
        assert_eq!(b.len(), 16);
        a.store(3, 41).unwrap();
        assert_eq!(a.fetch_add(3, 1).unwrap(), 41);
        assert_eq!(b.load(3).unwrap(), 42);
        assert!(a.load(16).is_err() && b.load(usize::MAX).is_err());
        assert!(SharedWords::create(&path, 16, 0o600).is_err(), "an existing file is not taken over");
        drop(b);
        drop(a);
        assert!(!path.exists(), "the maker removes the file");
    }
}
