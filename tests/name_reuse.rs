//! A path resolved to an inode number, then opened by that number, could open a different file:
//! between the two steps another thread unlinked the name, the number was freed and handed to a
//! new file, and the open (and the write after it) landed in that new file. Path operations must
//! act on the inode the name named, or fail with ENOENT.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use udax::{Device, Error, Fs, MkfsOptions, OpenOptions};

/// How long the threads race: the window is a few hundred nanoseconds wide.
const RACE: Duration = Duration::from_secs(3);

#[test]
fn an_open_by_path_never_reaches_a_file_that_reused_the_inode_number() {
    let fs = Fs::mkfs(Device::anonymous(64 << 20).unwrap(), &MkfsOptions::default()).unwrap();
    fs.mkdir_all("/ns", 0o755).unwrap();
    fs.mkdir_all("/own", 0o755).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Writers open the shared name (creating it) and write a marker into whatever they got.
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let (fs, stop) = (fs.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(f) = fs.open("/ns/n", OpenOptions::create()) {
                        f.write_at(b"written through /ns/n", 0).unwrap();
                    }
                }
            })
        })
        .collect();
    // Removers unlink the shared name, then make files of their own that only they write:
    // each must stay empty.
    let made = Arc::new(AtomicU64::new(0));
    let (found, first_stray) = mpsc::channel::<()>();
    let removers: Vec<_> = (0..2)
        .map(|t| {
            let (fs, stop, made, found) = (fs.clone(), stop.clone(), made.clone(), found.clone());
            std::thread::spawn(move || {
                let mut stray = None;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && stray.is_none() {
                    match fs.unlink_path("/ns/n") {
                        Ok(()) | Err(Error::NotFound) => {}
                        Err(e) => panic!("unlink: {e}"),
                    }
                    let path = format!("/own/{t}-{i}");
                    let f = fs.open(&path, OpenOptions { create_new: true, ..OpenOptions::create() }).unwrap();
                    // Give a writer that got this file's number time to write.
                    std::thread::yield_now();
                    if f.metadata().unwrap().size != 0 {
                        stray = Some(path.clone());
                        let _ = found.send(());
                    }
                    drop(f);
                    fs.unlink_path(&path).unwrap();
                    i += 1;
                    made.fetch_add(1, Ordering::Relaxed);
                }
                stray
            })
        })
        .collect();
    // The race runs its time, or ends at the first stray write a remover reports.
    let _ = first_stray.recv_timeout(RACE);
    stop.store(true, Ordering::Relaxed);
    let strays: Vec<String> = removers.into_iter().filter_map(|r| r.join().unwrap()).collect();
    for w in writers {
        w.join().unwrap();
    }
    assert!(strays.is_empty(), "a write through /ns/n landed in {strays:?}");
    assert!(made.load(Ordering::Relaxed) > 200, "the race ran too few rounds");
    let r = udax::check::check(&fs, &mut |_, _| {});
    assert!(r.is_clean(), "{:?}", r.findings);
}
