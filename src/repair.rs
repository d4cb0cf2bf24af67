//! `udax fsck --repair`: mends the damage mount tolerates (DESIGN "Damaged images"), each repair
//! one journaled transaction, so a crash during repair leaves an image that mounts with what
//! is not yet mended. Damage mount refuses (a bad superblock or journal, a block owned twice, a
//! directory cycle) never reaches here; free space is not stored (mount rebuilds it from what
//! inodes own), so no block can leak on the medium.
//!
//! In order: inode slots that do not decode are cleared; in each directory, runs of units that
//! hold no entry that decodes are zeroed, entries that name free inodes are removed, entries
//! whose type disagrees with their inode are corrected; written blocks past the page holding
//! EOF are freed, generation 0 becomes 1; symlinks whose size or blocks hold no valid target
//! lose their names (and so are freed); then files and directories no entry names are linked
//! into `/lost+found` as `#<inode>`, and every link count is set to what the entries say.

use std::sync::Arc;

use zerocopy::{FromZeros, IntoBytes};

use crate::dir::DT_DIR;
use crate::error::{Error, Result};
use crate::extent::{Extent, State};
use crate::fs::{Creds, Fs, Node};
use crate::inode::Inode;
use crate::journal::Tx;
use crate::layout::{mode, RawInode, ROOT_INO, SYMLINK_MAX};
use crate::sync::{lock, rd, wr};

/// One repair made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Repair {
    /// What was mended, in fsck's words ("dangling entry", "link count", ...).
    pub kind: &'static str,
    /// The inode mended, or the directory whose entry was.
    pub ino: u64,
    /// What was done, in words.
    pub detail: String,
}

/// Where unreachable files go, as on ext4.
pub const LOST_FOUND: &[u8] = b"lost+found";

impl Fs {
    /// Mends what fsck finds on a mounted image (see the module comment); returns what it did.
    /// Run [`crate::check::check`] afterwards for what is left.
    pub fn repair(&self) -> Result<Vec<Repair>> {
        let _change = self.writable()?;
        // The tree's shape stays still while it is mended.
        let _rename = lock(&self.inner.rename);
        let mut done = Vec::new();
        if crate::faults::idle_repair() {
            return Ok(done);
        }
        self.clear_damaged_inodes(&mut done)?;
        for (ino, node) in self.all_nodes() {
            if node.is_dir {
                self.clear_damaged_entries(ino, &node, &mut done)?;
                self.repair_entries(ino, &node, &mut done)?;
            }
            self.repair_inode(ino, &node, &mut done)?;
        }
        self.clear_bad_symlinks(&mut done)?;
        self.repair_links(&mut done)?;
        Ok(done)
    }

    /// Every inode's node (loading those mount left unloaded), in number order.
    fn all_nodes(&self) -> Vec<(u64, Arc<Node>)> {
        self.inode_numbers().into_iter().filter_map(|i| self.node(i).ok().map(|n| (i, n))).collect()
    }

    /// Clears every inode slot mount could not decode (as e2fsck clears an inode it cannot
    /// read): each slot is written free in a transaction of its own, keeping its generation so
    /// a later owner gets a higher one. Entries naming it are then dangling (removed below), and
    /// what it named is disconnected (linked into /lost+found below). Its number stays out of
    /// use until the next mount; the blocks it may have referenced are given back.
    fn clear_damaged_inodes(&self, done: &mut Vec<Repair>) -> Result<()> {
        let geo = self.inner.geo;
        let damaged = self.damaged_inodes();
        let mut head = None;
        for &(ino, what, at) in &damaged {
            let raw: RawInode = self.inner.dev.read_obj(geo.inode_at(ino))?;
            let free = RawInode { generation: raw.generation, ..RawInode::new_zeroed() };
            self.clear_lane(ino)?;
            let mut tx = Tx::new();
            tx.put(geo.inode_at(ino), &free.as_bytes()[..crate::layout::INODE_LANE_OFF as usize]);
            head = Some(self.commit(&tx)?);
            wr(&self.inner.damaged).remove(&ino);
            done.push(Repair { kind: "damaged inode", ino, detail: format!("cleared (bad {what} at byte {at:#x})") });
        }
        // No slot can reference the held blocks now: what no inode owns is free after the
        // clearing commits (a block an inode frees meanwhile stays out of use until the next
        // mount, which only costs space).
        if let Some(head) = head {
            let owned: Vec<_> =
                self.all_nodes().iter().flat_map(|(_, n)| rd(&n.inode).owned_runs().collect::<Vec<_>>()).collect();
            self.release_held(head, owned);
        }
        Ok(())
    }

