//! The quiesced checks, run while every worker waits at the barrier: each shared mapping shows
//! what read_at reads, bytes written on one side show on the other (both ways), loads succeed up
//! to the page holding EOF and raise SIGBUS from the next one, and each private file holds
//! exactly what its model says.

use udax::{File, Mapping, Prot, Share, PAGE};

use super::state::{describe_mapping, lock, sigbus_page, Check, Model, Rng, SharedFile};
use super::Run;
use crate::common::describe;

/// Bytes written or stored by one two-way probe at most.
const PROBE_BYTES: u64 = 512;

/// Checks every file; workers must be parked.
pub fn check_all(run: &Run, rng: &mut Rng) {
    let me = run.pulse.checker();
    for f in &run.world.shared {
        run.pulse.doing(me, format!("checking {}", f.path));
        let r = check_shared(run, rng, f);
        failed(run, &f.path, r);
        run.pulse.beat();
    }
    for desk in &run.world.desks {
        let mut desk = lock(desk);
        for pf in &mut desk.files {
            let label = pf.label();
            run.pulse.doing(me, format!("checking {label}"));
            let maps: Vec<&Mapping> = pf.maps.iter().collect();
            let r = check_private(run, rng, &label, &pf.file, &maps, &mut pf.model);
            failed(run, &label, r);
            run.pulse.beat();
        }
    }
}

fn failed(run: &Run, file: &str, r: udax::Result<()>) {
    if let Err(e) = r {
        run.tally.fail(Check::OpError, None, file, None, format!("a quiesced check failed: {}", describe(&e)));
    }
}

fn check_shared(run: &Run, rng: &mut Rng, f: &SharedFile) -> udax::Result<()> {
    let size = f.file.metadata()?.size;
    let mut content = vec![0; size as usize];
    let n = f.file.read_at(&mut content, 0)?;
    content.truncate(n);
    run.tally.values(None, &f.path, 0, &content, "read_at");
    let held = lock(&f.maps).clone();
    let maps: Vec<&Mapping> = held.iter().map(|m| &**m).collect();
    check_mappings(run, rng, &f.path, &f.file, &maps, &mut content)?;
    Ok(())
}

fn check_private(
    run: &Run,
    rng: &mut Rng,
    label: &str,
    file: &File,
    maps: &[&Mapping],
    model: &mut Model,
) -> udax::Result<()> {
    let t = &run.tally;
    let size = file.metadata()?.size;
    t.checked(Check::Model, 1);
    if size != model.size() {
        let detail = format!("size {size:#x}, model {:#x}\n      {}", model.size(), model.recent());
        t.fail(Check::Model, None, label, None, detail);
    }
    let mut content = vec![0; size as usize];
    let n = file.read_at(&mut content, 0)?;
    content.truncate(n);
    if t.values(None, label, 0, &content, "read_at") {
        let want = model.bytes(0, size);
        t.same_or(Check::Model, None, label, 0, want, &content, "read_at vs model", || model.recent());
    }
    // Go on from what the file holds, so one divergence is reported once.
    model.reset_to(&content);
    for (off, bytes) in check_mappings(run, rng, label, file, maps, &mut content)? {
        model.write(off, &bytes);
    }
    Ok(())
}

/// The part of mapping `m` inside a file of `size` bytes, as file offsets.
fn window(m: &Mapping, size: u64) -> Option<(u64, u64)> {
    let (lo, hi) = (m.offset(), size.min(m.offset() + m.len()));
    (lo < hi).then_some((lo, hi))
}

