//! Deep trees. `remove_all` recursed once per level and overflowed the stack on a 40,000-level
//! chain, and mount's tree check walked to the root from every directory: time squared in the
//! depth (25 s at 40,000 levels, over a minute past 50,000), so a crafted image stalled every
//! command. Both are linear now, and nothing recurses per level.

use std::time::Instant;

use udax::layout::ROOT_INO;
use udax::{Creds, Device, Fs, MkfsOptions};

const DEPTH: u64 = 100_000;

#[test]
fn a_100_000_level_chain_mounts_checks_and_removes() {
    let opts = MkfsOptions { block_size: 1024, inodes: DEPTH + 1000, ..Default::default() };
    let fs = Fs::mkfs(Device::anonymous(256 << 20).unwrap(), &opts).unwrap();
    let mut at = ROOT_INO;
    for _ in 0..DEPTH {
        at = fs.mkdir(at, b"d", 0o755, Creds::ROOT).unwrap().ino;
    }
    fs.mknod(at, b"leaf", udax::layout::mode::S_IFREG | 0o644, 0, Creds::ROOT).unwrap();
    let dev = fs.unmount().unwrap().expect("the last handle");
    let t = Instant::now();
    let fs = Fs::mount(dev).unwrap();
    let took = t.elapsed();
    eprintln!("mount of a {DEPTH}-level chain: {took:?}");
    // Linear is about a second here; the squared check took minutes at this depth.
    assert!(took.as_secs() < 30, "mount took {took:?}");
    let r = udax::check::check(&fs, &mut |_, _| {});
    assert!(r.findings.is_empty(), "{:?}", r.findings);
    fs.remove_all("/d").unwrap();
    assert!(fs.readdir(ROOT_INO, 0).unwrap().is_empty());
    let r = udax::check::check(&fs, &mut |_, _| {});
    assert!(r.findings.is_empty(), "{:?}", r.findings);
    assert_eq!(r.inodes, 1, "only the root is left");
}
