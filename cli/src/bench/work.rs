//! What `udax bench` runs: the scratch directory, the three sides' files, and one call of each
//! operation on each side, with its untimed preparation and clean-up. The mapping operations
//! live in [`super::mapped`], the many-file image the mount is timed on in [`super::image`].

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use udax::{Creds, Device, Floor, Fs, MkfsOptions, OpenOptions};

use super::image::ManyFiles;
use super::mapped::Mapped;
use super::report::Notes;
use super::Op;
use crate::common::{CliResult, Failure, Progress};

use super::CMD;
const BLOCK: u64 = 4096;
const MIB: u64 = 1 << 20;
/// Bytes of a directory entry on the medium with a name of at most 16 bytes: one 32-byte unit
/// (DESIGN.md "Directories"). The floor of a listing copies this much per entry.
const DIRENT_BYTES: u64 = 32;

/// Where an operation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Raw mapped memory: the bytes moved, made durable, nothing else.
    Floor = 0,
    /// tmpfs through std::fs.
    Tmpfs = 1,
    /// The udax library on an image in /dev/shm.
    Udax = 2,
}

impl Side {
    pub const ALL: [Side; 3] = [Side::Floor, Side::Tmpfs, Side::Udax];
}

/// Sizes of the image and files.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// The image without the mapping operations' files (added when they are timed).
    image_bytes: u64,
    pub inodes: u64,
    /// The written file that overwrites, reads and the sequential operations use.
    data_bytes: u64,
    /// An appended file is cut back to empty when it would grow past this.
    pub append_max: u64,
    /// Entries of the directory readdir-10k lists.
    dir_entries: u64,
    /// The written file mmap-setup-1g maps.
    pub map_bytes: u64,
    /// The sparse files first-store-4k and first-store-2m store into (punched when used up).
    pub holes_4k: u64,
    pub holes_2m: u64,
    /// Files of the image the mount operation mounts.
    mount_files: u64,
}

impl Scale {
    pub const FULL: Scale = Scale {
        image_bytes: 512 * MIB,
        inodes: 262_144,
        data_bytes: 64 * MIB,
        append_max: 16 * MIB,
        dir_entries: 10_000,
        map_bytes: 1024 * MIB,
        holes_4k: 16 * MIB,
        holes_2m: 256 * MIB,
        mount_files: 1_000_000,
    };
    pub const QUICK: Scale = Scale {
        image_bytes: 32 * MIB,
        inodes: 4096,
        data_bytes: 4 * MIB,
        append_max: MIB,
        dir_entries: 1000,
        map_bytes: 8 * MIB,
        holes_4k: MIB,
        holes_2m: 4 * MIB,
        mount_files: 2000,
    };

    /// Bytes of the floor's memory.
    pub fn floor_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// The image for `ops`: the mapping operations' files and room for what they allocate.
    fn image_for(&self, ops: &[Op]) -> u64 {
        let has = |op| ops.contains(&op);
        let mut bytes = self.image_bytes;
        if has(Op::MmapSetup1g) {
            bytes += self.map_bytes;
        }
        if has(Op::FirstStore4k) {
            bytes += 2 * self.holes_4k;
        }
        if has(Op::FirstStore2m) {
            bytes += 2 * self.holes_2m;
        }
        bytes
    }
}

/// A scratch directory in /dev/shm (else the temporary directory), removed with everything in
/// it when dropped.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn new() -> CliResult<Scratch> {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() { base.to_path_buf() } else { std::env::temp_dir() };
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let dir = base.join(format!("udax-bench.{}.{nanos}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| Failure::io(CMD, &dir, &e))?;
        Ok(Scratch { dir })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The three sides' files and the state the operations carry from call to call.
pub struct Workload {
    scale: Scale,
    floor: Floor,
    fs: Fs,
    udax_data: udax::File,
    udax_append: udax::File,
    tmpfs_data: std::fs::File,
    tmpfs_append: std::fs::File,
    /// tmpfs's directory for the metadata operations (udax's is `/m`), and a descriptor of it
    /// for the operations by directory.
    tmpfs_dir: PathBuf,
    tmpfs_dirfd: OwnedFd,
    /// udax's `/m` by inode, and who creates there (found once, as a server that knows its
    /// caller passes it).
    m_ino: u64,
    creds: Creds,
    /// Bytes appended so far, per side.
    appended: [u64; 3],
    buf: Vec<u8>,
    /// The name the next metadata call uses, made before it is timed.
    name: PathBuf,
    to: PathBuf,
    /// The same for the calls by directory.
    cname: CString,
    /// readdir-10k's directory: udax's inode, tmpfs's path.
    listing: Option<(u64, PathBuf)>,
    mapped: Option<Mapped>,
    many: Option<ManyFiles>,
}

fn fs_err(what: &str) -> impl Fn(udax::Error) -> Failure + '_ {
    move |e| Failure::fs(CMD, what, &e)
}

fn io_err(what: &Path) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure::io(CMD, what, &e)
}

