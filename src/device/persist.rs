//! CPU persistence primitives: cache-line write-back, store fence, non-temporal copy and fill.
//!
//! The write-back instruction is chosen once at run time (clwb > clflushopt > clflush) from CPUID.
//! Everything here works on raw pointers that [`super::Device`] has already bounds-checked.

use std::sync::OnceLock;

/// Cache-line size the flush loops step by.
pub const LINE: usize = 64;

/// The cache-line write-back instruction in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushInsn {
    Clwb,
    Clflushopt,
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
    Avx2,
    Sse2,
    None,
}

impl NtInsn {
    pub fn name(self) -> &'static str {
        match self {
            NtInsn::Avx2 => "avx2 vmovntdq",
            NtInsn::Sse2 => "sse2 movntdq",
            NtInsn::None => "plain stores + flush",
        }
    }
}

/// Detected once per process.
pub fn flush_insn() -> FlushInsn {
    static INSN: OnceLock<FlushInsn> = OnceLock::new();
    *INSN.get_or_init(detect_flush)
}

pub fn nt_insn() -> NtInsn {
    static INSN: OnceLock<NtInsn> = OnceLock::new();
    *INSN.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                NtInsn::Avx2
            } else {
                NtInsn::Sse2
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            NtInsn::None
        }
    })
}

#[cfg(target_arch = "x86_64")]
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

#[cfg(not(target_arch = "x86_64"))]
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
    let start = (p as usize) & !(LINE - 1);
    let end = p as usize + len;
    let mut line = start;
    let mut n = 0;
    while line < end {
        // SAFETY: `line` is the start of a cache line overlapping the caller's range, which the
        // caller guarantees is mapped; flush instructions neither read nor write the bytes.
        unsafe { flush_line(line as *const u8, insn) };
        line += LINE;
        n += 1;
    }
    n
}

/// # Safety
/// `p` must point into a live mapping.
#[inline(always)]
unsafe fn flush_line(p: *const u8, insn: FlushInsn) {
    #[cfg(target_arch = "x86_64")]
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
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (p, insn);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }
}

/// Orders every earlier flush and non-temporal store before any later store.
#[inline(always)]
pub fn sfence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: sfence touches no memory operand; it only orders stores.
    unsafe {
        std::arch::asm!("sfence", options(nostack, preserves_flags))
    };
    #[cfg(not(target_arch = "x86_64"))]
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
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
            std::ptr::copy_nonoverlapping(src, dst, len);
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
            std::ptr::copy_nonoverlapping(src, dst, head);
            lines += flush_range(dst, head, flush);
        }
        stream_body(dst.add(head), src.add(head), body, insn);
        if tail > 0 {
            let off = head + body;
            std::ptr::copy_nonoverlapping(src.add(off), dst.add(off), tail);
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
#[cfg(target_arch = "x86_64")]
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

#[cfg(not(target_arch = "x86_64"))]
unsafe fn stream_body(dst: *mut u8, src: *const u8, len: usize, _insn: NtInsn) {
    // SAFETY: the caller guarantees the ranges.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn stream_avx2(dst: *mut u8, src: *const u8, len: usize) {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_stream_si256};
    let mut i = 0;
    while i < len {
        // SAFETY: `i + 64 <= len`; `dst + i` is 32-byte aligned because `dst` is and `i` steps
        // by 64; unaligned loads are allowed from `src`.
        unsafe {
            let a = _mm256_loadu_si256(src.add(i) as *const __m256i);
            let b = _mm256_loadu_si256(src.add(i + 32) as *const __m256i);
            _mm256_stream_si256(dst.add(i) as *mut __m256i, a);
            _mm256_stream_si256(dst.add(i + 32) as *mut __m256i, b);
        }
        i += 64;
    }
}

#[cfg(target_arch = "x86_64")]
unsafe fn stream_sse2(dst: *mut u8, src: *const u8, len: usize) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
    let mut i = 0;
    while i < len {
        // SAFETY: `i + 64 <= len`; `dst + i + 16k` is 16-byte aligned because `dst` is.
        unsafe {
            for k in 0..4 {
                let v = _mm_loadu_si128(src.add(i + 16 * k) as *const __m128i);
                _mm_stream_si128(dst.add(i + 16 * k) as *mut __m128i, v);
            }
        }
        i += 64;
    }
}
