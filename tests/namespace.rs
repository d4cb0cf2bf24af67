//! Namespace semantics the random model does not reach: RENAME_EXCHANGE and RENAME_NOREPLACE,
//! directory link counts across moves, attribute changes (utimens, chown, chmod) and their
//! ctime rules, readdir cookies, and the std::io view of a file.

use std::io::{Read, Seek, SeekFrom, Write};

use udax::{Creds, Device, Fs, MkfsOptions, OpenOptions, RenameMode, SetAttr, SetTime, Timespec};

fn fresh() -> Fs {
    Fs::mkfs(Device::anonymous(32 << 20).unwrap(), &MkfsOptions::default()).unwrap()
}

fn clean_remount(fs: Fs) -> Fs {
    let fs = Fs::mount(fs.unmount().unwrap().expect("last handle")).unwrap();
    let r = udax::check::check(&fs, &mut |_, _| {});
    assert!(r.is_clean(), "{:?}", r.findings);
    fs
}

#[test]
fn exchange_swaps_two_names_atomically_across_directories() {
    let fs = fresh();
    fs.mkdir_all("/a/sub", 0o755).unwrap();
    fs.mkdir_all("/b", 0o755).unwrap();
    fs.write_file("/b/file", b"file").unwrap();
    let a = fs.resolve("/a", true).unwrap();
    let b = fs.resolve("/b", true).unwrap();
    let sub = fs.resolve("/a/sub", true).unwrap();
    let file = fs.resolve("/b/file", true).unwrap();
    fs.rename(a, b"sub", b, b"file", RenameMode::Exchange).unwrap();
    assert_eq!(fs.resolve("/a/sub", true).unwrap(), file);
    assert_eq!(fs.resolve("/b/file", true).unwrap(), sub);
    // The directory moved from a to b: link counts follow, and its ".." is b now.
    assert_eq!(fs.getattr(a).unwrap().nlink, 2);
    assert_eq!(fs.getattr(b).unwrap().nlink, 3);
    assert_eq!(fs.lookup(sub, b"..").unwrap().ino, b);
    assert_eq!(fs.rename(a, b"missing", b, b"file", RenameMode::Exchange).unwrap_err().errno(), libc::ENOENT);
    assert_eq!(fs.rename(a, b"sub", b, b"missing", RenameMode::Exchange).unwrap_err().errno(), libc::ENOENT);
    // A directory cannot be exchanged into itself.
    fs.mkdir_all("/b/file/inner", 0o755).unwrap();
    let inner = fs.resolve("/b/file/inner", true).unwrap();
    fs.write_file("/b/file/inner/x", b"").unwrap();
    assert_eq!(fs.rename(b, b"file", inner, b"x", RenameMode::Exchange).unwrap_err().errno(), libc::EINVAL);
    let fs = clean_remount(fs);
    assert_eq!(fs.read_file("/a/sub").unwrap(), b"file");
}

#[test]
fn noreplace_and_replace_rules() {
    let fs = fresh();
    fs.write_file("/f", b"1").unwrap();
    fs.write_file("/g", b"2").unwrap();
    fs.mkdir_all("/d/e", 0o755).unwrap();
    fs.mkdir_all("/empty", 0o755).unwrap();
    assert_eq!(fs.rename(1, b"f", 1, b"g", RenameMode::NoReplace).unwrap_err().errno(), libc::EEXIST);
    assert_eq!(fs.rename_path("/f", "/d").unwrap_err().errno(), libc::EISDIR);
    assert_eq!(fs.rename_path("/d", "/f").unwrap_err().errno(), libc::ENOTDIR);
    assert_eq!(fs.rename_path("/empty", "/d").unwrap_err().errno(), libc::ENOTEMPTY);
    assert_eq!(fs.rename_path("/d", "/d/e/x").unwrap_err().errno(), libc::EINVAL);
    assert_eq!(fs.rename_path("/d/e", "/d").unwrap_err().errno(), libc::ENOTEMPTY);
    // Over an empty directory, and a file over a file: the victim is gone, its space freed.
    fs.rename_path("/d/e", "/empty").unwrap();
    assert_eq!(fs.getattr(1).unwrap().nlink, 4, "root holds d and empty");
    let free = fs.statfs().blocks_free;
    fs.write_file("/big", &vec![3; 1 << 20]).unwrap();
    fs.rename_path("/f", "/big").unwrap();
    assert_eq!(fs.read_file("/big").unwrap(), b"1");
    assert!(fs.statfs().blocks_free >= free, "the replaced file's blocks were freed");
    // Hard links to one inode: renaming one onto the other does nothing.
    fs.link_path("/g", "/g2").unwrap();
    fs.rename_path("/g", "/g2").unwrap();
    assert!(fs.stat("/g").is_ok() && fs.stat("/g2").is_ok());
    clean_remount(fs);
}

