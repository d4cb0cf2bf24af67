//! `udax bench` works end to end in its short mode: one JSON object with every figure of every
//! operation (null where a side has none), the thread scaling, the chart, only the operations
//! asked for, a clear refusal of an unknown one, and nothing left in /dev/shm. No timing is
//! asserted: the benchmark's own numbers are its proof of speed.

use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// Runs udax with `args`; the output and whether its scratch directory is gone afterwards.
fn udax(args: &[&str]) -> (Output, bool) {
    let child = Command::new(env!("CARGO_BIN_EXE_udax"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let prefix = format!("udax-bench.{}.", child.id());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "udax panicked: {err}");
    let left = std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .chain(std::fs::read_dir(std::env::temp_dir()).into_iter().flatten())
        .any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with(&prefix)));
    (out, !left)
}

/// `bench --quick --json` with `extra`: its one object.
fn quick_json(extra: &[&str]) -> Value {
    let mut args = vec!["bench", "--quick", "--json"];
    args.extend_from_slice(extra);
    let (out, cleaned) = udax(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "udax {args:?}: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    assert!(cleaned, "udax {args:?} left its scratch directory behind");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("udax {args:?}: {e}: {text}"));
    assert!(v.is_object(), "{text}");
    v
}

const NUMBERS: [&str; 11] = [
    "udax_p50_ns",
    "udax_p99_ns",
    "udax_p9999_ns",
    "tmpfs_p50_ns",
    "tmpfs_p99_ns",
    "tmpfs_p9999_ns",
    "floor_p50_ns",
    "floor_p99_ns",
    "floor_p9999_ns",
    "vs_tmpfs",
    "vs_floor",
];

fn names(v: &Value) -> Vec<&str> {
    v["ops"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect()
}

/// Whether `key` of `op` is a positive number, or null on a side without a figure.
fn figure(op: &Value, key: &str) -> bool {
    let name = op["name"].as_str().unwrap();
    let none = match name {
        "mount" => !key.starts_with("udax"),
        "mmap-setup-1g" => key.starts_with("floor") || key == "vs_floor",
        _ => false,
    };
    if none {
        op[key].is_null()
    } else {
        op[key].as_f64().is_some_and(|x| x > 0.0)
    }
}

#[test]
fn quick_json_reports_every_figure_of_every_op() {
    let v = quick_json(&["--ops", &format!("{},mount", DEFAULT.join(","))]);
    let m = &v["machine"];
    assert!(m["cpus"].as_u64().is_some_and(|n| n > 0), "{m}");
    assert!(m["cpu_model"].is_string() && m["kernel"].is_string(), "{m}");
    assert!(v["pinned"].is_boolean() && v["pinning"].is_string(), "{v}");
    assert_eq!(v["pinned"], v["pinning"].as_str().unwrap().starts_with("pinned"), "{v}");
    assert_eq!(v["rounds"], 1);
    assert_eq!(names(&v), [&DEFAULT[..], &["mount"]].concat());
    assert_eq!(v["threads"], serde_json::json!([]));
    for op in v["ops"].as_array().unwrap() {
        for key in NUMBERS {
            assert!(figure(op, key), "{key} of {op}");
        }
        let bandwidth = op["name"].as_str().unwrap().starts_with("seq-");
        assert_eq!(op["unit"], if bandwidth { "GB/s" } else { "ns" }, "{op}");
        assert!(op["target"].as_str().is_some_and(|t| !t.is_empty()), "{op}");
        let no_target = op["target"] == "–";
        assert!(op["target_met"].is_boolean() || no_target, "{op}");
        assert!(op["udax_calls"].as_u64().is_some_and(|n| n > 0), "{op}");
    }
    let op = |name: &str| v["ops"].as_array().unwrap().iter().find(|o| o["name"] == name).unwrap().clone();
    assert_eq!(op("mount")["files"], 2000);
    assert_eq!(op("first-store-2m")["per"], "4 KiB");
    assert_eq!(op("first-store-4k")["target"], "≤ 2× tmpfs");
    assert_eq!(op("mount")["target"], "≤ 1 s");
}

/// What a plain `udax bench` times.
const DEFAULT: [&str; 15] = [
    "overwrite-4k",
    "append-4k",
    "pread-4k",
    "seq-write-1m",
    "seq-read-1m",
    "create",
    "create-ino",
    "stat",
    "lookup",
    "unlink",
    "rename",
    "readdir-10k",
    "mmap-setup-1g",
    "first-store-4k",
    "first-store-2m",
];

#[test]
fn threads_report_the_scaling_of_independent_files() {
    let v = quick_json(&["--ops", "append-4k,create,stat", "--threads", "2"]);
    assert_eq!(names(&v), ["append-4k", "create", "stat"]);
    let rows = v["threads"].as_array().unwrap();
    let rows: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(rows, ["append-4k x2", "create x2"]);
    for r in v["threads"].as_array().unwrap() {
        assert_eq!(r["threads"], 2, "{r}");
        for side in ["udax", "tmpfs"] {
            for key in ["ops_per_s", "1_thread_ops_per_s", "scaling"] {
                let k = format!("{side}_{key}");
                assert!(r[&k].as_f64().is_some_and(|x| x > 0.0), "{k} of {r}");
            }
        }
        assert!(r["target"].as_str().is_some_and(|t| t.starts_with("≥ ")), "{r}");
        assert!(r["target_met"].is_boolean(), "{r}");
    }
    let (out, _) = udax(&["bench", "--quick", "--ops", "stat", "--threads", "2"]);
    assert_eq!(out.status.code(), Some(2), "--threads without append-4k or create");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--threads"));
}

#[test]
fn svg_draws_a_bar_per_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ratios.svg");
    let (out, cleaned) = udax(&["bench", "--quick", "--ops", "pread-4k,mount", "--svg", path.to_str().unwrap()]);
    assert!(out.status.success() && cleaned, "{}", String::from_utf8_lossy(&out.stderr));
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{svg}");
    // pread-4k against tmpfs and the floor, and its target; mount has no ratio to draw.
    assert_eq!(svg.matches("<title>pread-4k").count(), 2, "{svg}");
    assert_eq!(svg.matches("<title>target").count(), 1, "{svg}");
    assert!(!svg.contains("mount"), "{svg}");
}

#[test]
fn ops_runs_only_those_asked_for() {
    let v = quick_json(&["--ops", "create,stat", "--rounds", "2"]);
    assert_eq!(names(&v), ["create", "stat"]);
    assert_eq!(v["rounds"], 2);
}

#[test]
fn text_table_has_the_columns() {
    let (out, cleaned) = udax(&["bench", "--quick", "--ops", "pread-4k,seq-read-1m"]);
    assert!(out.status.success() && cleaned);
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["floor", "tmpfs", "udax/floor", "udax/tmpfs", "target", "pread-4k", "GB/s", "≤ 1.1× floor"] {
        assert!(text.contains(word), "no {word:?} in:\n{text}");
    }
    let head = text.lines().next().unwrap();
    assert!(head.contains("pinned"), "the header says whether the rounds ran pinned: {head}");
}

#[test]
fn unknown_op_is_refused_with_the_valid_ones() {
    let (out, _) = udax(&["bench", "--quick", "--ops", "stat,teleport"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("teleport") && err.contains("overwrite-4k") && err.contains("rename"), "{err}");
    assert!(out.stdout.is_empty());
}