fn errno_err(what: &Path) -> impl Fn(rustix::io::Errno) -> Failure + '_ {
    move |e| Failure::io(CMD, what, &e.into())
}

/// The name call `i` by directory creates.
fn cname(i: u64) -> CString {
    CString::new(format!("c{i}")).unwrap_or_default()
}

impl Workload {
    /// Makes the udax image, the tmpfs files and the floor in `scratch`, writes the data files
    /// whole (so overwrites and reads meet written blocks), and prepares what the operations in
    /// `ops` beyond the common ones need.
    pub fn new(scratch: &Scratch, scale: Scale, ops: &[Op], progress: &Progress) -> CliResult<Workload> {
        let image = scratch.dir.join("bench.udax");
        progress.message("making the image".into());
        let dev = Device::create(&image, scale.image_for(ops)).map_err(|e| Failure::fs(CMD, &image, &e))?;
        // As the memory of a pmem or CXL device is present: no first-touch faults measured.
        dev.populate().map_err(|e| Failure::fs(CMD, &image, &e))?;
        let opts = MkfsOptions { inodes: scale.inodes, ..MkfsOptions::default() };
        let fs = Fs::mkfs(dev, &opts).map_err(|e| Failure::fs(CMD, &image, &e))?;
        let floor = Floor::new(scale.data_bytes).map_err(fs_err("floor"))?;
        let fill: Vec<u8> = (0..MIB).map(|i| (i * 31 + 7) as u8).collect();
        let udax_data = fs.open("/data", OpenOptions::create()).map_err(fs_err("/data"))?;
        let udax_append = fs.open("/append", OpenOptions::create()).map_err(fs_err("/append"))?;
        let m_ino = fs.mkdir_path("/m", 0o755).map_err(fs_err("/m"))?.ino;
        fs.open("/m/stat", OpenOptions::create()).map_err(fs_err("/m/stat"))?;
        fs.open("/m/rename-a", OpenOptions::create()).map_err(fs_err("/m/rename-a"))?;
        let tmpfs_dir = scratch.dir.join("m");
        std::fs::create_dir(&tmpfs_dir).map_err(io_err(&tmpfs_dir))?;
        for name in ["stat", "rename-a"] {
            let p = tmpfs_dir.join(name);
            std::fs::File::create(&p).map_err(io_err(&p))?;
        }
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let tmpfs_dirfd = rustix::fs::open(&tmpfs_dir, dir_flags, Mode::empty()).map_err(errno_err(&tmpfs_dir))?;
        let tdata = scratch.dir.join("data");
        let tmpfs_data = std::fs::File::create_new(&tdata).map_err(io_err(&tdata))?;
        let tappend = scratch.dir.join("append");
        let tmpfs_append = std::fs::File::create_new(&tappend).map_err(io_err(&tappend))?;
        for off in (0..scale.data_bytes).step_by(MIB as usize) {
            udax_data.write_at(&fill, off).map_err(fs_err("/data"))?;
            tmpfs_data.write_all_at(&fill, off).map_err(io_err(&tdata))?;
            floor.store_durable(off, &fill).map_err(fs_err("floor"))?;
        }
        let listing = match ops.contains(&Op::Readdir10k) {
            true => Some(listing(&fs, scratch, scale.dir_entries, progress)?),
            false => None,
        };
        let mapped = Mapped::new(&fs, scratch.dir(), scale, ops, progress)?;
        let many = match ops.contains(&Op::Mount) {
            true => Some(ManyFiles::build(scratch.dir(), scale.mount_files, progress)?),
            false => None,
        };
        Ok(Workload {
            scale,
            floor,
            fs,
            udax_data,
            udax_append,
            tmpfs_data,
            tmpfs_append,
            tmpfs_dir,
            tmpfs_dirfd,
            m_ino,
            creds: Creds::current(),
            appended: [0; 3],
            buf: fill,
            name: PathBuf::new(),
            to: PathBuf::new(),
            cname: CString::default(),
            listing,
            mapped,
            many,
        })
    }

