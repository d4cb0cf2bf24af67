//! A turnstile for the crash explorer's concurrent workload (`crash-test` feature): two or more
//! threads run file-system operations one at a time, and the turn passes between them at fences
//! (chosen by a seeded schedule) and whenever the running thread finds a lock held. Every
//! interleaving it produces is one a real run could take; the seed makes it reproducible.
//!
//! Threads that have not joined a turnstile (everything outside the explorer, and the fault
//! service inside it) are never held: for them each hook is one thread-local load.

use std::cell::RefCell;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a thread waits for its turn before the turnstile gives up ordering (the others
/// are then presumed stuck; [`Turnstile::stalled`] says so).
const PATIENCE: Duration = Duration::from_secs(10);

/// Shared by the threads of one interleaved run.
#[derive(Debug)]
pub struct Turnstile {
    state: Mutex<State>,
    turn: Condvar,
}

#[derive(Debug)]
struct State {
    /// The thread whose turn it is.
    running: usize,
    /// Threads that have not finished.
    live: Vec<bool>,
    rng: u64,
    /// One in `switch_odds` fences hands the turn on.
    switch_odds: u64,
    /// Set when a thread waited longer than [`PATIENCE`]: from then on nobody waits.
    stalled: bool,
    /// Which thread ran after each hand-over, for reports.
    trace: Vec<usize>,
}

thread_local! {
    static JOINED: RefCell<Option<(Arc<Turnstile>, usize)>> = const { RefCell::new(None) };
}

impl Turnstile {
    /// A turnstile for `threads` threads, the first turn to `first`; at each fence the turn
    /// moves on with odds one in `switch_odds` (drawn from `seed`).
    pub fn new(threads: usize, first: usize, seed: u64, switch_odds: u64) -> Arc<Turnstile> {
        Arc::new(Turnstile {
            state: Mutex::new(State {
                running: first,
                live: vec![true; threads],
                rng: seed | 1,
                switch_odds: switch_odds.max(1),
                stalled: false,
                trace: vec![first],
            }),
            turn: Condvar::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the calling thread participant `me`, and waits for its first turn.
    pub fn join(self: &Arc<Self>, me: usize) {
        JOINED.with(|j| *j.borrow_mut() = Some((self.clone(), me)));
        self.wait_turn(self.state(), me);
    }

    /// The calling thread is done: the turn passes to another live thread.
    pub fn leave(&self) {
        let Some(me) = JOINED.with(|j| j.borrow_mut().take()).map(|(_, me)| me) else { return };
        let mut s = self.state();
        s.live[me] = false;
        if let Some(next) = s.other(me) {
            s.hand_to(next);
        }
        self.turn.notify_all();
    }

    /// Whether some thread waited so long for its turn that ordering was given up.
    pub fn stalled(&self) -> bool {
        self.state().stalled
    }

    /// Which thread held the turn, in order.
    pub fn trace(&self) -> Vec<usize> {
        self.state().trace.clone()
    }

    fn wait_turn(&self, mut s: std::sync::MutexGuard<'_, State>, me: usize) {
        let started = Instant::now();
        while s.running != me && !s.stalled {
            let left = PATIENCE.saturating_sub(started.elapsed());
            if left.is_zero() {
                s.stalled = true;
                self.turn.notify_all();
                break;
            }
            s = self.turn.wait_timeout(s, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Hands the turn to another live thread (when `always`, or when the schedule says so) and
    /// waits until it comes back.
    fn pass(&self, me: usize, always: bool) {
        let mut s = self.state();
        if s.stalled {
            return;
        }
        let switch = always || s.next() % s.switch_odds == 0;
        match s.other(me) {
            Some(next) if switch => s.hand_to(next),
            _ => return,
        }
        self.turn.notify_all();
        self.wait_turn(s, me);
    }
}

impl State {
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// A live thread other than `me`, drawn from the schedule.
    fn other(&mut self, me: usize) -> Option<usize> {
        let others: Vec<usize> = (0..self.live.len()).filter(|&t| t != me && self.live[t]).collect();
        if others.is_empty() {
            return None;
        }
        let pick = (self.next() % others.len() as u64) as usize;
        Some(others[pick])
    }

    fn hand_to(&mut self, next: usize) {
        self.running = next;
        self.trace.push(next);
    }
}

/// The calling thread's turnstile and place in it, if it joined one.
fn joined() -> Option<(Arc<Turnstile>, usize)> {
    JOINED.with(|j| j.borrow().clone())
}

/// A fence was issued: a participant may have to let another thread run.
pub(crate) fn at_fence() {
    if let Some((t, me)) = joined() {
        t.pass(me, false);
    }
}

/// A lock the caller wants is held: a participant lets another thread run (perhaps the
/// holder); anyone else just yields the CPU.
pub(crate) fn lock_held() {
    match joined() {
        Some((t, me)) => {
            t.pass(me, true);
            // The holder may be no participant (nothing to hand over to): do not spin hot.
            std::thread::yield_now();
        }
        None => std::thread::yield_now(),
    }
}

/// Whether the calling thread is a participant (its locks must be taken without blocking).
pub(crate) fn joined_any() -> bool {
    JOINED.with(|j| j.borrow().is_some())
}
