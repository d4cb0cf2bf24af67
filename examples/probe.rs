use std::time::Instant;
use udax::{Device, Fs, MkfsOptions, OpenOptions, Prot, Share, PAGE};
fn main() {
    let huge = std::env::args().nth(1).as_deref() == Some("huge");
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let dev = Device::create(&dir.path().join("p.img"), if huge { 2 << 30 } else { 160 << 20 }).unwrap();
    dev.populate().unwrap();
    let fs = Fs::mkfs(dev, &MkfsOptions::default()).unwrap();
    fs.set_mmap_huge(huge);
    let len: u64 = if huge { 1 << 30 } else { 64 << 20 };
    let h = fs.open("/h", OpenOptions::create()).unwrap();
    h.set_len(len).unwrap();
    let m = h.mmap(0, len, Prot::ReadWrite, Share::Shared).unwrap();
    let t = Instant::now();
    for p in 0..len / PAGE / 2 {
        let mut b = [0u8; 1];
        m.read(p * PAGE, &mut b).unwrap();
    }
    println!("loads {:.2} µs/page", t.elapsed().as_secs_f64() * 1e6 / (len / PAGE / 2) as f64);
    let t = Instant::now();
    for p in len / PAGE / 2..len / PAGE {
        m.write(p * PAGE, &[1]).unwrap();
    }
    println!("stores {:.2} µs/page", t.elapsed().as_secs_f64() * 1e6 / (len / PAGE / 2) as f64);
}