/// Compares every mapping of `file` with `content` (what read_at reads, all of the file),
/// probes SIGBUS at EOF, then writes a pattern with write_at and stores one through a shared
/// writable mapping and checks that every shared mapping and read_at see them. Returns the
/// writes it made (`content` is updated too).
fn check_mappings(
    run: &Run,
    rng: &mut Rng,
    label: &str,
    file: &File,
    maps: &[&Mapping],
    content: &mut [u8],
) -> udax::Result<Vec<(u64, Vec<u8>)>> {
    let (t, pulse, me) = (&run.tally, &run.pulse, run.pulse.checker());
    let size = content.len() as u64;
    for (i, m) in maps.iter().enumerate() {
        if let Some((lo, hi)) = window(m, size) {
            pulse.doing(me, format!("loading through {} of {label} (size {size:#x})", describe_mapping(i, m)));
            let mut got = vec![0; (hi - lo) as usize];
            m.read_at(&mut got, lo - m.offset())?;
            let how = format!("{} vs read_at", describe_mapping(i, m));
            if m.share() == Share::Shared {
                t.same(Check::MappingMatchesFile, None, label, lo, &content[lo as usize..hi as usize], &got, &how);
            } else {
                t.values(None, label, lo, &got, &how);
            }
        }
        probe_eof(run, label, i, m, size)?;
    }
    let shared: Vec<(usize, &Mapping)> = maps
        .iter()
        .enumerate()
        .filter(|(_, m)| m.share() == Share::Shared && window(m, size).is_some())
        .map(|(i, m)| (i, *m))
        .collect();
    let mut writes = Vec::new();
    if shared.is_empty() {
        return Ok(writes);
    }
    // write_at, then every shared mapping sees it.
    let (_, m) = shared[rng.index(shared.len())];
    let (off, mut bytes) = pick(rng, m, size);
    bytes.truncate(file.write_at(&bytes, off)?);
    content[off as usize..off as usize + bytes.len()].copy_from_slice(&bytes);
    seen(run, label, &shared, content, off, bytes.len() as u64, Check::FileToMapping, "after write_at")?;
    writes.push((off, bytes));
    // A store through a shared writable mapping, then read_at and the other mappings see it.
    let writable: Vec<&(usize, &Mapping)> = shared.iter().filter(|(_, m)| m.prot() == Prot::ReadWrite).collect();
    if let Some(&&(i, m)) = writable.get(rng.index(writable.len())) {
        let (off, bytes) = pick(rng, m, size);
        pulse.doing(me, format!("storing through {} of {label} at {off:#x}", describe_mapping(i, m)));
        m.write_at(&bytes, off - m.offset())?;
        content[off as usize..off as usize + bytes.len()].copy_from_slice(&bytes);
        let mut got = vec![0; bytes.len()];
        let n = file.read_at(&mut got, off)?;
        let how = format!("read_at after a store through {}", describe_mapping(i, m));
        t.same(Check::MappingToFile, None, label, off, &bytes, &got[..n], &how);
        let how = format!("after a store through {}", describe_mapping(i, m));
        seen(run, label, &shared, content, off, bytes.len() as u64, Check::MappingToFile, &how)?;
        writes.push((off, bytes));
    }
    Ok(writes)
}

/// A short pattern at a random place inside EOF and inside mapping `m`.
fn pick(rng: &mut Rng, m: &Mapping, size: u64) -> (u64, Vec<u8>) {
    let (lo, hi) = window(m, size).expect("only mappings with a window are picked");
    let (_, len) = rng.extent((hi - lo).min(PROBE_BYTES));
    let off = lo + rng.below(hi - lo - len + 1);
    (off, rng.pattern(len))
}

/// Every shared mapping covering part of `[off, off+len)` shows `content` there.
#[allow(clippy::too_many_arguments)]
fn seen(
    run: &Run,
    label: &str,
    shared: &[(usize, &Mapping)],
    content: &[u8],
    off: u64,
    len: u64,
    check: Check,
    after: &str,
) -> udax::Result<()> {
    for &(i, m) in shared {
        let (lo, hi) = (off.max(m.offset()), (off + len).min(m.offset() + m.len()));
        if lo >= hi {
            continue;
        }
        let doing = format!("loading {lo:#x}..{hi:#x} through {} of {label} {after}", describe_mapping(i, m));
        run.pulse.doing(run.pulse.checker(), doing);
        let mut got = vec![0; (hi - lo) as usize];
        m.read_at(&mut got, lo - m.offset())?;
        let how = format!("{} {after}", describe_mapping(i, m));
        run.tally.same(check, None, label, lo, &content[lo as usize..hi as usize], &got, &how);
    }
    Ok(())
}

/// Pages of `m` on each side of EOF: loadable up to the page holding EOF, SIGBUS from the next.
fn probe_eof(run: &Run, label: &str, i: usize, m: &Mapping, size: u64) -> udax::Result<()> {
    let first = m.offset() / PAGE;
    let end = first + m.len() / PAGE;
    let bus = sigbus_page(size);
    run.pulse.doing(run.pulse.checker(), format!("probing EOF through {} of {label}", describe_mapping(i, m)));
    for page in bus.saturating_sub(3).max(first)..(bus + 3).min(end) {
        let want = page < bus;
        let got = m.loadable((page - first) * PAGE)?;
        run.tally.checked(Check::SigbusAtEof, 1);
        if got != want {
            let what = if want { "raises SIGBUS inside EOF" } else { "loads past EOF (SIGBUS expected)" };
            let detail = format!("{}: the page at {:#x} {what} (size {size:#x})", describe_mapping(i, m), page * PAGE);
            run.tally.fail(Check::SigbusAtEof, None, label, Some(page * PAGE), detail);
        }
    }
    Ok(())
}