    /// Zeroes the runs of units in directory `ino` that hold no entry that decodes, which makes
    /// them free units.
    fn clear_damaged_entries(&self, ino: u64, node: &Node, done: &mut Vec<Repair>) -> Result<()> {
        let mut g = wr(&node.inode);
        let runs: Vec<(u64, u64, &'static str)> = g.dir()?.damaged().collect();
        if runs.is_empty() {
            return Ok(());
        }
        self.undoable(&mut g, |g, _| {
            let mut tx = Tx::new();
            for (pos, zeros) in g.dir_mut()?.clear_damaged() {
                tx.put(self.dir_off(g, pos)?, &zeros);
            }
            self.commit(&tx).map(drop)
        })?;
        for (pos, units, what) in runs {
            done.push(Repair {
                kind: "damaged directory entry",
                ino,
                detail: format!("cleared {units} unit(s) at byte {pos} (bad {what})"),
            });
        }
        Ok(())
    }

    /// Entries of directory `ino` that name free inodes or say the wrong type.
    fn repair_entries(&self, ino: u64, node: &Node, done: &mut Vec<Repair>) -> Result<()> {
        let mut g = wr(&node.inode);
        let entries: Vec<(Vec<u8>, u64, u8)> =
            g.dir()?.entries_after(None).map(|(name, e)| (name.to_vec(), e.ino, e.dtype)).collect();
        for (name, target, dtype) in entries {
            let shown = String::from_utf8_lossy(&name).into_owned();
            let Ok(t) = self.node(target) else {
                self.remove_dangling(&mut g, &name, dtype == DT_DIR)?;
                done.push(Repair {
                    kind: "dangling entry",
                    ino,
                    detail: format!("removed {shown:?}, which named free inode {target}"),
                });
                continue;
            };
            // Mount refuses a directory entry for a non-directory and the reverse, so only the
            // kinds of non-directories can disagree here; a child is locked after its directory.
            let want = mode::dtype(rd(&t.inode).attr.mode);
            if want != dtype && !t.is_dir {
                self.undoable(&mut g, |g, _| {
                    let mut tx = Tx::new();
                    let (e, hdr) = g.dir_mut()?.retarget(&name, target, want).ok_or(Error::NotFound)?;
                    tx.put(self.dir_off(g, e.pos)?, &hdr);
                    self.commit(&tx).map(drop)
                })?;
                done.push(Repair {
                    kind: "entry type",
                    ino,
                    detail: format!("{shown:?} said type {dtype}, inode {target} is type {want}"),
                });
            }
        }
        Ok(())
    }

    /// One inode's own fields: written blocks past the page holding EOF, generation 0.
    fn repair_inode(&self, ino: u64, node: &Node, done: &mut Vec<Repair>) -> Result<()> {
        let geo = self.inner.geo;
        let bs = geo.block_size;
        let mut g = wr(&node.inode);
        let eof_page_end = g.attr.size.next_multiple_of(crate::PAGE.max(bs)) / bs;
        let past: Vec<Extent> =
            g.ext.iter().filter(|e| e.state == State::Written && e.end() > eof_page_end).copied().collect();
        if !past.is_empty() && !g.is_dir() {
            let freed = self.undoable(&mut g, |g, _| {
                let mut tx = Tx::new();
                let mut freed = Vec::new();
                for e in &past {
                    let from = e.logical.max(eof_page_end);
                    freed.extend(g.ext.remove_range(from, e.end() - from, &mut tx)?);
                }
                g.log_attr(&geo, &mut tx);
                let head = self.commit(&tx)?;
                Ok((head, freed))
            })?;
            let blocks: u64 = freed.1.iter().map(|e| e.len).sum();
            self.free_after(ino, freed.0, freed.1.iter().map(Extent::run).collect());
            done.push(Repair {
                kind: "extent past EOF",
                ino,
                detail: format!("freed {blocks} written blocks past size {}", g.attr.size),
            });
        }
        if g.attr.generation == 0 {
            self.set_attr_logged(&mut g, |g| g.attr.generation = 1)?;
            done.push(Repair { kind: "inode", ino, detail: "generation 0 set to 1".into() });
        }
        Ok(())
    }

    /// Removes every name of a symlink whose size or blocks are not a target's (as e2fsck
    /// clears it): the last removal frees it.
    fn clear_bad_symlinks(&self, done: &mut Vec<Repair>) -> Result<()> {
        let bs = self.inner.geo.block_size;
        let bad: std::collections::HashSet<u64> = self
            .all_nodes()
            .into_iter()
            .filter(|(_, n)| {
                let g = rd(&n.inode);
                let covered: u64 = g.ext.iter().map(|e| e.len).sum();
                mode::is_symlink(g.attr.mode)
                    && (g.attr.size == 0 || g.attr.size > SYMLINK_MAX as u64 || covered != g.attr.size.div_ceil(bs))
            })
            .map(|(i, _)| i)
            .collect();
        if bad.is_empty() {
            return Ok(());
        }
        let mut names: Vec<(u64, Vec<u8>, u64)> = Vec::new();
        for (dir, node) in self.all_nodes().into_iter().filter(|(_, n)| n.is_dir) {
            let g = rd(&node.inode);
            let found = g.dir()?.entries_after(None).filter(|(_, e)| bad.contains(&e.ino));
            names.extend(found.map(|(name, e)| (dir, name.to_vec(), e.ino)));
        }
        // Link counts first, so the last unlink frees the inode (and one nobody names goes now).
        for &ino in &bad {
            let count = names.iter().filter(|n| n.2 == ino).count() as u32;
            let node = self.node(ino)?;
            let mut g = wr(&node.inode);
            if g.attr.nlink != count {
                self.set_attr_logged(&mut g, |g| g.attr.nlink = count)?;
            }
            if count == 0 && g.open == 0 {
                self.free_inode(&mut g)?;
                done.push(Repair {
                    kind: "symlink",
                    ino,
                    detail: "freed an unnamed symlink with no valid target".into(),
                });
            }
        }
        for (dir, name, ino) in names {
            self.unlink(dir, &name)?;
            done.push(Repair {
                kind: "symlink",
                ino,
                detail: format!("removed {:?}, a symlink with no valid target", String::from_utf8_lossy(&name)),
            });
        }
        Ok(())
    }

    /// Links every file and directory that no entry names into /lost+found and sets each link
    /// count to what the entries say (directories: 2 + subdirectories).
    fn repair_links(&self, done: &mut Vec<Repair>) -> Result<()> {
        let refs = crate::fs::count_entries(&self.inner.nodes.to_map());
        for (ino, node) in self.all_nodes() {
            let named = refs.get(&ino).copied().unwrap_or(0);
            if named == 0 && ino != ROOT_INO {
                // Orphans (nlink 0, unnamed) were freed by mount; a file left open is not one.
                // An unnamed directory heads a tree detached by damage.
                if rd(&node.inode).attr.nlink == 0 {
                    continue;
                }
                let name = self.adopt(ino, &node)?;
                done.push(Repair {
                    kind: "disconnected",
                    ino,
                    detail: format!("linked as /lost+found/{}", String::from_utf8_lossy(&name)),
                });
                continue;
            }
            let mut g = wr(&node.inode);
            let want = match &g.dir {
                Some(d) => 2 + d.subdirs(),
                None => named,
            };
            let want = u32::try_from(want).unwrap_or(u32::MAX);
            if g.attr.nlink != want {
                let was = g.attr.nlink;
                self.set_attr_logged(&mut g, |g| g.attr.nlink = want)?;
                done.push(Repair { kind: "link count", ino, detail: format!("nlink {was} set to {want}") });
            }
        }
        Ok(())
    }

    /// Links unnamed file `ino` into /lost+found (made when missing) as `#<ino>`, with one link
    /// (a directory with 2 + its subdirectories, and /lost+found as its parent).
    fn adopt(&self, ino: u64, node: &Node) -> Result<Vec<u8>> {
        let root = self.node(ROOT_INO)?;
        let dir = match self.lookup_node(&root, LOST_FOUND) {
            Ok(n) => n,
            Err(Error::NotFound) => self.mkdir_in(&root, LOST_FOUND, 0o700, Creds::ROOT)?.1,
            Err(e) => return Err(e),
        };
        if !dir.is_dir {
            return Err(Error::NotDir);
        }
        let mut dg = wr(&dir.inode);
        let mut name = format!("#{ino}").into_bytes();
        for n in 1.. {
            if dg.dir()?.get(&name).is_none() {
                break;
            }
            name = format!("#{ino}.{n}").into_bytes();
        }
        // Lock order: /lost+found is the adopted directory's parent from now on.
        let mut g = wr(&node.inode);
        let nlink = g.dir.as_ref().map_or(1, |d| u32::try_from(2 + d.subdirs()).unwrap_or(u32::MAX));
        self.link_locked(&mut dg, &name, &mut g, nlink)?;
        node.parent.store(g.attr.parent, std::sync::atomic::Ordering::Release);
        Ok(name)
    }

    /// Changes `g`'s attributes with `f` and commits them.
    fn set_attr_logged(&self, g: &mut Inode, f: impl FnOnce(&mut Inode)) -> Result<()> {
        self.undoable(g, |g, _| {
            f(g);
            let mut tx = Tx::new();
            g.log_attr(&self.inner.geo, &mut tx);
            self.commit(&tx).map(drop)
        })
    }
}
