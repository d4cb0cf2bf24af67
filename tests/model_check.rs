//! Model check of the mapping protocol (`cargo test --features model --test model_check`): the
//! fault service, resets, writes, punches and truncates run as built, under shuttle, over a
//! simulated address space and userfaultfd. Each scenario races a few operations on one file
//! with loads and stores through its mapping, then checks what a program would see: the mapping
//! equal to the file inside EOF, stores through it reaching the file, SIGBUS exactly past EOF.
//!
//! Putting back a window that the protocol closes (`udax::model::plant`) must make the check
//! fail; the `planted_*` tests assert that, so a checker that cannot see the window fails too.
//! The windows are the ones an outside review found — a reset that mapped fresh memory and
//! registered it afterwards (stores in between went to a private page, a shrink left a page
//! loadable), a hole load that installed the zero page and protected it afterwards — and a first
//! store that allocates beside a write copying without the inode lock.
#![cfg(feature = "model")]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use shuttle::thread;
use udax::model::{plant, Plant};
use udax::{Device, FallocMode, File, Fs, Mapping, MkfsOptions, OpenOptions, Prot, Share, PAGE};

/// Schedules explored per scenario (probabilistic concurrency testing, depth 3: bugs that need
/// up to two preemptions are found with good probability per schedule).
const SCHEDULES: usize = 2000;
const DEPTH: usize = 3;
const LEN: usize = 2 * PAGE as usize;

/// Plants are process-wide: one scenario at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn file(len: u64, written: bool) -> (Fs, Arc<File>, Arc<Mapping>) {
    let opts = MkfsOptions { block_size: 4096, ..Default::default() };
    let fs = Fs::mkfs(Device::anonymous(8 << 20).unwrap(), &opts).unwrap();
    let f = fs.open("/f", OpenOptions::create()).unwrap();
    if written {
        f.write_at(&vec![7; len as usize], 0).unwrap();
    } else {
        f.set_len(len).unwrap();
    }
    let m = f.mmap(0, LEN as u64, Prot::ReadWrite, Share::Shared).unwrap();
    (fs, Arc::new(f), Arc::new(m))
}

/// Quiet now: inside EOF the mapping shows the file, a store through it reaches the file; past
/// the EOF page a load raises SIGBUS.
fn coherent(f: &File, m: &Mapping) {
    let size = f.metadata().unwrap().size as usize;
    let (mut via_map, mut via_read) = (vec![0; size], vec![0; size]);
    m.read_at(&mut via_map, 0).unwrap();
    f.read_at(&mut via_read, 0).unwrap();
    assert!(via_map == via_read, "the mapping shows other bytes than the file");
    if size > 0 {
        m.write_at(&[0x55], size as u64 - 1).unwrap();
        let mut back = [0];
        f.read_at(&mut back, size as u64 - 1).unwrap();
        assert_eq!(back, [0x55], "a store through the mapping did not reach the file");
    }
    let first_past = size.div_ceil(PAGE as usize) * PAGE as usize;
    for page in (first_past..LEN).step_by(PAGE as usize) {
        assert!(!m.loadable(page as u64).unwrap(), "page at {page} past EOF is loadable");
    }
}

/// Case 1: punch (or zero range) over the file while one thread stores through the mapping and
/// one loads.
fn churn_against_access(how: FallocMode) -> impl Fn() + Send + Sync + 'static {
    move || {
        let (_fs, f, m) = file(LEN as u64, true);
        let churn = {
            let f = f.clone();
            thread::spawn(move || f.fallocate(0, LEN as u64, how).unwrap())
        };
        let store = {
            let m = m.clone();
            thread::spawn(move || m.write_at(&[9; 8], 100).unwrap())
        };
        let mut b = [0; 8];
        m.read_at(&mut b, PAGE + 100).unwrap();
        churn.join().unwrap();
        store.join().unwrap();
        coherent(&f, &m);
    }
}

