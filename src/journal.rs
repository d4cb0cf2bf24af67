//! Metadata transactions: a circular redo log of checksummed records, and recovery.
//!
//! A transaction is a list of `(device offset, bytes)` redo entries. Commit writes the record
//! (header, entries, crc32c) into the ring, fences once — the operation is durable from here —
//! then applies the entries in place with plain stores left in the cache: the record holds
//! them until the checkpoint. The checkpoint (a position in the journal header, in two
//! checksummed slots written in turn) moves only after every entry applied before it has been
//! written back and fenced, so recovery replays
//! from the checkpoint: each record whose magic, position and checksum hold is applied in order;
//! the first that fails ends the log (a torn tail). Replay is idempotent. Protocol and its
//! failure cases: DESIGN.md §Journal.

use zerocopy::{FromBytes, IntoBytes};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::layout::{
    Geometry, RawCheckpoint, RawEntryHeader, RawJournalHeader, RawRecordHeader, JOURNAL_HEADER_OFF, JOURNAL_MAGIC,
    JOURNAL_RING_OFF, RECORD_MAGIC,
};

/// The checkpoint word of the journal header.
const CHECKPOINT_AT: u64 = JOURNAL_HEADER_OFF + crate::layout::off!(RawJournalHeader, checkpoint);

/// The two checkpoint slots of the journal header.
const SLOTS_AT: u64 = JOURNAL_HEADER_OFF + crate::layout::off!(RawJournalHeader, slots);

const HEADER_LEN: usize = std::mem::size_of::<RawRecordHeader>();

/// Largest checkpoint recovery accepts. Log positions only grow, by what is committed: 2^62
/// bytes is over a decade of commits at 10 GB/s, so a larger one is damage, and refusing it
/// keeps `head + len` from overflowing.
const MAX_LOG_POS: u64 = 1 << 62;

/// A metadata transaction under construction.
///
/// Content the transaction makes reachable — new blocks, a zeroed tail — is stored through
/// [`Tx::content_write`] / [`Tx::content_zero`]: stored at once, and commit then fences it
/// before the record is written (DESIGN.md "Commit protocol"), so a record can never persist ahead of what it
/// links. A transaction without such content costs one fence.
#[derive(Debug)]
pub struct Tx {
    /// Encoded entries: header then data padded to 8 bytes.
    buf: Vec<u8>,
    entries: u32,
    /// Content was stored that must be persistent before the record.
    content: bool,
    /// Inodes whose attributes (size, extents, times) the record changes: their map
    /// generations move before it commits (`crate::direct`).
    inodes: smallvec::SmallVec<[u64; 2]>,
}

