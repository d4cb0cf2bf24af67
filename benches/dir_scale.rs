//! 100,000 files in one directory: per-operation latency of create and lookup on udax, beside
//! the same operations on tmpfs (/dev/shm) in the same run. `cargo bench --bench dir_scale`
//! (`-- --files N` to change the count). udax runs in-process on an image in /dev/shm; tmpfs
//! pays a system call per operation, which is the comparison that matters to a DAX user.

use std::time::Instant;

use udax::{Creds, Device, Fs, MkfsOptions};

struct Lat(Vec<u64>);

impl Lat {
    fn pct(&mut self, p: f64) -> u64 {
        self.0.sort_unstable();
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[i]
    }
}

fn time(n: usize, mut f: impl FnMut(usize)) -> Lat {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i);
        v.push(t.elapsed().as_nanos() as u64);
    }
    Lat(v)
}

fn row(name: &str, udax: &mut Lat, tmpfs: &mut Lat) {
    let (u50, t50) = (udax.pct(0.5), tmpfs.pct(0.5));
    println!(
        "{name:<8} udax p50 {:>7} ns  p99 {:>7} ns  p99.99 {:>8} ns | tmpfs p50 {:>7} ns  p99 {:>7} ns | udax/tmpfs {:.2}",
        u50,
        udax.pct(0.99),
        udax.pct(0.9999),
        t50,
        tmpfs.pct(0.99),
        u50 as f64 / t50 as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let files = args.iter().position(|a| a == "--files").and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok());
    let n: usize = files.unwrap_or(100_000);
    let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let dir = tempfile::tempdir_in(base).unwrap();
    let image = dir.path().join("bench.img");
    let opts = MkfsOptions { inodes: n as u64 + 1024, ..Default::default() };
    let fs = Fs::mkfs(Device::create(&image, 1 << 30).unwrap(), &opts).unwrap();
    let names: Vec<String> = (0..n).map(|i| format!("file-{i:08}")).collect();
    let mut u_create = time(n, |i| {
        fs.create(1, names[i].as_bytes(), 0o644, Creds::ROOT).unwrap();
    });
    let mut u_lookup = time(n, |i| {
        fs.lookup(1, names[(i * 7919) % n].as_bytes()).unwrap();
    });
    let t_dir = dir.path().join("tmpfs");
    std::fs::create_dir(&t_dir).unwrap();
    let t_names: Vec<_> = names.iter().map(|s| t_dir.join(s)).collect();
    let mut t_create = time(n, |i| {
        std::fs::File::create(&t_names[i]).unwrap();
    });
    let mut t_lookup = time(n, |i| {
        std::fs::symlink_metadata(&t_names[(i * 7919) % n]).unwrap();
    });
    println!("{n} files in one directory (udax image on {base}, 4 KiB blocks)");
    row("create", &mut u_create, &mut t_create);
    row("lookup", &mut u_lookup, &mut t_lookup);
    let t = Instant::now();
    let dev = fs.unmount().unwrap().expect("last handle");
    drop(dev);
    let fs = Fs::open_image(&image).unwrap();
    println!("remount of the {n}-file image: {:.1} ms (unmount+msync+mount)", t.elapsed().as_secs_f64() * 1e3);
    assert_eq!(fs.readdir(1, 0).unwrap().len(), n);
}