    /// The sizes in use.
    pub fn scale(&self) -> Scale {
        self.scale
    }

    /// The udax file system the operations run on.
    pub fn fs(&self) -> &Fs {
        &self.fs
    }

    /// Whether `op` has a figure on `side`: no floor for a mount or an mmap setup (nothing to
    /// move), no tmpfs for a mount; tmpfs's mappings are reached through the device's raw
    /// access, which only a build with the `crash-test` feature has.
    pub fn has(op: Op, side: Side) -> bool {
        match (op, side) {
            (Op::Mount, Side::Floor | Side::Tmpfs) | (Op::MmapSetup1g, Side::Floor) => false,
            (Op::MmapSetup1g | Op::FirstStore4k | Op::FirstStore2m, Side::Tmpfs) => cfg!(feature = "crash-test"),
            _ => true,
        }
    }

    /// What the report says beside the figures.
    pub fn notes(&self) -> Notes {
        let mut notes = Notes::default();
        if let Some(m) = &self.many {
            notes.mount_files = Some(m.files());
            notes.mount_report = m.last_report();
        }
        if self.listing.is_some() && self.scale.dir_entries != 10_000 {
            notes.per_op.push((Op::Readdir10k, format!("{} entries", self.scale.dir_entries)));
        }
        if let Some(m) = &self.mapped {
            notes.per_op.extend(m.notes());
        }
        notes
    }

    /// The offset of the `i`th 4 KiB block a random-access call touches: spread over the data
    /// file, the same sequence on every side.
    fn block_off(&self, i: u64) -> u64 {
        let blocks = self.scale.data_bytes / BLOCK;
        (i.wrapping_mul(2_654_435_761) % blocks) * BLOCK
    }

    /// The offset of the `i`th 1 MiB piece of a sequential pass over the data file.
    fn seq_off(&self, i: u64) -> u64 {
        (i * MIB) % self.scale.data_bytes
    }

    /// The path metadata call `i` names on `side`.
    fn path(&self, side: Side, name: &str) -> PathBuf {
        match side {
            Side::Udax => Path::new("/m").join(name),
            Side::Tmpfs | Side::Floor => self.tmpfs_dir.join(name),
        }
    }

    /// Untimed preparation of call `i`: names made, the file to unlink created, an appended file
    /// cut back to empty when full, a mapping's used-up holes punched again, the image to mount
    /// unmounted.
    pub fn before(&mut self, op: Op, side: Side, i: u64) -> CliResult {
        match op {
            Op::Create | Op::Unlink => self.name = self.path(side, &format!("f{i}")),
            Op::CreateIno => self.cname = cname(i),
            Op::Rename => {
                let (from, to) = if i % 2 == 0 { ("rename-a", "rename-b") } else { ("rename-b", "rename-a") };
                (self.name, self.to) = (self.path(side, from), self.path(side, to));
            }
            Op::Append4k if self.appended[side as usize] + BLOCK > self.scale.append_max => {
                self.appended[side as usize] = 0;
                match side {
                    Side::Udax => self.udax_append.set_len(0).map_err(fs_err("/append"))?,
                    Side::Tmpfs => self.tmpfs_append.set_len(0).map_err(io_err(Path::new("append")))?,
                    Side::Floor => {}
                }
            }
            Op::MmapSetup1g | Op::FirstStore4k | Op::FirstStore2m => self.mapped()?.before(op, side, i)?,
            Op::Mount => self.many()?.unmount()?,
            _ => {}
        }
        match (op, side) {
            (Op::Unlink, Side::Udax) => {
                drop(self.fs.open(&self.name, OpenOptions::create()).map_err(fs_err("unlink"))?)
            }
            (Op::Unlink, Side::Tmpfs) => drop(std::fs::File::create(&self.name).map_err(io_err(&self.name))?),
            _ => {}
        }
        Ok(())
    }

    fn mapped(&mut self) -> CliResult<&mut Mapped> {
        self.mapped.as_mut().ok_or_else(|| Failure::plain(CMD, "the mapping operations were not prepared"))
    }

    fn many(&mut self) -> CliResult<&mut ManyFiles> {
        self.many.as_mut().ok_or_else(|| Failure::plain(CMD, "the image to mount was not made"))
    }

