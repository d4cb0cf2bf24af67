//! A worker thread: seeded random operations on the shared files, on its own files and on the
//! shared namespace, checking every read and load as it goes (its own files against their
//! models), until the checker ends the run at a barrier.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use udax::{Error, FallocMode, File, Mapping, OpenOptions, Prot, Share, PAGE};

use super::state::{
    describe_mapping, lock, Check, Desk, Op, PrivateFile, Rng, SharedFile, MAPS_PER_FILE, MAX_IO, NS_DIRS, NS_NAMES,
    NS_SPAN, PRIVATE_SPAN, SHARED_FILES, SHARED_SPAN,
};
use super::Run;
use crate::common::describe;

/// Operations on a file, by weight. Mapped accesses dominate: the fault service is what the run
/// is for.
const FILE_MIX: &[(Op, u64)] = &[
    (Op::Read, 8),
    (Op::Write, 10),
    (Op::Append, 3),
    (Op::TruncateUp, 3),
    (Op::TruncateDown, 3),
    (Op::Allocate, 3),
    (Op::PunchHole, 5),
    (Op::ZeroRange, 3),
    (Op::Fsync, 1),
    (Op::Msync, 1),
    (Op::MappedLoad, 20),
    (Op::MappedStore, 20),
    (Op::Mmap, 3),
    (Op::Munmap, 2),
];

/// The hot pages at each end of a mapped access's range.
const HOT_BYTES: u64 = 8 * PAGE;

/// Namespace operations on a thread's own files (mixed with [`FILE_MIX`]).
const PRIVATE_NAME_MIX: &[(Op, u64)] = &[(Op::Rename, 2), (Op::Unlink, 1), (Op::Create, 1)];

/// Operations on the shared namespace.
const NAMESPACE_MIX: &[(Op, u64)] = &[(Op::Create, 3), (Op::Rename, 3), (Op::Unlink, 2), (Op::Reopen, 3)];

