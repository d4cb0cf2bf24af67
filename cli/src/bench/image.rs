//! The image `udax bench --ops mount` mounts: many empty files in directories of 1,000, made once
//! per run through the library, outside the timing. A call is one `Fs::mount` of the unmounted
//! image; the unmount between calls is untimed.

use std::path::Path;

use udax::{Creds, Device, Fs, MkfsOptions, ROOT_INO};

use super::CMD;
use crate::common::{CliResult, Failure, Progress};

/// Files per directory.
const PER_DIR: u64 = 1000;

/// The many-file image: its device while unmounted, its file system while mounted.
pub struct ManyFiles {
    dev: Option<Device>,
    fs: Option<Fs>,
    files: u64,
    /// The last mount's steps, as it timed them.
    last: Option<udax::MountReport>,
}

fn fs_err(what: &str) -> impl Fn(udax::Error) -> Failure + '_ {
    move |e| Failure::fs(CMD, what, &e)
}

impl ManyFiles {
    /// Makes `files` empty files (directories `d0`, `d1`, … of 1,000 files `f0`, `f1`, …) in a
    /// populated image in `dir`, and unmounts it.
    pub fn build(dir: &Path, files: u64, progress: &Progress) -> CliResult<ManyFiles> {
        let path = dir.join("mount.udax");
        let dirs = files.div_ceil(PER_DIR);
        let inodes = files + dirs + 64;
        // Inode table, directory blocks with room to spare, journal and the rest.
        let bytes = (inodes * udax::INODE_SIZE + files * 64 + (64 << 20)).next_multiple_of(1 << 20);
        let dev = Device::create(&path, bytes).map_err(|e| Failure::fs(CMD, &path, &e))?;
        dev.populate().map_err(|e| Failure::fs(CMD, &path, &e))?;
        let opts = MkfsOptions { inodes, ..MkfsOptions::default() };
        let fs = Fs::mkfs(dev, &opts).map_err(|e| Failure::fs(CMD, &path, &e))?;
        let mut made = 0;
        for d in 0..dirs {
            if d % 10 == 0 {
                progress.message(format!("making an image of {files} files to mount: {made}"));
            }
            let parent = fs.mkdir(ROOT_INO, format!("d{d}").as_bytes(), 0o755, Creds::ROOT).map_err(fs_err("mkdir"))?;
            for f in 0..PER_DIR.min(files - made) {
                fs.create(parent.ino, format!("f{f}").as_bytes(), 0o644, Creds::ROOT).map_err(fs_err("create"))?;
                made += 1;
            }
        }
        let mut many = ManyFiles { dev: None, fs: Some(fs), files, last: None };
        many.unmount()?;
        Ok(many)
    }

    /// Files in the image.
    pub fn files(&self) -> u64 {
        self.files
    }

    /// The last timed mount's steps.
    pub fn last_report(&self) -> Option<udax::MountReport> {
        self.last
    }

    /// One timed call: mounts the image.
    pub fn mount(&mut self) -> CliResult {
        let dev = self.dev.take().ok_or_else(|| Failure::plain(CMD, "the image to mount is mounted"))?;
        let fs = Fs::mount(dev).map_err(fs_err("mount"))?;
        self.last = Some(fs.mount_report());
        self.fs = Some(fs);
        Ok(())
    }

    /// Unmounts the image if it is mounted (untimed).
    pub fn unmount(&mut self) -> CliResult {
        if let Some(fs) = self.fs.take() {
            let dev = fs.unmount().map_err(fs_err("unmount"))?;
            self.dev = Some(dev.ok_or_else(|| Failure::plain(CMD, "the mounted image is still in use"))?);
        }
        Ok(())
    }
}
