//! CPU persistence primitives: cache-line write-back, store fence, non-temporal copy and fill.
//!
//! The write-back instruction is chosen once at run time (clwb > clflushopt > clflush) from CPUID.
//! Everything here works on raw pointers that [`super::Device`] has already bounds-checked.

use std::sync::atomic::{AtomicU8, Ordering};

/// Cache-line size the flush loops step by.
pub const LINE: usize = 64;

/// Cache lines that `[off, off+len)` touches.
pub fn lines(off: u64, len: u64) -> u64 {
    if len == 0 {
        return 0;
    }
    (off + len).div_ceil(LINE as u64) - off / LINE as u64
}

/// The cache-line write-back instruction in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushInsn {
    /// `clwb`: writes the line back and may keep it cached.
    Clwb,
    /// `clflushopt`: writes back and evicts, unordered with other flushes.
    Clflushopt,
    /// `clflush`: writes back and evicts, ordered with every other store and flush.
    Clflush,
    /// Not x86_64: a full fence stands in for every flush (the mapping is msync'd for durability).
    None,
}

impl FlushInsn {
    /// Name as the CPU manuals spell it.
    pub fn name(self) -> &'static str {
        match self {
            FlushInsn::Clwb => "clwb",
            FlushInsn::Clflushopt => "clflushopt",
            FlushInsn::Clflush => "clflush",
            FlushInsn::None => "none",
        }
    }
}

/// Non-temporal copy implementation in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NtInsn {
    /// 32-byte `vmovntdq` stores.
    Avx2,
    /// 16-byte `movntdq` stores.
    Sse2,
    /// No non-temporal stores: plain stores, then a flush of every line.
    None,
}

impl NtInsn {
    /// Name of the instruction, or of the fallback, as `udax info` shows it.
    pub fn name(self) -> &'static str {
        match self {
            NtInsn::Avx2 => "avx2 vmovntdq",
            NtInsn::Sse2 => "sse2 movntdq",
            NtInsn::None => "plain stores + flush",
        }
    }
}

/// `detect()`'s answer, as its index in `all`, worked out on first use and kept in `cache`
/// (0: not yet). Threads that race each detect (the same answer); none ever waits for another,
/// so a child forked while a thread of its parent was detecting does not wait for ever on a
/// thread it does not have (which a `OnceLock` would), and a direct-access client may fork.
fn detected<T: Copy + PartialEq>(cache: &AtomicU8, all: &[T], detect: impl FnOnce() -> T) -> T {
    match cache.load(Ordering::Relaxed) {
        0 => {
            let v = detect();
            if let Some(i) = all.iter().position(|&x| x == v) {
                cache.store(i as u8 + 1, Ordering::Relaxed);
            }
            v
        }
        n => all[usize::from(n) - 1],
    }
}

/// Detected once per process.
pub fn flush_insn() -> FlushInsn {
    static INSN: AtomicU8 = AtomicU8::new(0);
    detected(&INSN, &[FlushInsn::Clwb, FlushInsn::Clflushopt, FlushInsn::Clflush, FlushInsn::None], detect_flush)
}

pub fn nt_insn() -> NtInsn {
    static INSN: AtomicU8 = AtomicU8::new(0);
    detected(&INSN, &[NtInsn::Avx2, NtInsn::Sse2, NtInsn::None], || {
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                NtInsn::Avx2
            } else {
                NtInsn::Sse2
            }
        }
        #[cfg(any(not(target_arch = "x86_64"), miri))]
        {
            NtInsn::None
        }
    })
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
fn detect_flush() -> FlushInsn {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86_64 CPU; leaf 0 reports the highest leaf, checked before
    // leaf 7 is asked for.
    let max_leaf = unsafe { __cpuid(0) }.eax;
    if max_leaf >= 7 {
        #[allow(unused_unsafe)]
        // SAFETY: leaf 7 is within the range the CPU reported just above.
        let ebx = unsafe { __cpuid_count(7, 0) }.ebx;
        if ebx & (1 << 24) != 0 {
            return FlushInsn::Clwb;
        }
        if ebx & (1 << 23) != 0 {
            return FlushInsn::Clflushopt;
        }
    }
    FlushInsn::Clflush
}