/// Runs worker `me` until the run ends. A panicking worker is reported and then only waits at
/// the barriers, so the others go on.
pub fn work(run: &Run, me: usize, seed: u64) {
    if catch_unwind(AssertUnwindSafe(|| operate(run, me, seed))).is_ok() {
        return;
    }
    run.tally.fail(Check::OpError, Some(me), "-", None, "the worker panicked (message above)".into());
    loop {
        run.pulse.doing(me, "retired after a panic".into());
        if run.gate.paused() {
            if run.gate.park() {
                return;
            }
        } else {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

fn operate(run: &Run, me: usize, seed: u64) {
    let mut rng = Rng::new(seed, me as u64);
    loop {
        if run.gate.paused() {
            run.pulse.doing(me, "waiting at the barrier".into());
            if run.gate.park() {
                return;
            }
            continue;
        }
        match rng.below(20) {
            0..=8 => on_shared(run, me, &mut rng),
            9..=17 => on_private(run, me, &mut rng),
            _ => on_namespace(run, me, &mut rng),
        }
        run.pulse.beat();
    }
}

/// Reports an operation's unexpected failure.
fn outcome(run: &Run, me: usize, op: Op, file: &str, r: udax::Result<()>) {
    if let Err(e) = r {
        run.tally.fail(Check::OpError, Some(me), file, None, format!("{} failed: {}", op.name(), describe(&e)));
    }
}

fn fallocate_mode(op: Op, keep_size: bool) -> FallocMode {
    match op {
        Op::PunchHole => FallocMode::PunchHole,
        Op::ZeroRange => FallocMode::ZeroRange { keep_size },
        _ => FallocMode::Allocate { keep_size },
    }
}

/// The range of a fallocate: usually like any other, now and then most of the file.
fn space_extent(rng: &mut Rng, span: u64) -> (u64, u64) {
    if rng.one_in(8) {
        let off = rng.below(span / 2);
        (off, rng.range(1, span - off + 1))
    } else {
        rng.extent(span)
    }
}

/// A new mapping of `file` over the whole span or a window of it: shared read-write mostly,
/// some shared read-only, some private.
fn new_mapping(rng: &mut Rng, file: &File, span: u64) -> udax::Result<Mapping> {
    let (prot, share) = match rng.below(8) {
        0..=3 => (Prot::ReadWrite, Share::Shared),
        4 => (Prot::Read, Share::Shared),
        _ => (Prot::ReadWrite, Share::Private),
    };
    let pages = span / PAGE;
    let (first, end) = if rng.one_in(2) {
        (0, pages)
    } else {
        let first = rng.below(pages);
        (first, rng.range(first + 1, pages + 1))
    };
    file.mmap(first * PAGE, (end - first) * PAGE, prot, share)
}

/// What a mapped access did.
enum Access {
    None,
    Loaded { off: u64, bytes: Vec<u8> },
    Stored { off: u64, bytes: Vec<u8> },
}

/// One load or store through mapping `m` (number `i` of its file) of a file of `size` bytes
/// that cannot shrink meanwhile: a load stays inside EOF, a store may go past it inside the EOF
/// page (those bytes are dropped, and zeroed if the file grows over them). Half the accesses go
/// to the first or the last pages of the range, so threads fault on the same pages at once.
/// Loads, and half the stores, first probe every page they touch, which must not raise SIGBUS
/// (a probe is served as a load: a probed store takes a write-protect fault, not a missing
/// one). Loads are checked for foreign bytes.
#[allow(clippy::too_many_arguments)]
fn access(
    run: &Run,
    me: usize,
    rng: &mut Rng,
    file: &str,
    i: usize,
    m: &Mapping,
    size: u64,
    store: bool,
) -> udax::Result<Access> {
    let store = store && m.prot() == Prot::ReadWrite;
    let end = if store { size.next_multiple_of(PAGE) } else { size };
    let (lo, hi) = (m.offset(), end.min(m.offset() + m.len()));
    if hi <= lo {
        return Ok(Access::None);
    }
    let span = hi - lo;
    let hot = span.min(HOT_BYTES);
    let (o, len) = match rng.below(4) {
        0 => rng.extent(hot),
        1 => {
            let (o, len) = rng.extent(hot);
            (span - hot + o, len)
        }
        _ => rng.extent(span),
    };
    let off = lo + o;
    let what = if store { Op::MappedStore } else { Op::MappedLoad };
    let doing = format!("{} {file} {off:#x}+{len:#x} through {} (size {size:#x})", what.name(), describe_mapping(i, m));
    run.pulse.doing(me, doing);
    if (!store || rng.one_in(2)) && !run.tally.loadable(Some(me), file, (i, m), off..off + len, size)? {
        return Ok(Access::None);
    }
    if store {
        let bytes = rng.pattern(len);
        m.write_at(&bytes, off - lo)?;
        run.tally.op(Op::MappedStore);
        Ok(Access::Stored { off, bytes })
    } else {
        let mut bytes = vec![0; len as usize];
        m.read_at(&mut bytes, off - lo)?;
        run.tally.op(Op::MappedLoad);
        run.tally.values(Some(me), file, off, &bytes, &format!("a load through {}", describe_mapping(i, m)));
        Ok(Access::Loaded { off, bytes })
    }
}

fn on_shared(run: &Run, me: usize, rng: &mut Rng) {
    let f = &run.world.shared[rng.index(SHARED_FILES)];
    let op = rng.pick(FILE_MIX);
    run.pulse.doing(me, format!("{} {}", op.name(), f.path));
    let r = shared_op(run, me, rng, f, op);
    outcome(run, me, op, &f.path, r);
}

fn shared_op(run: &Run, me: usize, rng: &mut Rng, f: &SharedFile, op: Op) -> udax::Result<()> {
    let t = &run.tally;
    match op {
        Op::Read => {
            let (off, len) = rng.extent(SHARED_SPAN);
            let mut buf = vec![0; len as usize];
            let n = f.file.read_at(&mut buf, off)?;
            t.op(op);
            t.values(Some(me), &f.path, off, &buf[..n], "read_at");
        }
        Op::Write => {
            let (off, len) = rng.extent(SHARED_SPAN);
            f.file.write_at(&rng.pattern(len), off)?;
            t.op(op);
        }
        Op::Append => {
            if f.file.metadata()?.size < SHARED_SPAN - MAX_IO {
                let (_, len) = rng.extent(MAX_IO);
                f.append.write_at(&rng.pattern(len), 0)?;
                t.op(op);
            }
        }
        Op::TruncateUp | Op::TruncateDown => {
            // Growing takes the lock too: a write racing past the chosen size would turn the
            // grow into a shrink.
            let _shrinking = f.may_shrink();
            let size = f.file.metadata()?.size;
            let new = match op {
                Op::TruncateUp => size + rng.size(SHARED_SPAN.saturating_sub(size)),
                _ => rng.size(size),
            };
            f.file.set_len(new)?;
            t.op(if new >= size { Op::TruncateUp } else { Op::TruncateDown });
        }
        Op::Allocate | Op::PunchHole | Op::ZeroRange => {
            let (off, len) = space_extent(rng, SHARED_SPAN);
            f.file.fallocate(off, len, fallocate_mode(op, rng.one_in(2)))?;
            t.op(op);
        }
        Op::Fsync => {
            f.file.sync_all()?;
            t.op(op);
        }
        Op::Msync | Op::Munmap | Op::MappedLoad | Op::MappedStore => {
            let picked = {
                let maps = lock(&f.maps);
                (!maps.is_empty()).then(|| rng.index(maps.len())).map(|i| (i, maps[i].clone()))
            };
            let Some((i, m)) = picked else { return shared_op(run, me, rng, f, Op::Mmap) };
            match op {
                Op::Msync => m.flush()?,
                Op::Munmap => {
                    lock(&f.maps).retain(|x| !Arc::ptr_eq(x, &m));
                }
                _ => {
                    let _no_shrink = f.no_shrink();
                    let size = f.file.metadata()?.size;
                    access(run, me, rng, &f.path, i, &m, size, op == Op::MappedStore)?;
                    return Ok(());
                }
            }
            t.op(op);
        }
        Op::Mmap => {
            let m = Arc::new(new_mapping(rng, &f.file, SHARED_SPAN)?);
            let mut maps = lock(&f.maps);
            if maps.len() >= MAPS_PER_FILE {
                let victim = rng.index(maps.len());
                maps.swap_remove(victim);
                t.op(Op::Munmap);
            }
            maps.push(m);
            t.op(op);
        }
        Op::Create | Op::Rename | Op::Unlink | Op::Reopen => unreachable!("not in FILE_MIX"),
    }
    Ok(())
}

fn on_private(run: &Run, me: usize, rng: &mut Rng) {
    run.pulse.doing(me, "locking its own files".into());
    let mut desk = lock(&run.world.desks[me]);
    let i = rng.index(desk.files.len());
    let op = if rng.one_in(12) { rng.pick(PRIVATE_NAME_MIX) } else { rng.pick(FILE_MIX) };
    let label = desk.files[i].label();
    run.pulse.doing(me, format!("{} {label}", op.name()));
    let r = match op {
        Op::Rename | Op::Unlink | Op::Create => private_name_op(run, rng, &mut desk, i, op),
        _ => private_op(run, me, rng, &mut desk.files[i], &label, op),
    };
    outcome(run, me, op, &label, r);
}

/// Rename, unlink (the file stays open and in use), and replace the file with a new one or
/// truncate it by opening with O_TRUNC.
fn private_name_op(run: &Run, rng: &mut Rng, desk: &mut Desk, i: usize, op: Op) -> udax::Result<()> {
    let fs = &run.world.fs;
    let new_path = desk.new_path();
    let pf = &mut desk.files[i];
    match op {
        Op::Rename if pf.linked => {
            fs.rename_path(&pf.path, &new_path)?;
            pf.path = new_path;
        }
        Op::Unlink if pf.linked => {
            fs.unlink_path(&pf.path)?;
            pf.linked = false;
        }
        Op::Create if pf.linked && rng.one_in(2) => {
            fs.open(&pf.path, OpenOptions { truncate: true, ..OpenOptions::create() })?;
            pf.model.set_len(0);
        }
        Op::Create => {
            let old = std::mem::replace(pf, PrivateFile::create(fs, new_path)?);
            if old.linked {
                fs.unlink_path(&old.path)?;
            }
        }
        _ => return Ok(()),
    }
    run.tally.op(op);
    Ok(())
}

fn private_op(run: &Run, me: usize, rng: &mut Rng, pf: &mut PrivateFile, label: &str, op: Op) -> udax::Result<()> {
    let t = &run.tally;
    let size = pf.model.size();
    match op {
        Op::Read => {
            let (off, len) = rng.extent(PRIVATE_SPAN);
            let mut buf = vec![0; len as usize];
            let n = pf.file.read_at(&mut buf, off)?;
            t.op(op);
            if t.values(Some(me), label, off, &buf[..n], "read_at") {
                let want = pf.model.bytes(off, len);
                t.same_or(Check::Model, Some(me), label, off, want, &buf[..n], "read_at vs model", || {
                    pf.model.recent()
                });
            }
        }
        Op::Write => {
            let (off, len) = rng.extent(PRIVATE_SPAN);
            let data = rng.pattern(len);
            let n = pf.file.write_at(&data, off)?;
            pf.model.write(off, &data[..n]);
            t.op(op);
        }
        Op::Append => {
            if size < PRIVATE_SPAN - MAX_IO {
                let (_, len) = rng.extent(MAX_IO);
                let data = rng.pattern(len);
                let n = pf.append.write_at(&data, 0)?;
                pf.model.write(size, &data[..n]);
                t.op(op);
            }
        }
        Op::TruncateUp | Op::TruncateDown => {
            let new = match op {
                Op::TruncateUp => size + rng.size(PRIVATE_SPAN.saturating_sub(size)),
                _ => rng.size(size),
            };
            pf.file.set_len(new)?;
            pf.model.set_len(new);
            t.op(op);
        }
        Op::Allocate | Op::PunchHole | Op::ZeroRange => {
            let (off, len) = space_extent(rng, PRIVATE_SPAN);
            let keep_size = rng.one_in(2);
            pf.file.fallocate(off, len, fallocate_mode(op, keep_size))?;
            pf.model.note(format!("{} {off:#x}+{len:#x}{}", op.name(), if keep_size { " keep_size" } else { "" }));
            if !keep_size && op != Op::PunchHole {
                pf.model.grow(off + len);
            }
            if op != Op::Allocate {
                pf.model.zero(off, len);
            }
            t.op(op);
        }
        Op::Fsync => {
            pf.file.sync_all()?;
            t.op(op);
        }
        Op::Mmap => {
            if pf.maps.len() >= MAPS_PER_FILE {
                let i = rng.index(MAPS_PER_FILE);
                let m = pf.maps.swap_remove(i);
                pf.model.note(format!("munmap {}", describe_mapping(i, &m)));
                t.op(Op::Munmap);
            }
            let m = new_mapping(rng, &pf.file, PRIVATE_SPAN)?;
            pf.model.note(format!("mmap as {}", describe_mapping(pf.maps.len(), &m)));
            pf.maps.push(m);
            t.op(op);
        }
        Op::Msync | Op::Munmap | Op::MappedLoad | Op::MappedStore => {
            if pf.maps.is_empty() {
                return private_op(run, me, rng, pf, label, Op::Mmap);
            }
            let i = rng.index(pf.maps.len());
            match op {
                Op::Msync => {
                    pf.maps[i].flush()?;
                    t.op(op);
                }
                Op::Munmap => {
                    let m = pf.maps.swap_remove(i);
                    pf.model.note(format!("munmap {}", describe_mapping(i, &m)));
                    t.op(op);
                }
                _ => {
                    let m = &pf.maps[i];
                    let done = access(run, me, rng, label, i, m, size, op == Op::MappedStore)?;
                    match done {
                        _ if m.share() == Share::Private => {}
                        Access::Loaded { off, bytes } => {
                            let want = pf.model.bytes(off, bytes.len() as u64);
                            let how = "mapped load vs model";
                            t.same_or(Check::Model, Some(me), label, off, want, &bytes, how, || pf.model.recent());
                        }
                        Access::Stored { off, bytes } => {
                            pf.model.note(format!("through {}:", describe_mapping(i, m)));
                            pf.model.store(off, &bytes)
                        }
                        Access::None => {}
                    }
                }
            }
        }
        Op::Create | Op::Rename | Op::Unlink | Op::Reopen => unreachable!("not in FILE_MIX"),
    }
    Ok(())
}

fn ns_path(rng: &mut Rng) -> String {
    format!("{}/n{}", NS_DIRS[rng.index(NS_DIRS.len())], rng.below(NS_NAMES))
}

/// Create, rename, unlink and reopen on names every thread uses; a name another thread just
/// removed (ENOENT) is expected. Namespace files are never truncated, so a mapping of one may
/// be loaded up to the size it had when opened.
fn on_namespace(run: &Run, me: usize, rng: &mut Rng) {
    let fs = &run.world.fs;
    let op = rng.pick(NAMESPACE_MIX);
    let path = ns_path(rng);
    run.pulse.doing(me, format!("{} {path}", op.name()));
    let r = match op {
        Op::Create => fs.open(&path, OpenOptions::create()).and_then(|f| {
            let (off, len) = rng.extent(NS_SPAN);
            f.write_at(&rng.pattern(len), off).map(drop)
        }),
        Op::Rename => fs.rename_path(&path, ns_path(rng)),
        Op::Unlink => fs.unlink_path(&path),
        _ => reopen(run, me, rng, &path),
    };
    match r {
        Ok(()) => run.tally.op(op),
        Err(Error::NotFound | Error::Exists) => {}
        Err(e) => outcome(run, me, op, &path, Err(e)),
    }
}

fn reopen(run: &Run, me: usize, rng: &mut Rng, path: &str) -> udax::Result<()> {
    let f = run.world.fs.open(path, OpenOptions::read_only())?;
    let size = f.metadata()?.size.min(NS_SPAN + MAX_IO);
    let mut buf = vec![0; size as usize];
    let n = f.read_at(&mut buf, 0)?;
    run.tally.values(Some(me), path, 0, &buf[..n], "read_at");
    if size > 0 && rng.one_in(3) {
        let share = if rng.one_in(2) { Share::Shared } else { Share::Private };
        let m = f.mmap(0, size, Prot::Read, share)?;
        run.pulse.doing(me, format!("mapped_load {path} 0x0+{size:#x} through {}", describe_mapping(0, &m)));
        m.read_at(&mut buf, 0)?;
        run.tally.op(Op::MappedLoad);
        run.tally.values(Some(me), path, 0, &buf, &format!("a load through {}", describe_mapping(0, &m)));
    }
    Ok(())
}