thread_local! {
    /// A finished transaction's buffer, kept for the thread's next one: a commit allocates
    /// nothing once its thread has committed before.
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Largest buffer kept for reuse.
const SPARE_MAX: usize = 64 << 10;

impl Tx {
    /// An empty transaction.
    pub fn new() -> Tx {
        let mut buf = SPARE.take();
        buf.clear();
        if buf.capacity() == 0 {
            buf.reserve(1024);
        }
        Tx { buf, entries: 0, content: false, inodes: smallvec::SmallVec::new() }
    }

    /// Notes that the record changes inode `ino`'s attributes.
    pub fn changes_inode(&mut self, ino: u64) {
        if !self.inodes.contains(&ino) {
            self.inodes.push(ino);
        }
    }

    /// Forgets the inodes noted so far: the record changes their times or mode only, which
    /// moves no map (see [`Tx::changes_inode`]).
    pub fn keeps_maps(&mut self) {
        self.inodes.clear();
    }

    /// The inodes [`Tx::changes_inode`] noted.
    pub fn inodes(&self) -> &[u64] {
        &self.inodes
    }

    /// Adds "write `bytes` at device offset `off`".
    pub fn put(&mut self, off: u64, bytes: &[u8]) {
        let hdr = RawEntryHeader { off: off.into(), len: (bytes.len() as u32).into(), reserved: 0.into() };
        self.buf.extend_from_slice(hdr.as_bytes());
        self.buf.extend_from_slice(bytes);
        self.buf.resize(self.buf.len().next_multiple_of(8), 0);
        self.entries += 1;
    }

    /// Stores content this transaction depends on (written back now, fenced before commit).
    pub fn content_write(&mut self, dev: &Device, off: u64, bytes: &[u8]) -> Result<()> {
        crate::faults::check(crate::faults::Step::Content)?;
        self.content = true;
        dev.write(off, bytes)
    }

    /// Zero-fills content this transaction depends on (fenced before commit).
    pub fn content_zero(&mut self, dev: &Device, off: u64, len: u64) -> Result<()> {
        crate::faults::check(crate::faults::Step::Content)?;
        self.content = true;
        dev.zero(off, len)
    }

    /// Adds "write `v`'s bytes at device offset `off`" (as [`Tx::put`] of `v.as_bytes()`).
    pub fn put_obj<T: IntoBytes + zerocopy::Immutable>(&mut self, off: u64, v: &T) {
        self.put(off, v.as_bytes());
    }

    /// Makes the content stored through this transaction persistent: a fence, when there is
    /// any. The commit's record must not persist before it.
    pub fn fence_content(&self, dev: &Device) {
        if self.content && !dev.planted(Sabotage::ContentFence) {
            dev.fence();
        }
    }

    /// Bytes the record will take in the ring.
    pub fn record_len(&self) -> u64 {
        (HEADER_LEN + self.buf.len()).next_multiple_of(64) as u64
    }

    /// The entries, in order.
    pub fn entries(&self) -> impl Iterator<Item = (u64, &[u8])> {
        EntryIter { buf: &self.buf, left: self.entries }.map(|r| r.expect("a Tx only holds entries it encoded"))
    }
}

impl Default for Tx {
    fn default() -> Tx {
        Tx::new()
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if self.buf.capacity() <= SPARE_MAX {
            SPARE.set(std::mem::take(&mut self.buf));
        }
    }
}

struct EntryIter<'a> {
    buf: &'a [u8],
    /// Entries left; the record's zero padding after them is not an entry.
    left: u32,
}

impl<'a> Iterator for EntryIter<'a> {
    type Item = Result<(u64, &'a [u8]), &'static str>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let Ok((hdr, rest)) = RawEntryHeader::read_from_prefix(self.buf) else {
            self.buf = &[];
            return Some(Err("journal entry header"));
        };
        let len = hdr.len.get() as usize;
        if len > rest.len() {
            self.buf = &[];
            return Some(Err("journal entry length"));
        }
        let data = &rest[..len];
        let adv = len.next_multiple_of(8).min(rest.len());
        self.buf = &rest[adv..];
        Some(Ok((hdr.off.get(), data)))
    }
}

/// What a commit did besides logging.
#[derive(Debug, Clone, Copy, Default)]
pub struct Committed {
    /// Set when this commit moved the checkpoint: blocks freed before that position are safe to
    /// reuse (no replay can write them any more).
    pub checkpoint: Option<u64>,
}

pub use crate::sabotage::Sabotage;

/// The journal of a mounted image.
#[derive(Debug)]
pub struct Journal {
    ring_len: u64,
    /// Position the next record goes to.
    head: u64,
    /// Position recovery would start from.
    checkpoint: u64,
    /// Sequence of the slot holding `checkpoint`; the next checkpoint goes to the other slot.
    checkpoint_seq: u32,
    /// Device ranges of the entries applied in place since the checkpoint, left in the cache:
    /// written back (merged by line) when the checkpoint next moves.
    applied: Vec<(u64, u64)>,
    scratch: Vec<u8>,
    meta_start: u64,
    meta_end: u64,
}

/// What recovery found.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct RecoveryReport {
    /// Committed journal records applied again because the checkpoint had not passed them.
    pub replayed_records: u64,
    /// Their length in bytes, headers included.
    pub replayed_bytes: u64,
}

