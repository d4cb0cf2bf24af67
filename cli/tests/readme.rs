//! The README's commands work as written: its library snippets did not compile (`Device::create`
//! had come to take `impl AsRef<Path>`, and `"…".as_ref()` no longer said which), and some of its
//! shell lines named files that were not there. Every `sh` block runs here, line by line, in a
//! scratch root; the Rust snippets are this file's own code, checked to match the README's text.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use udax::{Device, Fs, MkfsOptions, OpenOptions};

const README: &str = include_str!("../../README.md");

/// The fenced blocks of the README in `lang`, in order.
fn blocks(lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in README.lines() {
        match (&mut cur, line.strip_prefix("```")) {
            (None, Some(l)) if l == lang => cur = Some(String::new()),
            (Some(_), Some("")) => out.push(cur.take().unwrap()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    out
}

/// This file's lines between `// README rust block N` and `// end`, dedented by 4.
fn own_block(n: usize) -> String {
    let me = include_str!("readme.rs");
    let start = format!("// README rust block {n}\n");
    let from = me.find(&start).unwrap() + start.len();
    let to = from + me[from..].find("    // end\n").unwrap();
    me[from..to].lines().map(|l| l.strip_prefix("    ").unwrap_or(l)).map(|l| format!("{l}\n")).collect()
}

#[test]
fn the_rust_snippets_are_the_code_tested_here() {
    let readme = blocks("rust");
    assert_eq!(readme.len(), 2, "the README's Rust blocks changed: update this test");
    for (i, b) in readme.iter().enumerate() {
        // `use` lines are at the top of the test; rustfmt spaces comments its own way.
        let norm = |code: &str| -> Vec<String> {
            let lines = code.lines().filter(|l| !l.starts_with("use ") && !l.trim().is_empty());
            lines.map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect()
        };
        assert_eq!(norm(b), norm(&own_block(i + 1)), "README rust block {} differs from readme.rs", i + 1);
    }
}

#[test]
fn the_rust_snippets_run() -> Result<(), Box<dyn std::error::Error>> {
    use std::io::{Read, Write};
    use udax::{Prot, Share};
    let _ = std::fs::remove_file("/dev/shm/my.udax");
    struct Remove;
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file("/dev/shm/my.udax");
        }
    }
    let _remove = Remove;
    // README rust block 1
    let fs = Fs::mkfs(Device::create("/dev/shm/my.udax", 256 << 20)?, &MkfsOptions::default())?;
    fs.mkdir_all("/logs", 0o755)?;
    let mut f = fs.open("/logs/today", OpenOptions::create())?;
    f.write_all(b"durable when write returns\n")?;
    drop(f);
    fs.unmount()?; // msyncs the image

    let fs = Fs::open_image("/dev/shm/my.udax")?; // replays the journal if needed
    let mut s = String::new();
    fs.open("/logs/today", OpenOptions::read_only())?.read_to_string(&mut s)?;
    // end
    assert_eq!(s, "durable when write returns\n");
    // README rust block 2
    let f = fs.open("/data", OpenOptions::create())?;
    f.set_len(64 << 20)?; // sparse
    let m = f.mmap(0, 64 << 20, Prot::ReadWrite, Share::Shared)?;
    m.write_at(b"stored through the mapping", 4096)?; // first store: allocate, zero, commit, map
    m.flush()?; // msync
    println!("{:?}", fs.mmap_stats()); // faults by kind
                                       // end
    let mut back = [0u8; 26];
    f.read_at(&mut back, 4096)?;
    assert_eq!(&back, b"stored through the mapping");
    Ok(())
}

/// Whether mount lines can run (root and /dev/fuse); when not, says so, or fails under
/// `UDAX_REQUIRE_MOUNT` (`.ci/run`).
fn can_mount() -> bool {
    if rustix::process::geteuid().is_root() && Path::new("/dev/fuse").exists() {
        return true;
    }
    let msg = "skipping the README's mount lines: they need root and /dev/fuse";
    assert!(std::env::var_os("UDAX_REQUIRE_MOUNT").is_none(), "{msg}, and UDAX_REQUIRE_MOUNT is set");
    eprintln!("{msg}");
    false
}

/// One README line as it runs here: `[-x …]` optional parts left out, and the system paths it
/// names (`/etc`, `/usr/local`, `/mnt`) under the scratch root. Comments stay: bash drops them.
fn as_run(line: &str, root: &Path) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = rest.find(" [-") {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        rest = rest.find(']').map_or("", |j| &rest[j + 1..]);
    }
    out.push_str(rest);
    let root = root.display();
    out.replace(" /etc/", &format!(" {root}/etc/"))
        .replace(" /usr/local/", &format!(" {root}/usr/local/"))
        .replace(" /mnt/", &format!(" {root}/mnt/"))
}

#[test]
fn every_shell_line_runs() {
    let root = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
    let r = root.path();
    let bin = r.join("bin");
    let home = r.join("home");
    for d in [
        bin.clone(),
        home.join("src/sub"),
        r.join("work/docs"),
        r.join("etc/bash_completion.d"),
        r.join("usr/local/share/zsh/site-functions"),
        r.join("usr/local/share/man/man8"),
        r.join("mnt/pm"),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_udax"), bin.join("udax")).unwrap();
    std::fs::write(home.join("src/README"), "a tree to copy in\n").unwrap();
    std::fs::write(home.join("src/sub/data"), vec![7u8; 100_000]).unwrap();
    std::fs::write(r.join("work/docs/guide.txt"), "docs for the tar line\n").unwrap();
    let long = common::long();
    let mount = can_mount();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut ran = 0;
    for block in blocks("sh") {
        for line in block.lines().filter(|l| !l.trim().is_empty()) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let cmd = match words[..] {
                // The quick start: the demo runs here as the built binary; the test command is
                // the one running this test.
                ["cargo", "run", ..] => {
                    let args = words.iter().skip_while(|w| **w != "--").skip(1).take_while(|w| !w.starts_with('#'));
                    format!("udax {}", args.copied().collect::<Vec<_>>().join(" "))
                }
                ["cargo", "test", ..] => continue,
                ["udax", "mount" | "umount" | "run", ..] if !mount => continue,
                ["udax", "run", ..] => {
                    common::preload_lib();
                    as_run(line, r)
                }
                // A minute or more each: under UDAX_LONG, as `.ci/run` runs.
                ["udax", "crashtest", "--mutants", ..] if !long => continue,
                ["udax", "bench", ..] if !long && !line.contains("--quick") => continue,
                // The line as written races for 20 s; a quick run races for 2.
                ["udax", "stress", ..] if !long => as_run(line, r).replace("--seconds 20", "--seconds 2"),
                _ => as_run(line, r),
            };
            let out = Command::new("bash")
                .args(["-o", "pipefail", "-c", &cmd])
                .current_dir(r.join("work"))
                .env("PATH", &path)
                .env("HOME", &home)
                .env("MANPATH", r.join("usr/local/share/man"))
                .env("MANPAGER", "cat")
                .env("PAGER", "cat")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "README line `{line}` (run as `{cmd}`) failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            ran += 1;
        }
    }
    assert!(ran >= 20, "only {ran} README lines ran");
    // What the lines made is there.
    let img: PathBuf = r.join("work/img.udax");
    let cat = Command::new(env!("CARGO_BIN_EXE_udax")).arg("cat").arg(&img).arg("/src/README").output().unwrap();
    assert_eq!(cat.stdout, b"a tree to copy in\n");
    assert!(r.join("etc/bash_completion.d/udax").exists() && r.join("usr/local/share/man/man8/udax-put.8").exists());
}