#[test]
fn attributes_and_their_ctime_rules() {
    let fs = fresh();
    fs.write_file("/f", b"abc").unwrap();
    let ino = fs.resolve("/f", true).unwrap();
    let before = fs.getattr(ino).unwrap();
    assert_eq!(before.nlink, 1);
    assert_eq!(before.blocks, 8, "one 4 KiB block is 8 units of 512 bytes");
    let when = Timespec { sec: 1_234_567_890, nsec: 123_456_789 };
    let st = fs
        .setattr(ino, &SetAttr { atime: Some(SetTime::At(when)), mtime: Some(SetTime::At(when)), ..Default::default() })
        .unwrap();
    assert_eq!((st.atime, st.mtime), (when, when));
    assert!(st.ctime >= before.ctime, "utimens changes ctime");
    let st = fs
        .setattr(ino, &SetAttr { uid: Some(1000), gid: Some(100), mode: Some(0o4750), ..Default::default() })
        .unwrap();
    assert_eq!((st.uid, st.gid, st.mode), (1000, 100, 0o104750));
    let now = fs.setattr(ino, &SetAttr { mtime: Some(SetTime::Now), ..Default::default() }).unwrap();
    assert!(now.mtime > when && now.atime == when);
    // Times before the epoch and far in the future survive a remount.
    let old = Timespec { sec: -1_000_000_000, nsec: 5 };
    let far = Timespec { sec: 1 << 40, nsec: 999_999_999 };
    fs.setattr(ino, &SetAttr { atime: Some(SetTime::At(old)), mtime: Some(SetTime::At(far)), ..Default::default() })
        .unwrap();
    let fs = clean_remount(fs);
    let st = fs.stat("/f").unwrap();
    assert_eq!((st.atime, st.mtime, st.uid, st.mode), (old, far, 1000, 0o104750));
    // A write changes mtime and ctime; so does a create in a directory, for the directory.
    let dir_before = fs.getattr(1).unwrap();
    fs.create(1, b"new", 0o600, Creds { uid: 7, gid: 8 }).unwrap();
    let dir_after = fs.getattr(1).unwrap();
    assert!(dir_after.mtime >= dir_before.mtime && dir_after.ctime >= dir_before.ctime);
    assert_eq!((fs.stat("/new").unwrap().uid, fs.stat("/new").unwrap().gid), (7, 8));
}

#[test]
fn a_write_replaces_a_time_set_ahead_of_the_clock() {
    // Writes leave times inside the current coarse-clock tick alone; one set ahead of the clock
    // is not inside it, and a write must replace it, as Linux does.
    let fs = fresh();
    fs.write_file("/f", &[1u8; 8192]).unwrap();
    let ino = fs.resolve("/f", true).unwrap();
    let far = Timespec { sec: 1 << 40, nsec: 0 };
    let ahead = SetAttr { mtime: Some(SetTime::At(far)), ..Default::default() };
    let f = fs.open("/f", OpenOptions::read_write()).unwrap();
    for (what, off) in [("an overwrite", 0), ("an append", 8192)] {
        fs.setattr(ino, &ahead).unwrap();
        let before = Timespec::now();
        f.write_at(b"xyz", off).unwrap();
        let st = fs.getattr(ino).unwrap();
        assert!(st.mtime >= before && st.mtime < far, "{what} kept mtime {:?}", st.mtime);
        assert!(st.ctime >= before, "{what} kept ctime {:?}", st.ctime);
    }
}