/// Case 1 with a write into the punched hole, racing a store to the same page.
fn punch_write_against_store() {
    let (_fs, f, m) = file(LEN as u64, true);
    let churn = {
        let f = f.clone();
        thread::spawn(move || {
            f.fallocate(0, LEN as u64, FallocMode::PunchHole).unwrap();
            f.write_at(&[3; 16], 200).unwrap();
        })
    };
    m.write_at(&[9; 8], 100).unwrap();
    churn.join().unwrap();
    coherent(&f, &m);
}

/// A load and a store race into a hole of a shared writable mapping.
fn hole_load_against_store() {
    let (_fs, f, m) = file(LEN as u64, false);
    let load = {
        let m = m.clone();
        thread::spawn(move || {
            let mut b = [0; 8];
            m.read_at(&mut b, 0).unwrap();
        })
    };
    m.write_at(&[9; 8], 8).unwrap();
    load.join().unwrap();
    coherent(&f, &m);
}

/// Case 2: a shrink races loads of the page it cuts off; once `set_len` returns that page
/// raises SIGBUS.
fn shrink_against_load() {
    let (_fs, f, m) = file(LEN as u64, true);
    let load = {
        let m = m.clone();
        thread::spawn(move || {
            for _ in 0..2 {
                let _ = m.loadable(PAGE);
            }
        })
    };
    f.set_len(PAGE).unwrap();
    assert!(!m.loadable(PAGE).unwrap(), "page 1 loadable after set_len returned");
    load.join().unwrap();
    coherent(&f, &m);
}

/// A write that grows the file races a store into the old EOF page and a load past it.
fn grow_against_access() {
    let (_fs, f, m) = file(PAGE + 10, true);
    let grow = {
        let f = f.clone();
        thread::spawn(move || f.write_at(&[4; 16], PAGE + 500).unwrap())
    };
    m.write_at(&[9; 4], PAGE + 2).unwrap();
    let _ = m.loadable(PAGE + 600);
    grow.join().unwrap();
    coherent(&f, &m);
}

type Scenario = Box<dyn Fn() + Send + Sync>;

/// A write into holes (copying without the inode lock) races a first store into the same page
/// and a load of the other page: both the write and the store must land.
fn write_against_first_store() {
    let (_fs, f, m) = file(LEN as u64, false);
    let write = {
        let f = f.clone();
        thread::spawn(move || f.write_at(&[4; 16], 100).unwrap())
    };
    let load = {
        let m = m.clone();
        thread::spawn(move || {
            let mut b = [0; 8];
            m.read_at(&mut b, PAGE + 8).unwrap();
        })
    };
    m.write_at(&[9; 8], 200).unwrap();
    write.join().unwrap();
    load.join().unwrap();
    let mut b = [0; 8];
    f.read_at(&mut b, 100).unwrap();
    assert_eq!(b, [4; 8], "the write was lost");
    f.read_at(&mut b, 200).unwrap();
    assert_eq!(b, [9; 8], "the store was lost");
    coherent(&f, &m);
}

/// A read-only mapping of a partly written file loads while a write fills a hole and a punch
/// empties the other page: nothing it is served may need write protection (a read-only region
/// has none), and quiet, it shows the file.
fn read_only_mapping_against_writes() {
    let opts = MkfsOptions { block_size: 1024, ..Default::default() };
    let fs = Fs::mkfs(Device::anonymous(8 << 20).unwrap(), &opts).unwrap();
    let f = Arc::new(fs.open("/f", OpenOptions::create()).unwrap());
    f.set_len(LEN as u64).unwrap();
    f.write_at(&[7; 1024], PAGE).unwrap();
    let m = Arc::new(f.mmap(0, LEN as u64, Prot::Read, Share::Shared).unwrap());
    let churn = {
        let f = f.clone();
        thread::spawn(move || {
            f.write_at(&[4; 16], 100).unwrap();
            f.fallocate(PAGE, PAGE, FallocMode::PunchHole).unwrap();
        })
    };
    let mut b = [0; 8];
    m.read_at(&mut b, PAGE).unwrap();
    m.read_at(&mut b, 96).unwrap();
    churn.join().unwrap();
    let (mut via_map, mut via_read) = (vec![0; LEN], vec![0; LEN]);
    m.read_at(&mut via_map, 0).unwrap();
    f.read_at(&mut via_read, 0).unwrap();
    assert!(via_map == via_read, "the mapping shows other bytes than the file");
}