/// Where recovery starts, and the sequence of the slot that says so: the valid slot with the
/// later sequence, or the plain checkpoint word on an image made before the slots (neither
/// valid).
fn checkpoint_of(hdr: &RawJournalHeader) -> (u64, u32) {
    let valid: Vec<&RawCheckpoint> = hdr.slots.iter().filter(|s| s.valid()).collect();
    match valid[..] {
        [] => (hdr.checkpoint.get(), 0),
        [one] => (one.pos.get(), one.seq.get()),
        [a, b, ..] => {
            // Sequences wrap: the later is the one the other is behind of by less than half.
            let later = if b.seq.get().wrapping_sub(a.seq.get()) as i32 > 0 { b } else { a };
            (later.pos.get(), later.seq.get())
        }
    }
}

impl Journal {
    /// Writes an empty journal (mkfs).
    pub fn format(dev: &Device, geo: &Geometry) -> Result<()> {
        dev.zero(JOURNAL_RING_OFF, geo.journal_len)?;
        let hdr = RawJournalHeader {
            magic: JOURNAL_MAGIC.into(),
            checkpoint: 0.into(),
            slots: [RawCheckpoint::new(0, 0), RawCheckpoint::default()],
            reserved: [0; 16],
        };
        dev.write_obj(JOURNAL_HEADER_OFF, &hdr)?;
        Ok(())
    }

    /// Replays committed records after the checkpoint, then starts a fresh ring.
    pub fn recover(dev: &Device, geo: &Geometry) -> Result<(Journal, RecoveryReport)> {
        let hdr: RawJournalHeader = dev.read_obj(JOURNAL_HEADER_OFF)?;
        if hdr.magic.get() != JOURNAL_MAGIC {
            return Err(Error::Corrupt { what: "journal header magic", at: JOURNAL_HEADER_OFF });
        }
        let (start, seq) = checkpoint_of(&hdr);
        if start > MAX_LOG_POS {
            return Err(Error::Corrupt { what: "journal checkpoint", at: CHECKPOINT_AT });
        }
        let mut j = Journal {
            ring_len: geo.journal_len,
            head: start,
            checkpoint: start,
            checkpoint_seq: seq,
            applied: Vec::new(),
            scratch: Vec::new(),
            meta_start: geo.inode_off,
            meta_end: geo.size_bytes,
        };
        let mut report = RecoveryReport::default();
        while let Some(len) = j.read_record(dev, j.head)? {
            let rec = std::mem::take(&mut j.scratch);
            let left = RawRecordHeader::read_from_prefix(&rec).expect("validated").0.entries.get();
            for entry in (EntryIter { buf: &rec[HEADER_LEN..len], left }) {
                let (off, data) = entry.map_err(|what| Error::Corrupt { what, at: j.ring_at(j.head) })?;
                dev.write(off, data)?;
            }
            j.scratch = rec;
            j.head += len as u64;
            report.replayed_records += 1;
            report.replayed_bytes += len as u64;
        }
        // Replayed entries persist before the checkpoint passes their records, and the
        // checkpoint moves before the ring is wiped: a crash in here replays every record again
        // or none. (Wiping first would let a crash keep an older record and lose a newer one,
        // and replaying the older alone rolls back bytes the newer had changed.)
        if dev.planted(Sabotage::WipeBeforeCheckpoint) {
            dev.fence();
            dev.zero(JOURNAL_RING_OFF, j.ring_len)?;
            j.set_checkpoint(dev, j.head)?;
            return Ok((j, report));
        }
        if !dev.planted(Sabotage::ReplayUnfenced) {
            dev.fence();
        }
        j.set_checkpoint(dev, j.head)?;
        dev.zero(JOURNAL_RING_OFF, j.ring_len)?;
        dev.fence();
        Ok((j, report))
    }

    fn ring_at(&self, pos: u64) -> u64 {
        JOURNAL_RING_OFF + pos % self.ring_len
    }

