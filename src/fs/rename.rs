//! rename(2), with RENAME_NOREPLACE and RENAME_EXCHANGE.

use std::sync::atomic::Ordering;

use crate::alloc::Run;
use crate::dir::{Entry, DT_DIR};
use crate::error::{Error, Result};
use crate::inode::{Inode, Timespec};
use crate::journal::Tx;
use crate::layout::{self, check_name, ROOT_INO};
use crate::sync::{lock, rd, wr};

use super::mmap::unmapped;
use super::node::Node;
use super::state::Fs;
use super::types::{RenameMode, LINK_MAX};

/// What a rename moves: the names, the entries found under them, and whether the parents
/// differ.
struct Move<'n> {
    parent: u64,
    name: &'n [u8],
    newparent: u64,
    newname: &'n [u8],
    src: Entry,
    dst: Option<Entry>,
    cross: bool,
}

/// The inodes a rename holds, locked in lock order: the source's parent, the destination's
/// parent when it is another directory, the source, and the target it replaces or exchanges with.
struct Held<'g> {
    sp: &'g mut Inode,
    dp: Option<&'g mut Inode>,
    src: &'g mut Inode,
    dst: Option<&'g mut Inode>,
}

impl Fs {
    /// Renames `parent/name` to `newparent/newname` atomically, replacing a target unless
    /// `mode` says otherwise.
    pub fn rename(&self, parent: u64, name: &[u8], newparent: u64, newname: &[u8], how: RenameMode) -> Result<()> {
        self.rename_nodes(&*self.node(parent)?, name, &*self.node(newparent)?, newname, how)
    }

    /// [`Fs::rename`] between the directories `sp` and `dp` themselves.
    pub(crate) fn rename_nodes(
        &self,
        sp: &Node,
        name: &[u8],
        dp: &Node,
        newname: &[u8],
        how: RenameMode,
    ) -> Result<()> {
        let _change = self.writable()?;
        let (name, newname) = (&*unmapped(name), &*unmapped(newname));
        check_names(name, newname)?;
        let geo = self.inner.geo;
        let (parent, newparent) = (sp.ino, dp.ino);
        let cross = parent != newparent;
        if !sp.is_dir || !dp.is_dir {
            return Err(Error::NotDir);
        }
        // Any rename that holds two directories besides one parent takes the rename lock: a
        // cross-directory one (two parents), and one that moves or replaces a directory (a
        // directory child). Peek at the entries first, one lock at a time; if they change
        // before the real locking, that is noticed below and the rename starts over.
        let is_dir_entry =
            |n: &Node, nm: &[u8]| rd(&n.inode).dir().ok().and_then(|d| d.get(nm)).is_some_and(|e| e.dtype == DT_DIR);
        let exclusive = cross || is_dir_entry(sp, name) || is_dir_entry(dp, newname);
        let _rename_guard = exclusive.then(|| lock(&self.inner.rename));
        // Parents: an ancestor before its descendant, else in ascending inode order (the
        // rename lock keeps the tree's shape still while this is decided).
        let source_first = cross
            && (self.is_ancestor(parent, newparent)? || (!self.is_ancestor(newparent, parent)? && parent < newparent));
        let (mut sg, mut dg_own) = if !cross {
            (wr(&sp.inode), None)
        } else if source_first {
            let s = wr(&sp.inode);
            (s, Some(wr(&dp.inode)))
        } else {
            let d = wr(&dp.inode);
            (wr(&sp.inode), Some(d))
        };
        let src = *sg.dir()?.get(name).ok_or(Error::NotFound)?;
        let dst = match &dg_own {
            Some(d) => d.dir()?.get(newname).copied(),
            // The same name: it exists (it is the source), so only RENAME_NOREPLACE refuses it.
            None if name == newname => return (how != RenameMode::NoReplace).then_some(()).ok_or(Error::Exists),
            None => sg.dir()?.get(newname).copied(),
        };
        if dg_own.as_ref().is_some_and(|d| d.attr.nlink == 0) {
            return Err(Error::NotFound);
        }
        let src_is_dir = src.dtype == DT_DIR;
        if !exclusive && (src_is_dir || dst.is_some_and(|d| d.dtype == DT_DIR)) {
            drop((sg, dg_own));
            return self.rename_nodes(sp, name, dp, newname, how);
        }
        let m = Move { parent, name, newparent, newname, src, dst, cross };
        if self.nothing_to_move(&m, how)? {
            return Ok(());
        }
        // Children: directories before non-directories (a file hard-linked into a directory
        // that is another operation's parent must come after it), then ascending number.
        let sc = self.node(src.ino)?;
        let dc = dst.map(|d| self.node(d.ino)).transpose()?;
        let (mut scg, mut dcg) = match &dc {
            None => (wr(&sc.inode), None),
            Some(dcn) if (!sc.is_dir, src.ino) < (!dcn.is_dir, dst.map_or(0, |d| d.ino)) => {
                let a = wr(&sc.inode);
                (a, Some(wr(&dcn.inode)))
            }
            Some(dcn) => {
                let b = wr(&dcn.inode);
                (wr(&sc.inode), Some(b))
            }
        };
        check_kinds(&m, how, dcg.as_deref(), dg_own.as_deref())?;

        let now = Timespec::now();
        let mut tx = Tx::new();
        let mut taken = Vec::new();
        // Memory changes with the transaction; a failure puts all four inodes back.
        let mut held = Held { sp: &mut sg, dp: dg_own.as_deref_mut(), src: &mut scg, dst: dcg.as_deref_mut() };
        let renamed = (|| {
            match how {
                RenameMode::Exchange => self.log_exchange(&mut held, &m, now, &mut tx)?,
                RenameMode::Replace | RenameMode::NoReplace => {
                    self.log_move(&mut held, &m, now, &mut tx, &mut taken)?
                }
            }
            held.src.attr.ctime = now;
            held.src.log_attr(&geo, &mut tx);
            held.sp.attr.mtime = now;
            held.sp.attr.ctime = now;
            held.sp.log_attr(&geo, &mut tx);
            if let Some(d) = held.dp.as_deref_mut() {
                d.attr.mtime = now;
                d.attr.ctime = now;
                d.log_attr(&geo, &mut tx);
            }
            self.commit(&tx)
        })();
        let head = match renamed {
            Ok(head) => head,
            Err(e) => {
                self.restore(&mut sg, taken);
                for g in [dg_own.as_deref_mut(), Some(&mut *scg), dcg.as_deref_mut()].into_iter().flatten() {
                    self.restore(g, Vec::new());
                }
                return Err(e);
            }
        };
        sc.parent.store(scg.attr.parent, Ordering::Release);
        if let (Some(v), Some(dcn)) = (dcg.as_mut(), dc.as_ref()) {
            dcn.parent.store(v.attr.parent, Ordering::Release);
            if how != RenameMode::Exchange && v.attr.nlink == 0 && v.open == 0 {
                self.forget_freed(v, head);
            }
        }
        Ok(())
    }