    /// One timed call of `op` on `side`.
    pub fn step(&mut self, op: Op, side: Side, i: u64) -> CliResult {
        match op {
            Op::MmapSetup1g | Op::FirstStore4k | Op::FirstStore2m => {
                let floor = &self.floor;
                let mapped = self.mapped.as_mut().ok_or_else(|| Failure::plain(CMD, "no mapping operations"))?;
                mapped.step(op, side, floor)
            }
            Op::Mount => self.many()?.mount(),
            _ => match side {
                Side::Floor => self.floor_step(op, i).map_err(fs_err("floor")),
                Side::Tmpfs => self.tmpfs_step(op, i).map_err(io_err(Path::new("tmpfs"))),
                Side::Udax => self.udax_step(op, i).map_err(fs_err("udax")),
            },
        }
    }

    fn floor_step(&mut self, op: Op, i: u64) -> udax::Result<()> {
        let (block, blk, seq) = (BLOCK as usize, self.block_off(i), self.seq_off(i));
        match op {
            Op::Overwrite4k => self.floor.store_durable(blk, &self.buf[..block]),
            Op::Append4k => {
                let off = self.appended[0] % self.scale.data_bytes;
                self.appended[0] += BLOCK;
                self.floor.store_durable(off, &self.buf[..block])
            }
            Op::Pread4k => self.floor.load(blk, &mut self.buf[..block]),
            Op::SeqWrite1m => self.floor.store_durable(seq, &self.buf),
            Op::SeqRead1m => self.floor.load(seq, &mut self.buf),
            // A metadata operation's floor: one durable commit word.
            Op::Create | Op::CreateIno | Op::Stat | Op::Lookup | Op::Unlink | Op::Rename => {
                self.floor.commit_word((i % 1024) * 64, i)
            }
            // A listing's floor: its entries' bytes on the medium, copied out.
            Op::Readdir10k => {
                let len = (self.scale.dir_entries * DIRENT_BYTES) as usize;
                self.floor.load(0, &mut self.buf[..len])
            }
            // Timed in `Mapped` and `ManyFiles` (see `step`).
            Op::MmapSetup1g | Op::FirstStore4k | Op::FirstStore2m | Op::Mount => Ok(()),
        }
    }

    fn tmpfs_step(&mut self, op: Op, i: u64) -> std::io::Result<()> {
        let (block, blk, seq) = (BLOCK as usize, self.block_off(i), self.seq_off(i));
        match op {
            Op::Overwrite4k => {
                self.tmpfs_data.write_all_at(&self.buf[..block], blk)?;
                self.tmpfs_data.sync_data()
            }
            Op::Append4k => {
                self.tmpfs_append.write_all_at(&self.buf[..block], self.appended[1])?;
                self.appended[1] += BLOCK;
                self.tmpfs_append.sync_data()
            }
            Op::Pread4k => self.tmpfs_data.read_exact_at(&mut self.buf[..block], blk),
            Op::SeqWrite1m => {
                self.tmpfs_data.write_all_at(&self.buf, seq)?;
                self.tmpfs_data.sync_data()
            }
            Op::SeqRead1m => self.tmpfs_data.read_exact_at(&mut self.buf, seq),
            Op::Create => std::fs::File::create(&self.name).map(drop),
            // As Fs::create: a regular file made in a directory at hand, nothing opened.
            Op::CreateIno => {
                let mode = Mode::from_raw_mode(0o644);
                Ok(rustix::fs::mknodat(&self.tmpfs_dirfd, self.cname.as_c_str(), FileType::RegularFile, mode, 0)?)
            }
            Op::Stat => std::fs::metadata(self.tmpfs_dir.join("stat")).map(drop),
            Op::Lookup => Ok(rustix::fs::statat(&self.tmpfs_dirfd, c"stat", AtFlags::SYMLINK_NOFOLLOW).map(drop)?),
            Op::Unlink => std::fs::remove_file(&self.name),
            Op::Rename => std::fs::rename(&self.name, &self.to),
            Op::Readdir10k => {
                let Some((_, dir)) = &self.listing else { return Err(std::io::Error::other("no directory to list")) };
                let mut n = 0u64;
                for e in std::fs::read_dir(dir)? {
                    std::hint::black_box(e?);
                    n += 1;
                }
                std::hint::black_box(n);
                Ok(())
            }
            Op::MmapSetup1g | Op::FirstStore4k | Op::FirstStore2m | Op::Mount => Ok(()),
        }
    }