#[test]
fn readdir_cookies_resume_where_they_left_off() {
    let fs = fresh();
    for i in 0..500 {
        fs.create(1, format!("entry-{i:04}").as_bytes(), 0o644, Creds::ROOT).unwrap();
    }
    let mut seen = Vec::new();
    let mut cookie = 0;
    loop {
        let page: Vec<_> = fs.readdir(1, cookie).unwrap().into_iter().take(37).collect();
        let Some(last) = page.last() else { break };
        cookie = last.cookie;
        seen.extend(page.into_iter().map(|e| e.name));
    }
    seen.sort();
    let want: Vec<Vec<u8>> = (0..500).map(|i| format!("entry-{i:04}").into_bytes()).collect();
    assert_eq!(seen, want);
}

#[test]
fn a_file_is_read_write_seek() {
    let fs = fresh();
    let mut f = fs.open("/log", OpenOptions { append: true, ..OpenOptions::create() }).unwrap();
    f.write_all(b"one ").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(b"two").unwrap(); // O_APPEND: still goes to the end
    drop(f);
    let mut f = fs.open("/log", OpenOptions::read_only()).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "one two");
    assert_eq!(f.seek(SeekFrom::End(-3)).unwrap(), 4);
    let mut t = String::new();
    f.read_to_string(&mut t).unwrap();
    assert_eq!(t, "two");
    assert_eq!(f.write(b"x").unwrap_err().raw_os_error(), Some(libc::EBADF));
    assert!(f.seek(SeekFrom::Current(-100)).is_err());
    let trunc = fs.open("/log", OpenOptions { truncate: true, ..OpenOptions::read_write() }).unwrap();
    assert_eq!(trunc.metadata().unwrap().size, 0);
    assert_eq!(
        fs.open("/log", OpenOptions { create_new: true, ..OpenOptions::create() }).unwrap_err().errno(),
        libc::EEXIST
    );
}

#[test]
fn a_set_group_id_directory_passes_on_its_group() {
    // What broke: entries made in a set-group-ID directory took the creator's group (and new
    // directories lost the bit), unlike Linux; FUSE leaves this rule to the file system.
    let fs = fresh();
    let d = fs.mkdir(1, b"shared", 0o2775, Creds::ROOT).unwrap();
    fs.setattr(d.ino, &SetAttr { gid: Some(500), ..Default::default() }).unwrap();
    let user = Creds { uid: 1000, gid: 1000 };
    let f = fs.create(d.ino, b"f", 0o644, user).unwrap();
    assert_eq!((f.uid, f.gid), (1000, 500));
    let sub = fs.mkdir(d.ino, b"sub", 0o755, user).unwrap();
    assert_eq!((sub.gid, sub.mode & 0o2000), (500, 0o2000));
    // An executable set-group-ID file made by a non-member loses the bit; root keeps it.
    let x = fs.create(d.ino, b"x", 0o2755, user).unwrap();
    assert_eq!(x.mode & 0o7777, 0o755);
    let y = fs.create(d.ino, b"y", 0o2755, Creds::ROOT).unwrap();
    assert_eq!(y.mode & 0o7777, 0o2755);
    // Outside such a directory nothing changes.
    let g = fs.create(1, b"g", 0o644, user).unwrap();
    assert_eq!(g.gid, 1000);
    let fs = clean_remount(fs);
    assert_eq!(fs.stat("/shared/sub/").unwrap().gid, 500);
}

#[test]
fn extended_attributes_survive_remount_and_go_with_their_inode() {
    let fs = fresh();
    fs.write_file("/f", b"x").unwrap();
    // The root directory keeps the block its first entry took.
    let free = fs.statfs().blocks_free + 1;
    let f = fs.resolve("/f", false).unwrap();
    fs.setxattr(f, b"user.a", b"one", Default::default()).unwrap();
    fs.setxattr(f, b"security.b", &[2; 1000], Default::default()).unwrap();
    assert_eq!(fs.getattr(f).unwrap().blocks, 2 * 8, "a data block and the attribute block");
    let fs = clean_remount(fs);
    assert_eq!(fs.listxattr(f).unwrap(), b"security.b\0user.a\0");
    assert_eq!(fs.getxattr(f, b"user.a").unwrap(), b"one");
    // Unlinking frees the attribute block with the data (after the next checkpoint).
    fs.unlink_path("/f").unwrap();
    let fs = clean_remount(fs);
    assert_eq!(fs.statfs().blocks_free, free);
}

