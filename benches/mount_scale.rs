//! Mount time of an image with many files: `cargo bench --bench mount_scale -- [--dirs D]
//! [--files F] [--image PATH] [--rounds R] [--leak]`. Makes `D` directories of `F` empty files each (1,000
//! × 1,000 by default) in an image in /dev/shm (kept at `--image` when given, and reused when it
//! is there), then mounts it `R` times and prints each mount's time and its phases.

use std::time::Instant;

use udax::{Creds, Device, Fs, MkfsOptions};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn make(image: &std::path::Path, dirs: u64, files: u64) {
    let opts = MkfsOptions { inodes: dirs * (files + 1) + 1024, ..Default::default() };
    let size = (dirs * (files + 1) * 256 + dirs * files * 64 + (256 << 20)).next_power_of_two();
    let fs = Fs::mkfs(Device::create(image, size).unwrap(), &opts).unwrap();
    let t = Instant::now();
    for d in 0..dirs {
        let dir = fs.mkdir(1, format!("d{d:04}").as_bytes(), 0o755, Creds::ROOT).unwrap().ino;
        for f in 0..files {
            fs.create(dir, format!("f{f:06}").as_bytes(), 0o644, Creds::ROOT).unwrap();
        }
    }
    eprintln!("made {} files in {:.1} s", dirs * files, t.elapsed().as_secs_f64());
    fs.unmount().unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dirs: u64 = arg(&args, "--dirs").and_then(|v| v.parse().ok()).unwrap_or(1000);
    let files: u64 = arg(&args, "--files").and_then(|v| v.parse().ok()).unwrap_or(1000);
    // Leave each mounted file system to the process's exit (for profiling mount alone).
    let leak = args.iter().any(|a| a == "--leak");
    let rounds: usize = arg(&args, "--rounds").and_then(|v| v.parse().ok()).unwrap_or(3);
    let tmp = tempfile::tempdir_in("/dev/shm").unwrap();
    let image = arg(&args, "--image").map_or_else(|| tmp.path().join("mount.img"), Into::into);
    if !image.exists() {
        make(&image, dirs, files);
    }
    for _ in 0..rounds {
        let t = Instant::now();
        let fs = Fs::open_image(&image).unwrap();
        let took = t.elapsed();
        println!("mount {:.1} ms; {}", took.as_secs_f64() * 1e3, fs.mount_report());
        if leak {
            std::mem::forget(fs);
        } else {
            let t = Instant::now();
            drop(fs);
            println!("  dropping the mounted file system: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        }
    }
}