    /// Reads the record at `pos` into `scratch` if it is whole and valid; returns its length.
    fn read_record(&mut self, dev: &Device, pos: u64) -> Result<Option<usize>> {
        if pos % 64 != 0 {
            return Err(Error::Corrupt { what: "journal checkpoint alignment", at: CHECKPOINT_AT });
        }
        let mut h = [0u8; HEADER_LEN];
        self.ring_read(dev, pos, &mut h)?;
        let hdr = RawRecordHeader::read_from_bytes(&h).expect("sized");
        let len = hdr.len.get() as u64;
        if hdr.magic.get() != RECORD_MAGIC
            || hdr.pos.get() != pos
            || len < HEADER_LEN as u64
            || len % 64 != 0
            || len > self.ring_len / 2
        {
            return Ok(None);
        }
        self.scratch.resize(len as usize, 0);
        let mut buf = std::mem::take(&mut self.scratch);
        self.ring_read(dev, pos, &mut buf)?;
        let stored = hdr.crc.get();
        buf[4..8].fill(0);
        let ok = crc32c::crc32c(&buf) == stored || dev.planted(Sabotage::RecordUnchecked);
        buf[4..8].copy_from_slice(&stored.to_le_bytes());
        if ok {
            // A valid record may only write metadata: the inode table and the data area.
            for entry in (EntryIter { buf: &buf[HEADER_LEN..], left: hdr.entries.get() }) {
                let (off, data) = entry.map_err(|what| Error::Corrupt { what, at: self.ring_at(pos) })?;
                let end = off.checked_add(data.len() as u64);
                if off < self.meta_start || end.is_none_or(|e| e > self.meta_end) {
                    return Err(Error::Corrupt { what: "journal entry target", at: self.ring_at(pos) });
                }
            }
        }
        self.scratch = buf;
        Ok(ok.then_some(len as usize))
    }

    fn ring_read(&self, dev: &Device, pos: u64, buf: &mut [u8]) -> Result<()> {
        let start = pos % self.ring_len;
        let first = (self.ring_len - start).min(buf.len() as u64) as usize;
        dev.read(JOURNAL_RING_OFF + start, &mut buf[..first])?;
        dev.read(JOURNAL_RING_OFF, &mut buf[first..])
    }

    fn ring_write(&self, dev: &Device, pos: u64, buf: &[u8]) -> Result<()> {
        let start = pos % self.ring_len;
        let first = (self.ring_len - start).min(buf.len() as u64) as usize;
        dev.write(JOURNAL_RING_OFF + start, &buf[..first])?;
        dev.write(JOURNAL_RING_OFF, &buf[first..])
    }

    /// Stores the checkpoint in the slot that does not hold the current one (and in the plain
    /// word), and fences: a store torn anywhere leaves that slot invalid, and recovery starts
    /// from the previous checkpoint, whose records the ring still holds (no record goes over
    /// them before this fence).
    fn set_checkpoint(&mut self, dev: &Device, pos: u64) -> Result<()> {
        let seq = self.checkpoint_seq.wrapping_add(1);
        dev.write(SLOTS_AT + u64::from(seq % 2) * 16, RawCheckpoint::new(pos, seq).as_bytes())?;
        dev.store_u64(CHECKPOINT_AT, pos)?;
        dev.fence();
        (self.checkpoint, self.checkpoint_seq) = (pos, seq);
        Ok(())
    }

    /// Largest transaction (in ring bytes) a commit accepts.
    pub fn max_record_len(&self) -> u64 {
        self.ring_len / 2
    }

    /// Log position where the next record goes (bytes since mkfs; ring offset = position %
    /// ring length).
    pub fn head(&self) -> u64 {
        self.head
    }

    /// Ring bytes a commit may still take before it must move the checkpoint.
    #[cfg(feature = "crash-test")]
    pub fn room(&self) -> u64 {
        self.ring_len - (self.head - self.checkpoint)
    }

    #[cfg(test)]
    fn checkpoint_pos(&self) -> u64 {
        self.checkpoint
    }

    /// Moves the checkpoint to the head: the entries applied in place since the last one are
    /// written back and one fence makes them persistent, then the new position is stored and
    /// fenced. After it no replay rewrites anything logged so far.
    pub fn checkpoint(&mut self, dev: &Device) -> Result<u64> {
        if self.checkpoint != self.head {
            if !dev.planted(Sabotage::CheckpointUnflushed) {
                self.write_back_applied(dev)?;
            }
            self.applied.clear();
            dev.fence();
            self.set_checkpoint(dev, self.head)?;
        }
        Ok(self.checkpoint)
    }