fn scenarios() -> Vec<(&'static str, Scenario)> {
    vec![
        ("punch vs store and load", Box::new(churn_against_access(FallocMode::PunchHole))),
        ("zero range vs store and load", Box::new(churn_against_access(FallocMode::ZeroRange { keep_size: true }))),
        ("punch and write vs store", Box::new(punch_write_against_store)),
        ("hole load vs store", Box::new(hole_load_against_store)),
        ("shrink vs load", Box::new(shrink_against_load)),
        ("grow vs store and load", Box::new(grow_against_access)),
        ("write into holes vs first store", Box::new(write_against_first_store)),
        ("read-only mapping vs writes", Box::new(read_only_mapping_against_writes)),
    ]
}

/// The failure the checker finds in `scenario` within the schedule budget, if any: the panic
/// message of the failing schedule (which shuttle prints, with the schedule to replay it).
fn failure(scenario: impl Fn() + Send + Sync + 'static) -> Option<String> {
    let e = catch_unwind(AssertUnwindSafe(|| shuttle::check_pct(scenario, SCHEDULES, DEPTH))).err()?;
    let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
    Some(msg.unwrap_or_else(|| "a panic without a message".into()))
}

/// Asserts that `scenario` fails with a violation of the kind `what` names.
fn found(scenario: impl Fn() + Send + Sync + 'static, what: &str) {
    match failure(scenario) {
        Some(msg) => assert!(msg.contains(what), "the check failed, but not on {what:?}: {msg}"),
        None => panic!("the planted window went unseen in {SCHEDULES} schedules ({what:?})"),
    }
}

#[test]
fn the_protocol_holds_in_every_explored_schedule() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    plant(Plant::None);
    for (name, scenario) in scenarios() {
        if let Some(msg) = failure(scenario) {
            panic!("{name}: the model check found a violation: {msg} (schedule above)");
        }
    }
}

/// Plants a window for the length of a test.
struct Planted {
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Planted {
    fn new(p: Plant) -> Planted {
        let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        plant(p);
        Planted { _serial: g }
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        plant(Plant::None);
    }
}

#[test]
fn planted_two_step_reset_is_found() {
    let _p = Planted::new(Plant::TwoStepReset);
    found(churn_against_access(FallocMode::PunchHole), "the mapping shows other bytes than the file");
    found(shrink_against_load, "loadable after set_len returned");
}

#[test]
fn planted_two_step_zero_page_is_found() {
    let _p = Planted::new(Plant::TwoStepZeroPage);
    found(hole_load_against_store, "the mapping shows other bytes than the file");
}

#[test]
fn planted_write_protected_copy_in_a_read_only_mapping_is_found() {
    let _p = Planted::new(Plant::WriteProtectEveryCopy);
    // The kernel refuses it (EINVAL), the fault fails, and a load inside EOF gets SIGBUS.
    found(read_only_mapping_against_writes, "access through the mapping");
}

#[test]
fn planted_store_beside_an_unlocked_write_is_found() {
    let _p = Planted::new(Plant::StoresIgnoreWrites);
    let msg = failure(write_against_first_store).expect("the planted race went unseen");
    assert!(
        ["was lost", "other bytes than the file", "did not reach", "insert over a mapped range"]
            .iter()
            .any(|w| msg.contains(w)),
        "the check failed, but not on a lost byte or a doubly allocated block: {msg}"
    );
}