    /// The checks on the two names before any child is locked: a directory moved under
    /// itself, a target that exists (NOREPLACE) or is missing (EXCHANGE), an ancestor as
    /// target. True when source and target are one inode: nothing to do.
    fn nothing_to_move(&self, m: &Move<'_>, how: RenameMode) -> Result<bool> {
        let geo = self.inner.geo;
        if m.src.ino == m.parent || m.dst.is_some_and(|d| d.ino == m.newparent) {
            return Err(Error::Corrupt { what: "directory entry names its own directory", at: geo.inode_at(m.parent) });
        }
        if m.cross && m.src.dtype == DT_DIR && self.is_ancestor(m.src.ino, m.newparent)? {
            return Err(Error::InvalidArgument("cannot move a directory into itself"));
        }
        let Some(d) = m.dst else {
            return if how == RenameMode::Exchange { Err(Error::NotFound) } else { Ok(false) };
        };
        if how == RenameMode::NoReplace {
            return Err(Error::Exists);
        }
        if d.ino == m.src.ino {
            return Ok(true);
        }
        // A target that is an ancestor of the source is never empty.
        if m.cross && d.dtype == DT_DIR && self.is_ancestor(d.ino, m.parent)? {
            return Err(match how {
                RenameMode::Exchange => Error::InvalidArgument("cannot move a directory into itself"),
                _ => Error::NotEmpty,
            });
        }
        Ok(false)
    }

    /// RENAME_EXCHANGE: each name points at the other inode; a directory moved to the other
    /// parent takes its `..` link along.
    fn log_exchange(&self, h: &mut Held<'_>, m: &Move<'_>, now: Timespec, tx: &mut Tx) -> Result<()> {
        let geo = self.inner.geo;
        let d = m.dst.expect("an exchange has a target");
        let dcg = h.dst.as_deref_mut().expect("an exchange holds both inodes");
        let (e1, h1) = h.sp.dir_mut()?.retarget(m.name, d.ino, d.dtype).expect("present");
        tx.put(self.dir_off(h.sp, e1.pos)?, &h1);
        let dg = h.dp.as_deref_mut().unwrap_or(&mut *h.sp);
        let (e2, h2) = dg.dir_mut()?.retarget(m.newname, m.src.ino, m.src.dtype).expect("present");
        tx.put(self.dir_off(dg, e2.pos)?, &h2);
        if m.cross {
            let dg = h.dp.as_deref_mut().expect("a cross-directory rename holds both parents");
            let (s_dir, d_dir) = (h.src.is_dir(), dcg.is_dir());
            if s_dir {
                h.src.attr.parent = m.newparent;
            }
            if d_dir {
                dcg.attr.parent = m.parent;
            }
            match (s_dir, d_dir) {
                (true, false) => {
                    h.sp.attr.nlink = h.sp.attr.nlink.saturating_sub(1);
                    dg.attr.nlink = dg.attr.nlink.saturating_add(1);
                }
                (false, true) => {
                    h.sp.attr.nlink = h.sp.attr.nlink.saturating_add(1);
                    dg.attr.nlink = dg.attr.nlink.saturating_sub(1);
                }
                _ => {}
            }
        }
        dcg.attr.ctime = now;
        dcg.log_attr(&geo, tx);
        Ok(())
    }