    fn udax_step(&mut self, op: Op, i: u64) -> udax::Result<()> {
        let (block, blk, seq) = (BLOCK as usize, self.block_off(i), self.seq_off(i));
        match op {
            Op::Overwrite4k => self.udax_data.write_at(&self.buf[..block], blk).map(drop),
            Op::Append4k => {
                self.udax_append.write_at(&self.buf[..block], self.appended[2])?;
                self.appended[2] += BLOCK;
                Ok(())
            }
            Op::Pread4k => self.udax_data.read_at(&mut self.buf[..block], blk).map(drop),
            Op::SeqWrite1m => self.udax_data.write_at(&self.buf, seq).map(drop),
            Op::SeqRead1m => self.udax_data.read_at(&mut self.buf, seq).map(drop),
            Op::Create => self.fs.open(&self.name, OpenOptions::create()).map(drop),
            Op::CreateIno => self.fs.create(self.m_ino, self.cname.as_bytes(), 0o644, self.creds).map(drop),
            Op::Stat => self.fs.stat("/m/stat").map(drop),
            Op::Lookup => self.fs.lookup(self.m_ino, b"stat").map(drop),
            Op::Unlink => self.fs.unlink_path(&self.name),
            Op::Rename => self.fs.rename_path(&self.name, &self.to),
            Op::Readdir10k => {
                let (ino, _) = self.listing.as_ref().ok_or(udax::Error::NotFound)?;
                std::hint::black_box(self.fs.readdir(*ino, 0)?.len());
                Ok(())
            }
            Op::MmapSetup1g | Op::FirstStore4k | Op::FirstStore2m | Op::Mount => Ok(()),
        }
    }

    /// Untimed clean-up after a batch of `calls` calls: created files removed, a renamed file
    /// back under its first name, the last mapping dropped, the mounted image unmounted.
    pub fn after(&mut self, op: Op, side: Side, calls: u64) -> CliResult {
        match (op, side) {
            (Op::Create, Side::Udax) => {
                for i in 0..calls {
                    let p = self.path(side, &format!("f{i}"));
                    self.fs.unlink_path(&p).map_err(|e| Failure::fs(CMD, &p, &e))?;
                }
            }
            (Op::Create, Side::Tmpfs) => {
                for i in 0..calls {
                    let p = self.path(side, &format!("f{i}"));
                    std::fs::remove_file(&p).map_err(io_err(&p))?;
                }
            }
            (Op::CreateIno, Side::Udax) => {
                for i in 0..calls {
                    self.fs.unlink(self.m_ino, cname(i).as_bytes()).map_err(fs_err("create-ino"))?;
                }
            }
            (Op::CreateIno, Side::Tmpfs) => {
                for i in 0..calls {
                    let name = cname(i);
                    rustix::fs::unlinkat(&self.tmpfs_dirfd, name.as_c_str(), AtFlags::empty())
                        .map_err(errno_err(&self.tmpfs_dir))?;
                }
            }
            (Op::Rename, _) if calls % 2 == 1 => {
                self.before(op, side, calls)?;
                self.step(op, side, calls)?;
            }
            (Op::MmapSetup1g | Op::FirstStore4k | Op::FirstStore2m, _) => self.mapped()?.after(op, side),
            (Op::Mount, _) => self.many()?.unmount()?,
            _ => {}
        }
        Ok(())
    }
}

/// readdir-10k's directory, `entries` empty files in udax's `/r` and in tmpfs's `r`.
fn listing(fs: &Fs, scratch: &Scratch, entries: u64, progress: &Progress) -> CliResult<(u64, PathBuf)> {
    progress.message(format!("making a directory of {entries} entries"));
    let ino = fs.mkdir_path("/r", 0o755).map_err(fs_err("/r"))?.ino;
    let dir = scratch.dir.join("r");
    std::fs::create_dir(&dir).map_err(io_err(&dir))?;
    let who = Creds::current();
    for i in 0..entries {
        let name = format!("e{i:05}");
        fs.create(ino, name.as_bytes(), 0o644, who).map_err(fs_err("/r"))?;
        let p = dir.join(&name);
        std::fs::File::create(&p).map_err(io_err(&p))?;
    }
    Ok((ino, dir))
}
