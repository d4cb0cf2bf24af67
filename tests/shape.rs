//! The library's shape, checked from its source: the module graph has no cycle and every use
//! goes down the layers DESIGN.md's opening picture draws (or stays in its layer); no public
//! function of the device, userfaultfd or mapping code hands out a Rust reference into memory
//! that another thread, mapping or process can change; files and functions stay within size.
//! Each checker is also run on a planted fault it must report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Modules by name (`fs`, `fs::mount`) with their source, test modules cut off.
fn modules() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::from(ROOT).join("src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(Path::new(ROOT).join("src")).unwrap();
                let mut parts: Vec<String> =
                    rel.with_extension("").iter().map(|s| s.to_string_lossy().into_owned()).collect();
                if parts.last().is_some_and(|l| l == "mod") {
                    parts.pop();
                }
                if parts == ["lib"] {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                let code = match text.find("#[cfg(test)]\nmod tests") {
                    Some(i) => &text[..i],
                    None => &text[..],
                };
                let code: Vec<&str> = code.lines().map(|l| l.split("//").next().unwrap()).collect();
                out.insert(parts.join("::"), code.join("\n"));
            }
        }
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The first-level names of a `{a, b::c, d::{e, f}}` group at the start of `s`.
fn group_heads(s: &str) -> Vec<&str> {
    let mut heads = Vec::new();
    let (mut depth, mut start) = (0, 1);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' | ',' if depth == 1 => {
                let item = s[start..i].trim();
                if !item.is_empty() {
                    heads.push(ident_at(item));
                }
                start = i + 1;
                if c == '}' {
                    break;
                }
            }
            '}' => depth -= 1,
            _ => {}
        }
    }
    heads
}

/// Modules `name` refers to: `crate::x`, `super::x`, groups of either, and (in a module with
/// children) `use child::…`. A path resolves to the longest module it names.
fn references(name: &str, code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let parent: Vec<&str> = name.split("::").collect();
    let resolve = |base: &[&str], rest: &str| -> Option<String> {
        // `super::item` uses the parent module itself.
        let mut best = (!base.is_empty()).then(|| base.join("::"));
        let mut path: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        for seg in rest.split("::") {
            let seg = ident_at(seg.trim());
            if seg.is_empty() {
                break;
            }
            path.push(seg.to_string());
            let p = path.join("::");
            if known.contains(&p) {
                best = Some(p);
            }
        }
        best
    };
    let mut out = BTreeSet::new();
    let mut scan = |prefix: &str, base: &[&str]| {
        for (i, _) in code.match_indices(prefix) {
            if i > 0 && code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &code[i + prefix.len()..];
            if rest.starts_with('{') {
                for head in group_heads(rest) {
                    let sub = &rest[rest.find(head).unwrap()..];
                    out.extend(resolve(base, sub));
                }
            } else {
                out.extend(resolve(base, rest));
            }
        }
    };
    scan("crate::", &[]);
    if parent.len() > 1 {
        scan("super::", &parent[..parent.len() - 1]);
    }
    // A module with children reaches them by relative paths in its `use` items.
    for line in code.lines() {
        let t = line.trim_start();
        let t = t.strip_prefix("pub(crate) ").or_else(|| t.strip_prefix("pub ")).unwrap_or(t);
        if let Some(rest) = t.strip_prefix("use ") {
            if !rest.starts_with("crate::") && !rest.starts_with("super::") && !rest.starts_with("std::") {
                out.extend(resolve(&parent, rest));
            }
        }
    }
    out.remove(name);
    out
}

/// The layers of DESIGN.md's picture, lowest first: the modules each one holds.
fn layers() -> Vec<Vec<String>> {
    let design = std::fs::read_to_string(Path::new(ROOT).join("DESIGN.md")).unwrap();
    let start = design.find("<!-- layers -->").expect("DESIGN.md has no layer picture");
    let end = design[start..].find("<!-- /layers -->").unwrap() + start;
    let mut out: Vec<(u32, Vec<String>)> = Vec::new();
    for line in design[start..end].lines() {
        let mut words = line.split_whitespace();
        let Some(n) = words.next().and_then(|w| w.parse::<u32>().ok()) else { continue };
        // "N label  mod mod …": module names contain a lowercase letter and no brackets.
        let mods = words.skip(1).take_while(|w| !w.starts_with('(') && !w.starts_with('['));
        out.push((n, mods.map(str::to_string).collect()));
    }
    out.sort();
    out.into_iter().map(|(_, m)| m).collect()
}

