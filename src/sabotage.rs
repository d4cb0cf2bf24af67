//! Planted bugs: each switch breaks one rule of the commit protocol, of recovery, or of the
//! zeroing that keeps stale bytes out of files, so the crash explorer can be shown to catch it
//! (`tests/mutants.rs`, `udax crashtest --sabotage NAME`). A device carries the switch, so an
//! image recovered from a crash state keeps it; it can be turned on only with the `crash-test`
//! feature ([`crate::Device::sabotage`]), and without it every check is a constant `false`.

/// One planted bug (or none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Sabotage {
    /// No bug planted: the shipped behaviour.
    #[default]
    None,
    /// Commit: no fence between a transaction's content and its record.
    ContentFence,
    /// Commit: no fence after the record, so operations return before they are durable.
    RecordFence,
    /// Commit: entries applied in place before the record is written.
    ApplyBeforeRecord,
    /// Recovery: a record whose checksum does not match is replayed anyway.
    RecordUnchecked,
    /// Recovery: the ring is wiped before the new checkpoint is stored.
    WipeBeforeCheckpoint,
    /// Recovery: no fence between replaying records and storing the checkpoint past them.
    ReplayUnfenced,
    /// Commit: the test for room in the ring leaves out the new record's own length, so it can
    /// overwrite the oldest record recovery still needs.
    WrapOverlap,
    /// Freed blocks are reusable at once, before the checkpoint passes the records that wrote
    /// them (a replay then writes old metadata into a reused block).
    EarlyReuse,
    /// A write into new blocks stores its data but not the zeros around it.
    EdgeZeros,
    /// Truncate-down leaves the tail of the new last block as it was.
    TruncateTail,
    /// A first store through a mapping into a hole maps its new block without zeroing it.
    FirstStoreZeros,
    /// A write that grows a file stores the new size into the inode in place before its commit.
    SizeInPlace,
    /// Rename removes the old name and adds the new one in two transactions.
    RenameSplit,
    /// setxattr writes an existing attribute block in place before its commit.
    XattrInPlace,
    /// unlink clears the directory entry in place before its commit.
    EntryInPlace,
    /// Checkpoint: the position moves past records whose entries were applied in place but
    /// never written back, so a crash can lose them with nothing left to replay.
    CheckpointUnflushed,
    /// msync leaves out the first page of those found stored to since the last one.
    MsyncDropsPage,
}

#[cfg(feature = "crash-test")]
impl Sabotage {
    /// Every planted bug, with the name `udax crashtest --sabotage` takes.
    pub const ALL: [(&'static str, Sabotage); 17] = [
        ("content-fence", Sabotage::ContentFence),
        ("record-fence", Sabotage::RecordFence),
        ("apply-before-record", Sabotage::ApplyBeforeRecord),
        ("record-unchecked", Sabotage::RecordUnchecked),
        ("wipe-before-checkpoint", Sabotage::WipeBeforeCheckpoint),
        ("replay-unfenced", Sabotage::ReplayUnfenced),
        ("wrap-overlap", Sabotage::WrapOverlap),
        ("early-reuse", Sabotage::EarlyReuse),
        ("edge-zeros", Sabotage::EdgeZeros),
        ("truncate-tail", Sabotage::TruncateTail),
        ("first-store-zeros", Sabotage::FirstStoreZeros),
        ("size-in-place", Sabotage::SizeInPlace),
        ("rename-split", Sabotage::RenameSplit),
        ("xattr-in-place", Sabotage::XattrInPlace),
        ("entry-in-place", Sabotage::EntryInPlace),
        ("checkpoint-unflushed", Sabotage::CheckpointUnflushed),
        ("msync-drops-page", Sabotage::MsyncDropsPage),
    ];

    /// The name `udax crashtest --sabotage` takes.
    pub fn name(self) -> &'static str {
        Sabotage::ALL.iter().find(|&&(_, s)| s == self).map_or("none", |&(n, _)| n)
    }
}