    /// A plain rename: the new name (added, or replacing a target, which loses a link), then
    /// the old name removed.
    fn log_move(&self, h: &mut Held<'_>, m: &Move<'_>, now: Timespec, tx: &mut Tx, taken: &mut Vec<Run>) -> Result<()> {
        let geo = self.inner.geo;
        // The new name first: adding may fail (ENOSPC) and must leave nothing changed.
        {
            let dg = h.dp.as_deref_mut().unwrap_or(&mut *h.sp);
            match m.dst {
                Some(_) => {
                    let (e, eh) = dg.dir_mut()?.retarget(m.newname, m.src.ino, m.src.dtype).expect("present");
                    tx.put(self.dir_off(dg, e.pos)?, &eh);
                }
                None => self.add_entry(dg, m.newname, m.src.ino, m.src.dtype, tx, taken)?,
            }
        }
        if self.planted(crate::sabotage::Sabotage::RenameSplit) {
            self.commit(tx)?;
            *tx = Tx::new();
        }
        let (removed, zeros) = h.sp.dir_mut()?.remove(m.name).expect("present");
        tx.put(self.dir_off(h.sp, removed.pos)?, &zeros);
        let dg = h.dp.as_deref_mut().unwrap_or(&mut *h.sp);
        if let Some(v) = h.dst.as_deref_mut() {
            if v.is_dir() {
                v.attr.nlink = 0;
                dg.attr.nlink = dg.attr.nlink.saturating_sub(1);
            } else {
                v.attr.nlink = v.attr.nlink.saturating_sub(1);
            }
            v.attr.ctime = now;
            if v.attr.nlink == 0 && v.open == 0 {
                v.log_free(&geo, tx);
            } else {
                v.log_attr(&geo, tx);
            }
        }
        if m.src.dtype == DT_DIR && m.cross {
            h.src.attr.parent = m.newparent;
            h.sp.attr.nlink = h.sp.attr.nlink.saturating_sub(1);
            let d = h.dp.as_deref_mut().expect("a cross-directory rename holds both parents");
            d.attr.nlink = d.attr.nlink.saturating_add(1);
        }
        Ok(())
    }

    /// Whether directory `a` is `b` or one of its ancestors (walks `b`'s parent pointers; the
    /// caller holds the rename lock, so they do not move).
    pub(super) fn is_ancestor(&self, a: u64, b: u64) -> Result<bool> {
        let mut at = b;
        for _ in 0..=self.inner.geo.inode_count {
            if at == a {
                return Ok(true);
            }
            if at == ROOT_INO {
                return Ok(false);
            }
            at = self.node(at)?.parent.load(Ordering::Acquire);
        }
        Err(Error::Corrupt { what: "directory parent loop", at: self.inner.geo.inode_at(b) })
    }
}

/// The names a rename takes: an existing name may be as long as any, a new one must be valid.
fn check_names(name: &[u8], newname: &[u8]) -> Result<()> {
    check_name(newname)?;
    if name.len() > layout::NAME_MAX {
        return Err(Error::NameTooLong);
    }
    check_name(name)
}

/// The checks once the target is locked: a replaced target must be of the source's kind (and
/// an empty directory), and a directory moved to another parent must not overflow its links.
fn check_kinds(m: &Move<'_>, how: RenameMode, target: Option<&Inode>, new_parent: Option<&Inode>) -> Result<()> {
    let src_is_dir = m.src.dtype == DT_DIR;
    if let (RenameMode::Replace, Some(v)) = (how, target) {
        match (src_is_dir, v.is_dir()) {
            (true, false) => return Err(Error::NotDir),
            (false, true) => return Err(Error::IsDir),
            (true, true) if !v.dir()?.is_empty() => return Err(Error::NotEmpty),
            _ => {}
        }
    }
    if how != RenameMode::Exchange && m.dst.is_none() && m.cross && src_is_dir {
        let d = new_parent.expect("a cross-directory rename holds both parents");
        if d.attr.nlink >= LINK_MAX {
            return Err(Error::TooManyLinks);
        }
    }
    Ok(())
}