    /// Writes back every line an entry applied since the checkpoint touched, each once.
    fn write_back_applied(&mut self, dev: &Device) -> Result<()> {
        const LINE: u64 = crate::device::LINE as u64;
        let lines = &mut self.applied;
        for r in lines.iter_mut() {
            *r = (r.0 / LINE * LINE, r.1.next_multiple_of(LINE));
        }
        lines.sort_unstable();
        let mut run: Option<(u64, u64)> = None;
        for &(start, end) in lines.iter() {
            match &mut run {
                Some((_, e)) if start <= *e => *e = (*e).max(end),
                _ => {
                    if let Some((s, e)) = run {
                        dev.flush(s, e - s)?;
                    }
                    run = Some((start, end));
                }
            }
        }
        if let Some((s, e)) = run {
            dev.flush(s, e - s)?;
        }
        Ok(())
    }

    /// Commits `tx`: durable when this returns. Content stored through the transaction is
    /// fenced before the record (DESIGN.md "Commit protocol").
    #[cfg(test)]
    pub fn commit(&mut self, dev: &Device, tx: &Tx) -> Result<Committed> {
        tx.fence_content(dev);
        self.commit_fenced(dev, tx)
    }

    /// Commits `tx`, whose content the calling thread has fenced ([`Tx::fence_content`]): a
    /// fence orders only its own thread's stores, and the thread that stores the content is
    /// the one that commits. Fencing before the journal lock keeps the content's drain out of
    /// the section every commit waits for.
    pub fn commit_fenced(&mut self, dev: &Device, tx: &Tx) -> Result<Committed> {
        let len = tx.record_len();
        if len > self.max_record_len() {
            return Err(Error::InvalidArgument("metadata transaction larger than half the journal"));
        }
        let mut done = Committed::default();
        let needed = if dev.planted(Sabotage::WrapOverlap) { 0 } else { len };
        if self.head + needed - self.checkpoint > self.ring_len {
            done.checkpoint = Some(self.checkpoint(dev)?);
        }
        let mut rec = std::mem::take(&mut self.scratch);
        rec.clear();
        let hdr = RawRecordHeader {
            magic: RECORD_MAGIC.into(),
            crc: 0.into(),
            pos: self.head.into(),
            len: (len as u32).into(),
            entries: tx.entries.into(),
            reserved: 0.into(),
        };
        rec.extend_from_slice(hdr.as_bytes());
        rec.extend_from_slice(&tx.buf);
        rec.resize(len as usize, 0);
        let crc = crc32c::crc32c(&rec);
        rec[4..8].copy_from_slice(&crc.to_le_bytes());
        if dev.planted(Sabotage::ApplyBeforeRecord) {
            for (off, data) in tx.entries() {
                dev.write(off, data)?;
            }
        }
        let written = self.ring_write(dev, self.head, &rec);
        self.scratch = rec;
        written?;
        if !dev.planted(Sabotage::RecordFence) {
            dev.fence();
        }
        self.head += len;
        for (off, data) in tx.entries() {
            dev.write_cached(off, data)?;
            let end = off + data.len() as u64;
            match self.applied.last_mut() {
                // Entries of one record often follow one another (an inode's fields, a block's).
                Some(last) if off <= last.1 && off >= last.0 => last.1 = last.1.max(end),
                _ => self.applied.push((off, end)),
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Device, Geometry) {
        let g = Geometry::plan(4 << 20, 4096, 64, 64 << 10).unwrap();
        let d = Device::heap(4 << 20).unwrap();
        Journal::format(&d, &g).unwrap();
        (d, g)
    }

    #[test]
    fn committed_records_replay_and_torn_ones_do_not() {
        let (d, g) = setup();
        let (mut j, _) = Journal::recover(&d, &g).unwrap();
        let target = g.inode_off;
        let mut tx = Tx::new();
        tx.put(target, &[1, 2, 3]);
        j.commit(&d, &tx).unwrap();
        // Undo the in-place apply, as if the crash came before it was written back.
        d.write(target, &[0, 0, 0]).unwrap();
        let head = j.head();
        let mut tx2 = Tx::new();
        tx2.put(target + 8, &[9; 100]);
        j.commit(&d, &tx2).unwrap();
        d.write(target + 8, &[0; 100]).unwrap();
        // Tear the second record: flip one byte of its payload.
        let at = JOURNAL_RING_OFF + head % g.journal_len + 40;
        let mut b = [0u8];
        d.read(at, &mut b).unwrap();
        d.write(at, &[b[0] ^ 0xff]).unwrap();
        let (j2, rep) = Journal::recover(&d, &g).unwrap();
        assert_eq!(rep.replayed_records, 1);
        let mut got = [0u8; 3];
        d.read(target, &mut got).unwrap();
        assert_eq!(got, [1, 2, 3]);
        let mut rest = [1u8; 100];
        d.read(target + 8, &mut rest).unwrap();
        assert_eq!(rest, [0; 100]);
        assert_eq!(j2.checkpoint_pos(), j2.head());
    }

    #[test]
    #[cfg_attr(miri, ignore = "5,000 commits take minutes under miri; tests/heap_device.rs wraps a small ring there")]
    fn the_ring_wraps_and_checkpoints() {
        let (d, g) = setup();
        let (mut j, _) = Journal::recover(&d, &g).unwrap();
        let mut checkpoints = 0;
        for i in 0..5000u64 {
            let mut tx = Tx::new();
            tx.put(g.inode_off + (i % 64) * 8, &i.to_le_bytes());
            tx.put(g.inode_off + 4096, &[i as u8; 200]);
            if j.commit(&d, &tx).unwrap().checkpoint.is_some() {
                checkpoints += 1;
            }
        }
        assert!(checkpoints > 10 && j.head() > 4 * g.journal_len);
        let (_, rep) = Journal::recover(&d, &g).unwrap();
        assert!(rep.replayed_records > 0);
        let v = d.load_u64(g.inode_off + (4999 % 64) * 8).unwrap();
        assert_eq!(v, 4999);
    }

    #[test]
    fn a_record_aimed_at_the_superblock_is_refused() {
        let (d, g) = setup();
        let (mut j, _) = Journal::recover(&d, &g).unwrap();
        let mut tx = Tx::new();
        tx.put(0, &[0; 8]);
        // Commit writes the record, then applies it: apply to the superblock is what recovery
        // must refuse, so restore the superblock bytes and check recovery's verdict.
        let mut sb = [0u8; 8];
        d.read(0, &mut sb).unwrap();
        j.commit(&d, &tx).unwrap();
        d.write(0, &sb).unwrap();
        assert!(matches!(Journal::recover(&d, &g), Err(Error::Corrupt { what: "journal entry target", .. })));
    }

    /// Commits until the checkpoint has moved `n` times; returns the journal.
    fn checkpointed(d: &Device, g: &Geometry, n: usize) -> Journal {
        let (mut j, _) = Journal::recover(d, g).unwrap();
        let mut moved = 0;
        let mut i = 0u64;
        while moved < n {
            let mut tx = Tx::new();
            tx.put(g.inode_off + (i % 64) * 8, &i.to_le_bytes());
            tx.put(g.inode_off + 4096, &[i as u8; 900]);
            moved += usize::from(j.commit(d, &tx).unwrap().checkpoint.is_some());
            i += 1;
        }
        j
    }

    fn slot(d: &Device, k: u64) -> RawCheckpoint {
        d.read_obj(SLOTS_AT + k * 16).unwrap()
    }

    #[test]
    fn the_checkpoint_alternates_between_two_checksummed_slots() {
        let (d, g) = setup();
        let j = checkpointed(&d, &g, 3);
        let (a, b) = (slot(&d, 0), slot(&d, 1));
        assert!(a.valid() && b.valid());
        let newer = if a.seq.get() > b.seq.get() { a } else { b };
        assert_eq!(newer.pos.get(), j.checkpoint_pos());
        assert_eq!(d.load_u64(CHECKPOINT_AT).unwrap(), j.checkpoint_pos());
        assert_eq!(a.seq.get().abs_diff(b.seq.get()), 1);
    }

    /// A checkpoint store torn at any byte — below the 8-byte atomicity the media promise, as a
    /// 4-byte store would tear it — leaves its slot invalid: recovery starts from the previous
    /// checkpoint, whose records the ring still holds (a tear exists only until the checkpoint's
    /// own fence, before any record goes over them), and replays to the same state.
    #[test]
    fn a_torn_checkpoint_slot_falls_back_to_the_previous_one() {
        let (d, g) = setup();
        let (mut j, _) = Journal::recover(&d, &g).unwrap();
        let commit = |j: &mut Journal, i: u64| {
            let mut tx = Tx::new();
            tx.put(g.inode_off + (i % 8) * 8, &(i + 100).to_le_bytes());
            j.commit(&d, &tx).unwrap();
        };
        (0..3).for_each(|i| commit(&mut j, i));
        let previous = j.checkpoint(&d).unwrap();
        (3..9).for_each(|i| commit(&mut j, i));
        let newest_pos = j.checkpoint(&d).unwrap();
        assert!(newest_pos > previous);
        let newest = u64::from(j.checkpoint_seq % 2);
        let good = slot(&d, newest);
        assert_eq!(good.pos.get(), newest_pos);
        let mut before = vec![0u8; 64];
        d.read(g.inode_off, &mut before).unwrap();
        // Everything recovery reads or writes: the header, the ring, the entries' targets.
        let mut image = vec![0u8; (g.inode_off + 4096) as usize];
        d.read(0, &mut image).unwrap();
        for cut in [1usize, 4, 8, 12] {
            d.write(0, &image).unwrap();
            // The first `cut` bytes new, the rest as the checkpoint before the last left them.
            let mut torn = RawCheckpoint::new(0, good.seq.get().wrapping_sub(2));
            torn.as_mut_bytes()[..cut].copy_from_slice(&good.as_bytes()[..cut]);
            d.write(SLOTS_AT + newest * 16, torn.as_bytes()).unwrap();
            let hdr: RawJournalHeader = d.read_obj(JOURNAL_HEADER_OFF).unwrap();
            assert_eq!(checkpoint_of(&hdr).0, previous, "torn after {cut} bytes");
            // Undo the applied entries: only the replay can bring them back.
            d.zero(g.inode_off, 64).unwrap();
            let (_, rep) = Journal::recover(&d, &g).unwrap();
            assert_eq!(rep.replayed_records, 6, "torn after {cut} bytes");
            let mut after = vec![0u8; 64];
            d.read(g.inode_off, &mut after).unwrap();
            // Words 1 and 2 came from records before the previous checkpoint: not replayed.
            assert_eq!((&before[..8], &before[24..]), (&after[..8], &after[24..]), "torn after {cut} bytes");
        }
    }

    #[test]
    fn an_image_from_before_the_slots_starts_from_its_checkpoint_word() {
        let (d, g) = setup();
        let j = checkpointed(&d, &g, 2);
        let pos = j.checkpoint_pos();
        d.zero(SLOTS_AT, 32).unwrap();
        let hdr: RawJournalHeader = d.read_obj(JOURNAL_HEADER_OFF).unwrap();
        assert_eq!(checkpoint_of(&hdr), (pos, 0));
        let (j2, _) = Journal::recover(&d, &g).unwrap();
        assert!(slot(&d, 1).valid(), "recovery's checkpoint went to a slot");
        assert_eq!(j2.checkpoint_pos(), slot(&d, 1).pos.get());
    }

    #[test]
    fn slot_sequences_compare_across_the_wrap() {
        let hdr = |a: (u64, u32), b: (u64, u32)| RawJournalHeader {
            magic: JOURNAL_MAGIC.into(),
            checkpoint: 7.into(),
            slots: [RawCheckpoint::new(a.0, a.1), RawCheckpoint::new(b.0, b.1)],
            reserved: [0; 16],
        };
        assert_eq!(checkpoint_of(&hdr((64, 5), (128, 6))).0, 128);
        assert_eq!(checkpoint_of(&hdr((64, u32::MAX), (128, 0))).0, 128);
        assert_eq!(checkpoint_of(&hdr((64, 0), (128, u32::MAX))).0, 64);
    }
}