#[cfg(any(not(target_arch = "x86_64"), miri))]
fn detect_flush() -> FlushInsn {
    FlushInsn::None
}

/// Writes back every cache line that `[p, p+len)` touches. Returns the number of lines.
///
/// # Safety
/// `[p, p+len)` must lie inside one live mapping.
pub unsafe fn flush_range(p: *const u8, len: usize, insn: FlushInsn) -> u64 {
    if len == 0 {
        return 0;
    }
    let head = p as usize & (LINE - 1);
    // Under miri (a heap device, nothing to write back) only the count is kept: a fence per
    // line would make every zeroed megabyte cost seconds of interpretation.
    if cfg!(miri) {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        return (head + len).div_ceil(LINE) as u64;
    }
    // Line starts as offsets from `p`, so the pointers keep `p`'s provenance.
    let mut at = 0;
    let mut n = 0;
    while at < head + len {
        // SAFETY: the line starting `at - head` bytes from `p` overlaps the caller's range,
        // which the caller guarantees is mapped; flush instructions neither read nor write the
        // bytes.
        unsafe { flush_line(p.wrapping_add(at).wrapping_sub(head), insn) };
        at += LINE;
        n += 1;
    }
    n
}

/// # Safety
/// `p` must point into a live mapping.
#[inline(always)]
unsafe fn flush_line(p: *const u8, insn: FlushInsn) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: the caller guarantees `p` is mapped; the instructions only write back a line.
    unsafe {
        match insn {
            FlushInsn::Clwb => std::arch::asm!("clwb [{0}]", in(reg) p, options(nostack, preserves_flags)),
            FlushInsn::Clflushopt => {
                std::arch::asm!("clflushopt [{0}]", in(reg) p, options(nostack, preserves_flags))
            }
            FlushInsn::Clflush | FlushInsn::None => {
                std::arch::asm!("clflush [{0}]", in(reg) p, options(nostack, preserves_flags))
            }
        }
    }
    #[cfg(any(not(target_arch = "x86_64"), miri))]
    {
        let _ = (p, insn);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }
}

/// Orders every earlier flush and non-temporal store before any later store.
#[inline(always)]
pub fn sfence() {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: sfence touches no memory operand; it only orders stores.
    unsafe {
        std::arch::asm!("sfence", options(nostack, preserves_flags))
    };
    #[cfg(any(not(target_arch = "x86_64"), miri))]
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

/// Copies `len` bytes between device memory and a private buffer with one `rep movsb`: device
/// memory is shared (mappings of any thread or process may store to it at any moment), and a
/// copy the compiler cannot see as Rust loads and stores is no data race in Rust's memory model.
/// Bytes a racing store changes may arrive old or new, as with any concurrent copy.
///
/// # Safety
/// `dst` must be valid for `len` bytes of writes and `src` for reads, not overlapping.
pub unsafe fn shared_copy(dst: *mut u8, src: *const u8, len: usize) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        // The bulk in 128-byte steps of 32-byte vector moves where AVX2 is there (rep movsb
        // starts slowly on a 4 KiB copy), the rest with rep movsb.
        let bulk = if nt_insn() == NtInsn::Avx2 { len & !127 } else { 0 };
        if bulk > 0 {
            // SAFETY: avx2 was detected at run time; `[0, bulk)` lies inside both ranges.
            unsafe { copy_avx2(dst, src, bulk) };
        }
        // SAFETY: the caller guarantees both ranges; `rep movsb` reads `[src, src+len)` and
        // writes `[dst, dst+len)` past the bulk only, forwards (the ABI keeps the direction
        // flag clear).
        unsafe {
            std::arch::asm!(
                "rep movsb",
                inout("rcx") len - bulk => _,
                inout("rsi") src.add(bulk) => _,
                inout("rdi") dst.add(bulk) => _,
                options(nostack, preserves_flags)
            )
        };
    }
    #[cfg(any(not(target_arch = "x86_64"), miri))]
    // SAFETY: the caller guarantees both ranges.
    unsafe {
        std::ptr::copy_nonoverlapping(src, dst, len)
    };
}