/// The layer of `module`: its own entry, else its nearest listed ancestor's.
fn layer_of(module: &str, layers: &[Vec<String>]) -> Option<usize> {
    let mut m = module.to_string();
    loop {
        if let Some(i) = layers.iter().position(|l| l.contains(&m)) {
            return Some(i);
        }
        m = m.rsplit_once("::")?.0.to_string();
    }
}

/// What is wrong with a module graph under `layers`: unplaced modules, uses that climb, cycles.
fn graph_faults(graph: &BTreeMap<String, BTreeSet<String>>, layers: &[Vec<String>]) -> Vec<String> {
    let mut faults = Vec::new();
    for (m, uses) in graph {
        let Some(lm) = layer_of(m, layers) else {
            faults.push(format!("module {m} is in no layer of DESIGN.md's picture"));
            continue;
        };
        for u in uses {
            if let Some(lu) = layer_of(u, layers) {
                if lu > lm {
                    faults.push(format!("{m} (layer {lm}) uses {u} (layer {lu}), above it"));
                }
            }
        }
    }
    // Cycles: depth-first search, reporting each back edge's loop once. A module and its own
    // submodules are one unit here (a child adds to its parent, which declares it); the layer
    // check above still applies to them.
    let related = |a: &str, b: &str| a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"));
    let graph: BTreeMap<String, BTreeSet<String>> =
        graph.iter().map(|(m, uses)| (m.clone(), uses.iter().filter(|u| !related(m, u)).cloned().collect())).collect();
    let graph = &graph;
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
        faults: &mut Vec<String>,
    ) {
        marks.insert(m.to_string(), Mark::Open);
        path.push(m.to_string());
        for u in graph.get(m).into_iter().flatten() {
            match marks.get(u).copied().unwrap_or(Mark::New) {
                Mark::New => visit(u, graph, marks, path, faults),
                Mark::Open => {
                    let from = path.iter().position(|p| p == u).unwrap();
                    faults.push(format!("cycle: {} -> {u}", path[from..].join(" -> ")));
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(m.to_string(), Mark::Done);
    }
    let mut marks = BTreeMap::new();
    for m in graph.keys() {
        if marks.get(m).copied().unwrap_or(Mark::New) == Mark::New {
            visit(m, graph, &mut marks, &mut Vec::new(), &mut faults);
        }
    }
    faults
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules();
    let known: BTreeSet<String> = mods.keys().cloned().collect();
    mods.iter().map(|(m, code)| (m.clone(), references(m, code, &known))).collect()
}

#[test]
fn modules_form_the_layers_of_the_design_picture_with_no_cycle() {
    let graph = graph();
    for (m, uses) in &graph {
        println!("{m} -> {}", uses.iter().cloned().collect::<Vec<_>>().join(" "));
    }
    let faults = graph_faults(&graph, &layers());
    assert!(faults.is_empty(), "{}", faults.join("\n"));
}

#[test]
fn the_graph_check_catches_a_planted_cycle_and_a_climbing_use() {
    let layers = layers();
    let mut g = graph();
    g.get_mut("layout").unwrap().insert("alloc".into());
    g.get_mut("alloc").unwrap().insert("layout".into());
    g.get_mut("inode").unwrap().insert("fs::state".into());
    let faults = graph_faults(&g, &layers);
    assert!(faults.iter().any(|f| f.starts_with("cycle:") && f.contains("alloc")), "{faults:?}");
    assert!(faults.iter().any(|f| f.starts_with("inode") && f.contains("above it")), "{faults:?}");
    // And the reader sees a use written as a group.
    let known: BTreeSet<String> = ["fs", "fs::state", "fs::node", "layout"].iter().map(|s| s.to_string()).collect();
    let refs = references("fs::mount", "use super::{node::Node, state::Fs};\nuse crate::layout::off;", &known);
    assert_eq!(refs, known.iter().filter(|k| *k != "fs").cloned().collect());
}

/// Public functions of `code` that hand out a reference: a reference (or slice) returned, or
/// one passed into a caller's closure.
fn lending(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices("pub fn ") {
        let sig_end = code[i..].find(['{', ';']).map_or(code.len(), |e| i + e);
        let sig: String = code[i..sig_end].split_whitespace().collect::<Vec<_>>().join(" ");
        // `&'static` data (a name) is nobody's memory to change.
        let ret = sig.split_once("->").map_or("", |(_, r)| r).replace("&'static", "");
        let closure_ref = ["Fn(&", "FnMut(&", "FnOnce(&"].iter().any(|p| sig.contains(p));
        if ret.contains('&') || closure_ref {
            out.push(sig);
        }
    }
    out
}

#[test]
fn no_public_function_lends_device_or_mapped_memory() {
    let mods = modules();
    let mut found = Vec::new();
    for m in ["device", "device::persist", "uffd", "uffd::sys", "fs::mmap", "fs::fault", "fs::node"] {
        let code = mods.get(m).unwrap_or_else(|| panic!("no module {m}"));
        for sig in lending(code) {
            // Borrowing the device's own bookkeeping (its backend, a descriptor) is no lending
            // of device memory.
            let harmless = ["-> &Backend", "-> Option<std::os::fd::BorrowedFd<'_>>"];
            if !harmless.iter().any(|h| sig.ends_with(h)) {
                found.push(format!("{m}: {sig}"));
            }
        }
    }
    assert!(found.is_empty(), "public functions lending references:\n{}", found.join("\n"));
    // The shape the old mapping API had is reported.
    let planted = "impl Mapping {\n    pub fn with_slice_mut<R>(&self, off: u64, len: u64, f: impl FnOnce(&mut [u8]) -> R) -> R {\n";
    assert_eq!(lending(planted).len(), 1);
    assert_eq!(lending("pub fn bytes(&self) -> &[u8] {").len(), 1);
    assert!(lending("pub fn read_at(&self, buf: &mut [u8], off: u64) -> Result<()> {").is_empty());
}

/// Files over this many lines, and functions over `FN_MAX`, in the product's source.
const FILE_MAX: usize = 800;
const FN_MAX: usize = 120;

/// Functions of `text` longer than `FN_MAX` lines: name and length.
fn long_functions(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let indent = l.len() - t.len();
        let t = ["pub(crate) ", "pub(super) ", "pub "].iter().fold(t, |t, p| t.strip_prefix(p).unwrap_or(t));
        let t = t.strip_prefix("unsafe ").unwrap_or(t);
        let Some(rest) = t.strip_prefix("fn ") else { continue };
        if l.trim_end().ends_with(';') {
            continue;
        }
        let close = " ".repeat(indent) + "}";
        if let Some(len) = lines[i..].iter().position(|x| x.trim_end() == close) {
            if len + 1 > FN_MAX {
                out.push((ident_at(rest).to_string(), len + 1));
            }
        }
    }
    out
}

#[test]
fn files_and_functions_stay_within_size() {
    let mut faults = Vec::new();
    for dir in ["src", "cli/src", "fuse/src", "direct/src", "preload/src"] {
        let mut stack = vec![Path::new(ROOT).join(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                if p.extension().is_none_or(|x| x != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                let rel = p.strip_prefix(ROOT).unwrap().display().to_string();
                let n = text.lines().count();
                if n > FILE_MAX {
                    faults.push(format!("{rel}: {n} lines"));
                }
                for (f, len) in long_functions(&text) {
                    faults.push(format!("{rel}: fn {f} is {len} lines"));
                }
            }
        }
    }
    assert!(faults.is_empty(), "over {FILE_MAX} lines a file or {FN_MAX} a function:\n{}", faults.join("\n"));
    let planted = format!("fn long() {{\n{}}}\n", "    x();\n".repeat(FN_MAX));
    assert_eq!(long_functions(&planted), [("long".to_string(), FN_MAX + 2)]);
}
