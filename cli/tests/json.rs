//! `--json` is one style for every command: one object per invocation (never a bare list), the
//! error object with the errno a kernel file system would give, RFC 3339 times with their
//! nanoseconds, octal modes, and the same count names in info, fsck and df.

use std::ffi::OsStr;
use std::fs::FileTimes;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;
use tempfile::TempDir;

fn tmp() -> TempDir {
    tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap()
}

fn udax<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_udax")).args(args).stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "udax panicked: {err}");
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Stdout as exactly one JSON object (serde_json refuses anything after the first value).
#[track_caller]
fn object(args: &[&str], out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("udax {args:?}: {e}: {text}"));
    assert!(v.is_object(), "udax {args:?} printed no object: {text}");
    v
}

/// Runs a command that succeeds and returns its one object.
#[track_caller]
fn report(args: &[&str]) -> Value {
    let out = udax(args);
    assert!(out.status.success(), "udax {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    object(args, &out)
}

/// Runs a command that fails: exit status and the errno and message of its error object, which
/// is all its stdout holds; stderr still says it.
#[track_caller]
fn error(args: &[&str]) -> (i32, i64, String) {
    let out = udax(args);
    assert!(!out.status.success(), "udax {args:?} succeeded");
    let v = object(args, &out);
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    let e = &v["error"];
    assert_eq!(e.as_object().map(|o| o.len()), Some(2), "{v}");
    let message = e["message"].as_str().unwrap().to_string();
    assert!(String::from_utf8_lossy(&out.stderr).contains(&message), "stderr lacks {message:?}");
    (out.status.code().unwrap(), e["errno"].as_i64().unwrap(), message)
}

/// Exit status and errno of a failing command's error object.
#[track_caller]
fn codes(args: &[&str]) -> (i32, i64) {
    let (code, errno, _) = error(args);
    (code, errno)
}

fn image(d: &Path) -> PathBuf {
    let img = d.join("img");
    report(&["mkfs", s(&img), "--size", "16M", "--label", "j", "--json"]);
    img
}

#[test]
fn every_reporting_command_prints_one_object() {
    let d = tmp();
    let img = d.path().join("img");
    let m = report(&["mkfs", s(&img), "--size", "16M", "--label", "j", "--json"]);
    assert_eq!((m["label"].as_str(), m["sparse"].as_bool()), (Some("j"), Some(false)), "{m}");
    let host = d.path().join("tree");
    std::fs::create_dir_all(host.join("sub")).unwrap();
    std::fs::write(host.join("a.txt"), b"hello\n").unwrap();
    std::fs::write(host.join("sub/b.bin"), vec![7u8; 10_000]).unwrap();
    std::os::unix::fs::symlink("a.txt", host.join("link")).unwrap();

    let p = report(&["put", s(&img), s(&host), "/t", "--json"]);
    assert_eq!((p["files"].as_u64(), p["directories"].as_u64(), p["bytes"].as_u64()), (Some(3), Some(2), Some(10_006)));
    let g = report(&["get", s(&img), "/t", s(&d.path().join("back")), "--json"]);
    assert_eq!((g["files"].as_u64(), g["directories"].as_u64(), g["bytes"].as_u64()), (Some(3), Some(2), Some(10_006)));
    assert_eq!(std::fs::read(d.path().join("back/sub/b.bin")).unwrap(), vec![7u8; 10_000]);

    let l = report(&["ls", s(&img), "/t", "/t/a.txt", "--json"]);
    assert_eq!(l["files"][0]["name"], "/t/a.txt", "{l}");
    assert_eq!(l["directories"][0]["path"], "/t", "{l}");
    let names: Vec<&str> =
        l["directories"][0]["entries"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a.txt", "link", "sub"]);
    assert_eq!(l["directories"][0]["entries"][1]["target"], "a.txt", "{l}");
    assert_eq!(l["directories"][0]["entries"][2]["type"], "directory", "{l}");
    let r = report(&["ls", s(&img), "-R", "/t", "--json"]);
    assert_eq!(r["directories"].as_array().unwrap().len(), 2, "{r}");

    let st = report(&["stat", s(&img), "/t/link", "--json"]);
    assert_eq!((st["type"].as_str(), st["target"].as_str()), (Some("symlink"), Some("a.txt")), "{st}");
    let e = report(&["extents", s(&img), "/t/sub/b.bin", "--json"]);
    assert_eq!((e["path"].as_str(), e["size"].as_u64()), (Some("/t/sub/b.bin"), Some(10_000)), "{e}");
    assert_eq!(e["extents"][0]["state"], "written", "{e}");
    let du = report(&["du", s(&img), "-s", "/t/sub", "--json"]);
    assert_eq!(du["entries"], serde_json::json!([{ "path": "/t/sub", "allocated_bytes": 4096 * 4 }]), "{du}");
    let du = report(&["du", s(&img), "/t", "--json"]);
    assert_eq!(du["entries"].as_array().unwrap().last().unwrap()["path"], "/t", "{du}");
    report(&["info", s(&img), "--json"]);
    report(&["fsck", s(&img), "--json"]);
    report(&["fsck", s(&img), "--repair", "--json"]);
    report(&["df", s(&img), "--json"]);
    report(&["df", "-i", "-h", s(&img), "--json"]);
}

/// info, df and fsck count with the same names, and agree on this image.
#[test]
fn counts_have_one_name_everywhere() {
    let d = tmp();
    let img = image(d.path());
    let out = udax(&["mkdir", s(&img), "-p", "/a/b"]);
    assert!(out.status.success());
    let info = report(&["info", s(&img), "--json"]);
    let df = report(&["df", s(&img), "--json"]);
    let df = &df["images"][0];
    let fsck = report(&["fsck", s(&img), "--json"]);
    let fsck = &fsck["report"];
    for k in ["inodes_total", "inodes_used", "inodes_free", "blocks_total", "blocks_used", "blocks_free"] {
        assert!(info[k].is_u64(), "{k} missing from info: {info}");
        assert_eq!(info[k], df[k], "{k}");
        assert_eq!(info[k], fsck[k], "{k}");
    }
    assert_eq!(info["inodes_used"], 3);
    assert_eq!(info["inodes_total"], info["geometry"]["inodes_total"]);
    for k in ["bytes_total", "bytes_used", "bytes_free", "block_size"] {
        assert_eq!(info[k], df[k], "{k}");
    }
    assert_eq!(df["image"], s(&img));
    assert!(info.get("inodes").is_none() && fsck.get("inodes").is_none(), "the old ambiguous key");
}

/// Times come as RFC 3339 in UTC with nanoseconds, the integer nanoseconds beside them, and
/// survive a put of a file last changed before 1970.
#[test]
fn times_round_trip_before_and_after_1970() {
    let d = tmp();
    let img = image(d.path());
    // 1969-07-20T20:17:40.123456789Z and 2001-09-09T01:46:40.000000001Z (`date -u -d @SECONDS`).
    for (sec, nsec, text) in [
        (-14_182_940i64, 123_456_789u32, "1969-07-20T20:17:40.123456789Z"),
        (1_000_000_000, 1, "2001-09-09T01:46:40.000000001Z"),
    ] {
        let host = d.path().join(format!("f{sec}"));
        std::fs::write(&host, b"x").unwrap();
        let t = if sec < 0 {
            UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec.into())
        } else {
            UNIX_EPOCH + Duration::new(sec as u64, nsec)
        };
        std::fs::File::options().write(true).open(&host).unwrap().set_times(FileTimes::new().set_modified(t)).unwrap();
        report(&["put", s(&img), s(&host), "/f", "--json"]);
        let st = report(&["stat", s(&img), "/f", "--json"]);
        assert_eq!(st["mtime"], text, "{st}");
        assert_eq!(st["mtime_ns"].as_i64(), Some(sec * 1_000_000_000 + i64::from(nsec)), "{st}");
        let l = report(&["ls", s(&img), "/f", "--json"]);
        assert_eq!(l["files"][0]["mtime"], text, "{l}");
        // And back out: the host file gets the same time again.
        let back = d.path().join(format!("back{sec}"));
        report(&["get", s(&img), "/f", s(&back), "--json"]);
        assert_eq!(std::fs::metadata(&back).unwrap().modified().unwrap(), t);
    }
    let info = report(&["info", s(&img), "--json"]);
    let created = info["created"].as_str().unwrap();
    assert!(created.ends_with(".000000000Z") && created.len() == 30, "{info}");
    assert_eq!(info["created_ns"].as_i64().unwrap() % 1_000_000_000, 0, "{info}");
}

#[test]
fn errors_are_one_error_object_with_the_errno() {
    let d = tmp();
    let img = image(d.path());
    assert!(udax(&["mkdir", s(&img), "/dir"]).status.success());
    let (code, errno, msg) = error(&["stat", s(&img), "/missing", "--json"]);
    assert_eq!((code, errno), (1, i64::from(libc::ENOENT)));
    assert_eq!(msg, "/missing: No such file or directory");
    assert_eq!(codes(&["ls", s(&img), "/missing", "--json"]), (1, 2));
    assert_eq!(codes(&["du", s(&img), "/missing", "--json"]), (1, 2));
    let (_, errno, _) = error(&["extents", s(&img), "/dir", "--json"]);
    assert_eq!(errno, i64::from(libc::EISDIR));
    let (_, errno, msg) = error(&["mkfs", s(&img), "--size", "16M", "--json"]);
    assert_eq!(errno, i64::from(libc::EEXIST), "{msg}");
    let absent = d.path().join("absent");
    assert_eq!(codes(&["info", s(&absent), "--json"]), (1, 2));
    // fsck keeps e2fsck's status 8 for an image it cannot open.
    assert_eq!(codes(&["fsck", s(&absent), "--json"]), (8, 2));
    let (_, errno, _) = error(&["get", s(&img), "/missing", s(&d.path().join("x")), "--json"]);
    assert_eq!(errno, i64::from(libc::ENOENT));
    let (_, errno, _) = error(&["put", s(&img), s(&absent), "/x", "--json"]);
    assert_eq!(errno, i64::from(libc::ENOENT));
    // Several operands: what failed first, as one object (its stderr line too).
    let (code, errno, msg) = error(&["df", s(&img), s(&absent), "--json"]);
    assert_eq!((code, errno), (1, 2));
    assert!(msg.contains("absent"), "{msg}");
    // A command line clap refuses: status 2 as ever, EINVAL.
    let (code, errno, msg) = error(&["stat", s(&img), "--json", "--no-such-flag"]);
    assert_eq!((code, errno), (2, i64::from(libc::EINVAL)), "{msg}");
    assert!(msg.contains("--no-such-flag"), "{msg}");
    // Without --json, stdout stays empty.
    let out = udax(&["stat", s(&img), "/missing"]);
    assert!(out.stdout.is_empty() && !out.stderr.is_empty());
}

/// crashtest's reports were objects already; its mutants list was a bare list.
#[test]
#[cfg(feature = "crash-test")]
fn crashtest_reports_are_objects() {
    let args = ["crashtest", "--workload", "seq1", "--block-size", "1024", "--max-states", "20", "--json"];
    let r = report(&args);
    assert!(r["states"].as_u64().unwrap() >= 20, "{r}");
    let (code, errno, msg) = error(&["crashtest", "--workload", "nope", "--json"]);
    assert_eq!((code, errno), (1, i64::from(libc::EINVAL)));
    assert!(msg.contains("unknown workload"), "{msg}");
}