/// # Safety
/// AVX2 is available; `len` is a multiple of 128; both ranges valid and disjoint.
#[cfg(all(target_arch = "x86_64", not(miri)))]
#[target_feature(enable = "avx2")]
unsafe fn copy_avx2(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: each step loads `[src, src+128)` and stores `[dst, dst+128)`, inside the ranges
    // the caller guarantees, until `len` (a multiple of 128) is used up.
    unsafe {
        std::arch::asm!(
            "2:",
            "test rcx, rcx",
            "jz 3f",
            "vmovdqu ymm0, [rsi]",
            "vmovdqu ymm1, [rsi + 32]",
            "vmovdqu ymm2, [rsi + 64]",
            "vmovdqu ymm3, [rsi + 96]",
            "vmovdqu [rdi], ymm0",
            "vmovdqu [rdi + 32], ymm1",
            "vmovdqu [rdi + 64], ymm2",
            "vmovdqu [rdi + 96], ymm3",
            "add rsi, 128",
            "add rdi, 128",
            "sub rcx, 128",
            "jmp 2b",
            // Clean upper halves: SSE code after this would otherwise pay a transition.
            "3:",
            "vzeroupper",
            inout("rsi") src => _,
            inout("rdi") dst => _,
            inout("rcx") len => _,
            // vzeroupper changes every vector register's upper half.
            clobber_abi("C"),
            options(nostack)
        )
    };
}

/// Copies `len` bytes with non-temporal stores where the destination is 16-byte aligned, plain
/// stores (flushed here) at the unaligned head and tail. Returns the number of lines flushed.
///
/// # Safety
/// `dst` must be valid for `len` bytes of writes inside a live mapping, `src` valid for reads,
/// and the two must not overlap.
pub unsafe fn nt_copy(dst: *mut u8, src: *const u8, len: usize, flush: FlushInsn) -> u64 {
    let insn = nt_insn();
    if insn == NtInsn::None || len < 64 {
        // SAFETY: the caller's contract covers both ranges.
        unsafe {
            shared_copy(dst, src, len);
            return flush_range(dst, len, flush);
        }
    }
    let head = (16 - (dst as usize & 15)) & 15;
    let body = (len - head) & !63;
    let tail = len - head - body;
    let mut lines = 0;
    // SAFETY: head, body and tail partition `[0, len)`, which the caller guarantees valid.
    unsafe {
        if head > 0 {
            shared_copy(dst, src, head);
            lines += flush_range(dst, head, flush);
        }
        stream_body(dst.add(head), src.add(head), body, insn);
        if tail > 0 {
            let off = head + body;
            shared_copy(dst.add(off), src.add(off), tail);
            lines += flush_range(dst.add(off), tail, flush);
        }
    }
    lines
}

/// Fills `len` bytes with zeros using non-temporal stores where aligned. Returns lines flushed.
///
/// # Safety
/// `dst` must be valid for `len` bytes of writes inside a live mapping.
pub unsafe fn nt_zero(dst: *mut u8, len: usize, flush: FlushInsn) -> u64 {
    static ZEROS: [u8; 4096] = [0; 4096];
    let mut done = 0;
    let mut lines = 0;
    while done < len {
        let n = (len - done).min(ZEROS.len());
        // SAFETY: `[done, done+n)` lies inside the caller's range; ZEROS is a distinct static.
        lines += unsafe { nt_copy(dst.add(done), ZEROS.as_ptr(), n, flush) };
        done += n;
    }
    lines
}

/// # Safety
/// `dst` is 16-byte aligned, `len` a multiple of 64, both ranges valid and disjoint.
#[cfg(all(target_arch = "x86_64", not(miri)))]
unsafe fn stream_body(dst: *mut u8, src: *const u8, len: usize, insn: NtInsn) {
    if insn == NtInsn::Avx2 && (dst as usize) & 31 == 0 {
        // SAFETY: avx2 was detected at run time before `NtInsn::Avx2` was chosen; the
        // alignment was checked just above; the caller guarantees the ranges.
        unsafe { stream_avx2(dst, src, len) };
    } else {
        // SAFETY: sse2 is part of the x86_64 baseline; the caller guarantees the ranges.
        unsafe { stream_sse2(dst, src, len) };
    }
}