/// Images made before extended attributes existed lack the XATTR feature bit: they still mount,
/// and setxattr is EOPNOTSUPP instead of writing a block their readers would take for damage.
#[test]
fn images_without_the_xattr_feature_refuse_attributes() {
    use udax::layout::{superblock_crc, RawSuperblock, FEATURE_INCOMPAT_LANES, FEATURE_INCOMPAT_XATTR};
    let fs = fresh();
    fs.write_file("/f", b"x").unwrap();
    let dev = fs.unmount().unwrap().unwrap();
    let mut sb: RawSuperblock = dev.read_obj(0).unwrap();
    assert_eq!(sb.features_incompat.get(), FEATURE_INCOMPAT_XATTR | FEATURE_INCOMPAT_LANES);
    sb.features_incompat = 0.into();
    sb.crc = superblock_crc(&sb).into();
    dev.write_obj(0, &sb).unwrap();
    let fs = Fs::mount(dev).unwrap();
    let f = fs.resolve("/f", false).unwrap();
    let e = fs.setxattr(f, b"user.a", b"1", Default::default()).unwrap_err();
    assert_eq!(e.errno(), libc::EOPNOTSUPP, "{e}");
    assert_eq!(fs.listxattr(f).unwrap(), b"");
    assert_eq!(fs.getxattr(f, b"user.a").unwrap_err().errno(), libc::ENODATA);
}

/// Set-ID bits were dropped by the FUSE adapter with a getattr, a setattr and then the write or
/// chown: two transactions, and a chmod between them was lost or undone. The library drops them
/// itself, in the transaction of the write or the attribute change, as Linux decides.
#[test]
fn set_id_bits_drop_with_the_write_or_chown_that_drops_them() {
    let fs = fresh();
    let mode = |p: &str| fs.stat(p).unwrap().mode & 0o7777;
    let set_mode = |p: &str, m: u32| {
        fs.setattr(fs.resolve(p, false).unwrap(), &SetAttr { mode: Some(m), ..SetAttr::default() }).unwrap();
    };
    fs.write_file("/tool", b"#!/bin/sh\n").unwrap();
    let tool = fs.resolve("/tool", false).unwrap();
    let user = Creds { uid: 1000, gid: 1000 };

    // A write by a caller without CAP_FSETID: set-user-ID goes, and set-group-ID with group exec.
    set_mode("/tool", 0o6755);
    fs.write(tool, b"#", 0).unwrap();
    assert_eq!(mode("/tool"), 0o6755, "a plain write keeps them");
    fs.write_dropping_set_id(tool, b"#", 0).unwrap();
    assert_eq!(mode("/tool"), 0o755);
    set_mode("/tool", 0o2644);
    fs.write_dropping_set_id(tool, b"#", 0).unwrap();
    assert_eq!(mode("/tool"), 0o2644, "set-group-ID without group exec is mandatory locking: kept");

    // A chown: always set-user-ID; set-group-ID with group exec, or when the caller is an outsider.
    set_mode("/tool", 0o6755);
    let chown =
        |by: Creds, gid: u32| SetAttr { uid: Some(1000), gid: Some(gid), drop_set_id: Some(by), ..SetAttr::default() };
    fs.setattr(tool, &chown(Creds::ROOT, 0)).unwrap();
    assert_eq!(mode("/tool"), 0o755);
    set_mode("/tool", 0o6644);
    fs.setattr(tool, &chown(Creds::ROOT, 0)).unwrap();
    assert_eq!(mode("/tool"), 0o2644, "root in the file's group keeps set-group-ID without group exec");
    fs.setattr(tool, &chown(user, 1000)).unwrap();
    assert_eq!(mode("/tool"), 0o644, "an outsider's chown drops it");

    // A truncate by a caller without CAP_FSETID, and the same bits on a directory (never dropped).
    set_mode("/tool", 0o4755);
    fs.setattr(tool, &SetAttr { size: Some(1), drop_set_id: Some(user), ..SetAttr::default() }).unwrap();
    assert_eq!((mode("/tool"), fs.stat("/tool").unwrap().size), (0o755, 1));
    fs.mkdir_path("/d", 0o2775).unwrap();
    let d = fs.resolve("/d", false).unwrap();
    fs.setattr(d, &chown(user, 1000)).unwrap();
    assert_eq!(mode("/d"), 0o2775);
    let fs = clean_remount(fs);
    assert_eq!(fs.stat("/tool").unwrap().mode & 0o7777, 0o755, "durable");
}
