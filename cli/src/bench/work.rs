//! What `udax bench` runs: the scratch directory, the three sides' files, and one call of each
//! operation on each side, with its untimed preparation and clean-up.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use udax::{Device, Floor, Fs, MkfsOptions, OpenOptions};

use super::Op;
use crate::common::{CliResult, Failure};

const CMD: &str = "bench";
const BLOCK: u64 = 4096;
const MIB: u64 = 1 << 20;

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
    image_bytes: u64,
    inodes: u64,
    /// The written file that overwrites, reads and the sequential operations use.
    data_bytes: u64,
    /// An appended file is cut back to empty when it would grow past this.
    append_max: u64,
}

impl Scale {
    pub const FULL: Scale =
        Scale { image_bytes: 512 * MIB, inodes: 262_144, data_bytes: 64 * MIB, append_max: 16 * MIB };
    pub const QUICK: Scale = Scale { image_bytes: 32 * MIB, inodes: 2048, data_bytes: 4 * MIB, append_max: MIB };
}

/// A scratch directory in /dev/shm (else the temporary directory), removed with everything in
/// it when dropped.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
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
    /// tmpfs's directory for the metadata operations (udax's is `/m`).
    tmpfs_dir: PathBuf,
    /// Bytes appended so far, per side.
    appended: [u64; 3],
    buf: Vec<u8>,
    /// The name the next metadata call uses, made before it is timed.
    name: PathBuf,
    to: PathBuf,
}

fn fs_err(what: &str) -> impl Fn(udax::Error) -> Failure + '_ {
    move |e| Failure::fs(CMD, what, &e)
}

fn io_err(what: &Path) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure::io(CMD, what, &e)
}

impl Workload {
    /// Makes the udax image, the tmpfs files and the floor in `scratch`, and writes the data
    /// files whole (so overwrites and reads meet written blocks).
    pub fn new(scratch: &Scratch, scale: Scale) -> CliResult<Workload> {
        let image = scratch.dir.join("bench.udax");
        let dev = Device::create(&image, scale.image_bytes).map_err(|e| Failure::fs(CMD, &image, &e))?;
        // As the memory of a pmem or CXL device is present: no first-touch faults measured.
        dev.populate().map_err(|e| Failure::fs(CMD, &image, &e))?;
        let opts = MkfsOptions { inodes: scale.inodes, ..MkfsOptions::default() };
        let fs = Fs::mkfs(dev, &opts).map_err(|e| Failure::fs(CMD, &image, &e))?;
        let floor = Floor::new(scale.data_bytes).map_err(fs_err("floor"))?;
        let fill: Vec<u8> = (0..MIB).map(|i| (i * 31 + 7) as u8).collect();
        let udax_data = fs.open("/data", OpenOptions::create()).map_err(fs_err("/data"))?;
        let udax_append = fs.open("/append", OpenOptions::create()).map_err(fs_err("/append"))?;
        fs.mkdir_path("/m", 0o755).map_err(fs_err("/m"))?;
        fs.open("/m/stat", OpenOptions::create()).map_err(fs_err("/m/stat"))?;
        fs.open("/m/rename-a", OpenOptions::create()).map_err(fs_err("/m/rename-a"))?;
        let tmpfs_dir = scratch.dir.join("m");
        std::fs::create_dir(&tmpfs_dir).map_err(io_err(&tmpfs_dir))?;
        for name in ["stat", "rename-a"] {
            let p = tmpfs_dir.join(name);
            std::fs::File::create(&p).map_err(io_err(&p))?;
        }
        let tdata = scratch.dir.join("data");
        let tmpfs_data = std::fs::File::create_new(&tdata).map_err(io_err(&tdata))?;
        let tappend = scratch.dir.join("append");
        let tmpfs_append = std::fs::File::create_new(&tappend).map_err(io_err(&tappend))?;
        for off in (0..scale.data_bytes).step_by(MIB as usize) {
            udax_data.write_at(&fill, off).map_err(fs_err("/data"))?;
            tmpfs_data.write_all_at(&fill, off).map_err(io_err(&tdata))?;
            floor.store_durable(off, &fill).map_err(fs_err("floor"))?;
        }
        Ok(Workload {
            scale,
            floor,
            fs,
            udax_data,
            udax_append,
            tmpfs_data,
            tmpfs_append,
            tmpfs_dir,
            appended: [0; 3],
            buf: fill,
            name: PathBuf::new(),
            to: PathBuf::new(),
        })
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
    /// cut back to empty when full.
    pub fn before(&mut self, op: Op, side: Side, i: u64) -> CliResult {
        match op {
            Op::Create | Op::Unlink => self.name = self.path(side, &format!("f{i}")),
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

    /// One timed call of `op` on `side`.
    pub fn step(&mut self, op: Op, side: Side, i: u64) -> CliResult {
        match side {
            Side::Floor => self.floor_step(op, i).map_err(fs_err("floor")),
            Side::Tmpfs => self.tmpfs_step(op, i).map_err(io_err(Path::new("tmpfs"))),
            Side::Udax => self.udax_step(op, i).map_err(fs_err("udax")),
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
            Op::Create | Op::Stat | Op::Unlink | Op::Rename => self.floor.commit_word((i % 1024) * 64, i),
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
            Op::Stat => std::fs::metadata(self.tmpfs_dir.join("stat")).map(drop),
            Op::Unlink => std::fs::remove_file(&self.name),
            Op::Rename => std::fs::rename(&self.name, &self.to),
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
            Op::Stat => self.fs.stat("/m/stat").map(drop),
            Op::Unlink => self.fs.unlink_path(&self.name),
            Op::Rename => self.fs.rename_path(&self.name, &self.to),
        }
    }

    /// Untimed clean-up after a batch of `calls` calls: created files removed, a renamed file
    /// back under its first name.
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
            (Op::Rename, _) if calls % 2 == 1 => {
                self.before(op, side, calls)?;
                self.step(op, side, calls)?;
            }
            _ => {}
        }
        Ok(())
    }
}