#[cfg(any(not(target_arch = "x86_64"), miri))]
unsafe fn stream_body(dst: *mut u8, src: *const u8, len: usize, _insn: NtInsn) {
    // SAFETY: the caller guarantees the ranges.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
}

// The stream loops are asm, as `shared_copy` is: their stores land in shared device memory.

#[cfg(all(target_arch = "x86_64", not(miri)))]
#[target_feature(enable = "avx2")]
unsafe fn stream_avx2(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: avx2 was detected by the caller's choice of `NtInsn::Avx2`; `len` is a multiple of
    // 64 and `dst` 32-byte aligned (the caller checked), so each aligned 32-byte non-temporal
    // store stays inside `[dst, dst+len)` and each unaligned load inside `[src, src+len)`.
    unsafe {
        std::arch::asm!(
            "2:",
            "test rcx, rcx",
            "jz 3f",
            "vmovdqu ymm0, [rsi]",
            "vmovdqu ymm1, [rsi + 32]",
            "vmovntdq [rdi], ymm0",
            "vmovntdq [rdi + 32], ymm1",
            "add rsi, 64",
            "add rdi, 64",
            "sub rcx, 64",
            "jmp 2b",
            // Clean upper halves: SSE code after this would otherwise pay a transition.
            "3:",
            "vzeroupper",
            inout("rsi") src => _,
            inout("rdi") dst => _,
            inout("rcx") len => _,
            // vzeroupper changes every vector register's upper half.
            clobber_abi("C"),
            options(nostack)
        )
    };
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
unsafe fn stream_sse2(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: sse2 is baseline; `len` is a multiple of 64 and `dst` 16-byte aligned (the caller
    // checked), so each aligned 16-byte non-temporal store stays inside `[dst, dst+len)` and
    // each unaligned load inside `[src, src+len)`.
    unsafe {
        std::arch::asm!(
            "2:",
            "test {n}, {n}",
            "jz 3f",
            "movdqu {a}, [{s}]",
            "movdqu {b}, [{s} + 16]",
            "movntdq [{d}], {a}",
            "movntdq [{d} + 16], {b}",
            "movdqu {a}, [{s} + 32]",
            "movdqu {b}, [{s} + 48]",
            "movntdq [{d} + 32], {a}",
            "movntdq [{d} + 48], {b}",
            "add {s}, 64",
            "add {d}, 64",
            "sub {n}, 64",
            "jmp 2b",
            "3:",
            s = inout(reg) src => _,
            d = inout(reg) dst => _,
            n = inout(reg) len => _,
            a = out(xmm_reg) _,
            b = out(xmm_reg) _,
            options(nostack)
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detection_is_kept_and_a_racing_one_needs_no_wait() {
        let cache = AtomicU8::new(0);
        let all = [NtInsn::Avx2, NtInsn::Sse2, NtInsn::None];
        assert_eq!(detected(&cache, &all, || NtInsn::Sse2), NtInsn::Sse2);
        assert_eq!(detected(&cache, &all, || unreachable!()), NtInsn::Sse2);
        // A thread that finds the cache empty detects for itself while another is still at
        // it: the slow detection goes on only once this one has returned.
        let slow = AtomicU8::new(0);
        let (go, wait) = std::sync::mpsc::channel();
        let (inside, started) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            let racer = s.spawn(|| {
                detected(&slow, &all, move || {
                    inside.send(()).unwrap();
                    wait.recv_timeout(std::time::Duration::from_secs(60))
                        .expect("the other detection waited for this one");
                    NtInsn::None
                })
            });
            started.recv().unwrap();
            assert_eq!(detected(&slow, &all, || NtInsn::None), NtInsn::None);
            go.send(()).unwrap();
            racer.join().unwrap();
        });
    }
}
