//! The idle loop's alarm clock: the local APIC timer in one-shot mode
//! (Intel SDM vol. 3A §11.5.4), so the CPU can halt until smoltcp's next
//! timer (a TCP retransmission, a DHCP renewal) even when no packet comes.
//!
//! The APIC timer counts a bus clock divided by 16, whose rate the SDM
//! leaves to the platform, so [`init`] measures it against the TSC (which
//! `clock` calibrated): start the timer from its maximum, read its count
//! and the TSC, busy-wait [`MEASURE_WINDOW_US`], read both again. The interrupt
//! itself does nothing; waking the CPU from `hlt` is the whole point.
//!
//! The timer is shared with the interrupt-driven waits of `virtio::irq`
//! (their watchdog); that is fine because every CPU has its own APIC timer,
//! and on one CPU the idle loop and a blocking wait never run at the same
//! time, and each arms the timer just before it halts.

use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use smoltcp::time::Duration;

use crate::interrupts;

/// Vector of the alarm (0: none could be allocated).
static VECTOR: AtomicU8 = AtomicU8::new(0);
/// APIC timer ticks per millisecond (after the divide-by-16).
static TICKS_PER_MS: AtomicU32 = AtomicU32::new(0);
/// How long the APIC timer is measured against the TSC. Each end of the
/// window is a count read and a TSC read back to back, a few hundred
/// nanoseconds apart even under TCG, so 250 µs measures the rate to well
/// under 1 %, closer than an idle alarm needs; a longer window would only
/// make the boot wait (it was 1 ms).
const MEASURE_WINDOW_US: u64 = 250;
/// Used when the measurement is impossible (no calibrated TSC): QEMU's
/// APIC timer runs at 1 GHz, so 62 500 ticks per millisecond after the divider.
const FALLBACK_TICKS_PER_MS: u32 = 62_500;

fn alarm(_vector: u8) {}

/// Allocates the alarm's vector and measures the timer. Idempotent.
pub fn init() {
    if VECTOR.load(Ordering::Relaxed) != 0 {
        return;
    }
    let vector = match interrupts::allocate_vector(alarm) {
        Ok(vector) => vector,
        Err(error) => {
            log::warn!("net: no vector for the idle alarm ({error}); the idle loop will spin");
            return;
        }
    };
    VECTOR.store(vector, Ordering::Relaxed);
    let hz = crate::clock::tsc_hz();
    let ticks = if hz == 0 {
        FALLBACK_TICKS_PER_MS
    } else {
        x86_64::instructions::interrupts::without_interrupts(|| {
            let _ = interrupts::start_timer_oneshot(vector, u32::MAX);
            // Both ends are the same pair of reads (count, then TSC), so
            // whatever happens before the first pair (an emulator
            // translating this code) is outside the window.
            let (first, start) = count_and_tsc();
            let window = hz * MEASURE_WINDOW_US / 1_000_000;
            let (last, end) = loop {
                let (count, now) = count_and_tsc();
                if now.wrapping_sub(start) >= window {
                    break (count, now);
                }
                core::hint::spin_loop();
            };
            interrupts::stop_timer();
            let counted = u128::from(first.saturating_sub(last));
            let elapsed = u128::from(end.wrapping_sub(start).max(1));
            // ticks per ms = counted / (elapsed / hz) / 1000
            u32::try_from(counted * u128::from(hz) / elapsed / 1000).unwrap_or(u32::MAX)
        })
    };
    let ticks = if ticks == 0 {
        FALLBACK_TICKS_PER_MS
    } else {
        ticks
    };
    TICKS_PER_MS.store(ticks, Ordering::Relaxed);
    log::debug!("net: idle alarm on vector {vector:#04x}, APIC timer {ticks} ticks/ms");
}

/// The APIC timer's current count and the TSC, read back to back.
fn count_and_tsc() -> (u32, u64) {
    (interrupts::timer_current_count(), crate::clock::tsc())
}

/// Arms the alarm `after` from now (at least 10 µs, at most ~60 s).
pub fn arm(after: Duration) {
    let vector = VECTOR.load(Ordering::Relaxed);
    if vector == 0 {
        return;
    }
    let per_ms = u64::from(TICKS_PER_MS.load(Ordering::Relaxed).max(1));
    let micros = after.total_micros().clamp(10, 60_000_000);
    let ticks = (micros * per_ms / 1000).clamp(1, u64::from(u32::MAX)) as u32;
    let _ = interrupts::start_timer_oneshot(vector, ticks);
}

/// Stops the alarm (the CPU woke for another reason).
pub fn disarm() {
    if VECTOR.load(Ordering::Relaxed) != 0 {
        interrupts::stop_timer();
    }
}
