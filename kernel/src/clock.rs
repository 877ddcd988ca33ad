//! The clock: the CPU's time-stamp counter (TSC), calibrated once at boot.
//!
//! `rdtsc` reads a 64-bit counter that ticks at a constant rate on any CPU
//! this kernel cares about (the "invariant TSC", Intel SDM vol. 3B 18.17), at
//! a cost of a few dozen cycles and no VM exit. Its rate is not architectural,
//! so [`init`] measures it against a timer whose rate *is* known:
//!
//! 1. **PIT channel 2** (the 8254 behind the PC speaker gate, ports 0x42/0x43
//!    and 0x61): load a count in mode 0 ("interrupt on terminal count"), open
//!    the gate, and spin until the OUT2 bit in port 0x61 rises. The PIT runs at
//!    1 193 182 Hz, so the count is a known time. Three precise windows,
//!    median: 1 ms windows first, 10 ms ones if the short ones were disturbed
//!    (see [`CALIBRATION_TICKS`]).
//! 2. **PIT channel 0** read back with latch commands, for machines where port
//!    0x61 is not wired to the PIT (QEMU `microvm` under TCG has a PIT but no
//!    speaker port). Channel 0 is stopped again afterwards.
//! 3. **CPUID**: leaf 0x4000_0010 (a hypervisor's "TSC frequency in kHz") or
//!    leaf 0x15 (TSC/crystal ratio and crystal frequency).
//! 4. **CMOS RTC**: the time between two ends of the once-a-second update
//!    cycle (the UIP flag of status register A). Exact but slow (1-2 s).
//! 5. **CPUID leaf 0x16** (the nominal base frequency in MHz), as a last resort.
//!
//! Whatever is measured, the frequencies the CPUID leaves claim are logged
//! next to it for comparison. `init` does not allocate: it runs before the heap
//! exists.
//!
//! [`uptime_ns`] converts with a precomputed 32.32 fixed-point factor (one
//! multiplication, no division) from the TSC value read in `init`.

use core::arch::x86_64::{__cpuid, _rdtsc};
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use x86_64::instructions::port::Port;

#[cfg(feature = "selftest")]
mod selftests;
#[cfg(feature = "selftest")]
pub use selftests::selftests;

/// The 8254 PIT's input clock (Hz).
const PIT_HZ: u64 = 1_193_182;
/// Calibration window lengths in PIT ticks, tried in order: 1 ms, then 10 ms.
///
/// A window is precise when the uncertainty of its two ends (a port access
/// each) is within 1 % of its length, so a precise 1 ms window is as good as
/// a precise 10 ms one by that measure: on an emulator or a quiet host three
/// of them take 3 ms of the boot instead of 30. Where a port access is slow
/// (a nested hypervisor) or a descheduled vCPU stretches one, short windows
/// are disturbed more often; if fewer than [`CALIBRATION_WINDOWS`] of
/// [`SHORT_WINDOW_ATTEMPTS`] short ones are precise, the long ones follow.
const CALIBRATION_TICKS: [u16; 2] = [(PIT_HZ / 1000) as u16, (PIT_HZ / 100) as u16];
/// Short windows tried before the longer ones.
const SHORT_WINDOW_ATTEMPTS: usize = 2 * CALIBRATION_WINDOWS;
/// Precise calibration windows wanted; the median wins.
const CALIBRATION_WINDOWS: usize = 3;
/// Windows tried at most, when the host keeps disturbing them.
const MAX_CALIBRATION_ATTEMPTS: usize = 12;
/// Give up waiting on the PIT after this many TSC cycles (> 0.5 s even at
/// 10 GHz) or this many port reads, whichever comes first.
const WAIT_CYCLE_LIMIT: u64 = 5_000_000_000;
const WAIT_POLL_LIMIT: u32 = 3_000_000;
/// The same for the RTC, whose events are up to a second apart (> 2 s at
/// 10 GHz; fast emulated port reads need many polls).
const RTC_WAIT: WaitLimit = WaitLimit {
    cycles: 25_000_000_000,
    polls: 100_000_000,
};
const PIT_WAIT: WaitLimit = WaitLimit {
    cycles: WAIT_CYCLE_LIMIT,
    polls: WAIT_POLL_LIMIT,
};
/// Reads of a PIT counter that never changes before it is declared absent.
const STUCK_COUNTER_POLLS: u32 = 10_000;

const PIT_CHANNEL0: u16 = 0x40;
const PIT_CHANNEL2: u16 = 0x42;
const PIT_COMMAND: u16 = 0x43;
/// System control port B: bit 0 gates PIT channel 2, bit 1 enables the
/// speaker, bit 5 reads OUT2.
const PORT_B: u16 = 0x61;
const PORT_B_GATE2: u8 = 1 << 0;
const PORT_B_SPEAKER: u8 = 1 << 1;
const PORT_B_OUT2: u8 = 1 << 5;

const CMOS_INDEX: u16 = 0x70;
const CMOS_DATA: u16 = 0x71;
const RTC_STATUS_A: u8 = 0x0a;
const RTC_UPDATE_IN_PROGRESS: u8 = 1 << 7;

/// TSC ticks per second (0 until `init`).
static TSC_HZ: AtomicU64 = AtomicU64::new(0);
/// The TSC when `init` finished calibrating: uptime zero.
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds per TSC tick in 32.32 fixed point.
static NS_PER_TICK_FP32: AtomicU64 = AtomicU64::new(0);
/// Which [`CalibrationSource`] was used (as its discriminant).
static SOURCE: AtomicU8 = AtomicU8::new(CalibrationSource::None as u8);

/// Where the TSC frequency came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CalibrationSource {
    /// Not calibrated.
    None = 0,
    /// Measured against PIT channel 2 (gate and OUT2 through port 0x61).
    PitChannel2 = 1,
    /// Measured by reading PIT channel 0's counter.
    PitChannel0 = 2,
    /// CPUID leaf 0x4000_0010 (hypervisor timing leaf).
    CpuidHypervisor = 3,
    /// CPUID leaf 0x15 (TSC/crystal ratio).
    CpuidCrystal = 4,
    /// Measured against the CMOS RTC's once-a-second update.
    Rtc = 5,
    /// CPUID leaf 0x16 (nominal base frequency).
    CpuidBase = 6,
}

impl CalibrationSource {
    #[cfg(feature = "selftest")]
    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::PitChannel2,
            2 => Self::PitChannel0,
            3 => Self::CpuidHypervisor,
            4 => Self::CpuidCrystal,
            5 => Self::Rtc,
            6 => Self::CpuidBase,
            _ => Self::None,
        }
    }
}

/// Raw time-stamp counter.
pub fn tsc() -> u64 {
    // SAFETY: rdtsc only reads a counter (CR4.TSD is clear in ring 0 anyway).
    unsafe { _rdtsc() }
}

/// The TSC, read after all earlier instructions have completed (`lfence;
/// rdtsc`), so that successive reads never appear to go backwards.
fn ordered_tsc() -> u64 {
    // SAFETY: lfence only waits for earlier instructions to complete.
    unsafe { core::arch::asm!("lfence", options(nostack, preserves_flags)) };
    tsc()
}

/// TSC ticks per second; 0 before [`init`].
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// How the TSC was calibrated.
#[cfg(feature = "selftest")]
pub fn calibration_source() -> CalibrationSource {
    CalibrationSource::from_u8(SOURCE.load(Ordering::Relaxed))
}

/// Converts a number of TSC ticks to nanoseconds (0 before [`init`]).
pub fn ticks_to_ns(ticks: u64) -> u64 {
    let factor = NS_PER_TICK_FP32.load(Ordering::Relaxed);
    ((ticks as u128 * factor as u128) >> 32) as u64
}

/// Nanoseconds since [`init`]; 0 before it.
pub fn uptime_ns() -> u64 {
    let boot = BOOT_TSC.load(Ordering::Relaxed);
    ticks_to_ns(ordered_tsc().saturating_sub(boot))
}

/// Calibrates the TSC (see the module docs). Runs once, early, without the heap.
pub fn init() {
    let claimed = CpuidFrequencies::read();
    let (hz, source) = calibrate(&claimed);
    let factor = ((1_000_000_000u128 << 32) / hz.max(1) as u128) as u64;
    NS_PER_TICK_FP32.store(factor, Ordering::Relaxed);
    TSC_HZ.store(hz, Ordering::Relaxed);
    SOURCE.store(source as u8, Ordering::Relaxed);
    BOOT_TSC.store(ordered_tsc(), Ordering::Relaxed);
    log::info!(
        "TSC at {}.{:06} MHz (from {:?})",
        hz / 1_000_000,
        hz % 1_000_000,
        source
    );
    for (name, value) in claimed.iter() {
        let difference_ppm = (value as i128 - hz as i128) * 1_000_000 / hz.max(1) as i128;
        log::info!("{name} claims {value} Hz ({difference_ppm:+} ppm from the one used)");
    }
    if !claimed.invariant_tsc {
        // QEMU only advertises it with `-cpu ...,+invtsc`; the TSC of a
        // single-vCPU guest still counts steadily in practice.
        log::info!("CPUID does not report an invariant TSC (QEMU: -cpu ...,+invtsc)");
    }
}

/// Picks the first source that works, in the order of the module docs.
fn calibrate(claimed: &CpuidFrequencies) -> (u64, CalibrationSource) {
    if let Some(hz) = calibrate_against(pit_channel2_window) {
        return (hz, CalibrationSource::PitChannel2);
    }
    log::info!("PIT channel 2 gate (port 0x61) does not respond; trying channel 0");
    let channel0 = calibrate_against(pit_channel0_window);
    stop_pit_channel0();
    if let Some(hz) = channel0 {
        return (hz, CalibrationSource::PitChannel0);
    }
    log::info!("no working PIT; trying CPUID frequency leaves, then the RTC");
    if let Some(hz) = claimed.hypervisor_hz {
        return (hz, CalibrationSource::CpuidHypervisor);
    }
    if let Some(hz) = claimed.crystal_hz {
        return (hz, CalibrationSource::CpuidCrystal);
    }
    if let Some(second) = rtc_second() {
        return (second.tsc_hz(), CalibrationSource::Rtc);
    }
    if let Some(hz) = claimed.base_hz {
        return (hz, CalibrationSource::CpuidBase);
    }
    // Nothing at all: assume 1 GHz so time still moves, and say so loudly.
    log::error!("no way to calibrate the TSC; assuming 1 GHz");
    (1_000_000_000, CalibrationSource::None)
}

/// TSC cycles counted across a reference interval of known length.
///
/// The interval's start and end are only known to lie between two TSC reads
/// each (a port access sits in between, and under a hypervisor the vCPU may
/// be descheduled at any moment), so the cycle count is a bracket:
/// `shortest ..= longest`. A wide bracket means the measurement was disturbed.
#[derive(Debug, Clone, Copy)]
struct Measurement {
    shortest: u64,
    longest: u64,
    /// The interval's length in `reference_hz` ticks.
    reference_ticks: u64,
    reference_hz: u64,
}

impl Measurement {
    /// The best estimate of the cycles: the middle of the bracket.
    fn cycles(&self) -> u64 {
        self.shortest / 2 + self.longest / 2
    }

    /// True if the bracket is within 1 % of the interval.
    fn is_precise(&self) -> bool {
        (self.longest - self.shortest) * 100 <= self.longest
    }

    fn tsc_hz(&self) -> u64 {
        (self.cycles() as u128 * self.reference_hz as u128 / self.reference_ticks.max(1) as u128)
            as u64
    }

    #[cfg(feature = "selftest")]
    fn reference_ns(&self) -> u64 {
        self.reference_ticks * 1_000_000_000 / self.reference_hz
    }
}

/// The TSC rate measured with `window`, trying each length of
/// [`CALIBRATION_TICKS`] in turn. `None` if the timer is absent.
fn calibrate_against(window: fn(u16) -> Option<Measurement>) -> Option<u64> {
    let (longest, shorter) = CALIBRATION_TICKS.split_last()?;
    for &ticks in shorter {
        if let Some(hz) = rate_from_windows(window, ticks, false)? {
            return Some(hz);
        }
    }
    rate_from_windows(window, *longest, true)?
}

/// Measures up to [`SHORT_WINDOW_ATTEMPTS`] (`last_resort`:
/// [`MAX_CALIBRATION_ATTEMPTS`]) windows of `ticks` and returns the median
/// rate of the first [`CALIBRATION_WINDOWS`] precise ones. With fewer
/// precise ones: `Some(None)` (try longer windows), or, if `last_resort`,
/// the median of the precise ones there are, else of all, with a warning.
/// `None` if the timer is absent.
fn rate_from_windows(
    window: fn(u16) -> Option<Measurement>,
    ticks: u16,
    last_resort: bool,
) -> Option<Option<u64>> {
    let mut precise = [0u64; CALIBRATION_WINDOWS];
    let mut precise_count = 0;
    let mut imprecise = [0u64; MAX_CALIBRATION_ATTEMPTS];
    let mut imprecise_count = 0;
    let attempts = if last_resort {
        MAX_CALIBRATION_ATTEMPTS
    } else {
        SHORT_WINDOW_ATTEMPTS
    };
    for _ in 0..attempts {
        let measurement = window(ticks)?;
        if measurement.is_precise() {
            precise[precise_count] = measurement.tsc_hz();
            precise_count += 1;
            if precise_count == CALIBRATION_WINDOWS {
                break;
            }
        } else {
            imprecise[imprecise_count] = measurement.tsc_hz();
            imprecise_count += 1;
        }
    }
    log::debug!(
        "calibration windows of {} us: precise {:?} Hz, disturbed {:?} Hz",
        u64::from(ticks) * 1_000_000 / PIT_HZ,
        &precise[..precise_count],
        &imprecise[..imprecise_count]
    );
    if precise_count < CALIBRATION_WINDOWS && !last_resort {
        return Some(None);
    }
    let rates = if precise_count > 0 {
        &mut precise[..precise_count]
    } else {
        log::warn!("every calibration window was disturbed; the TSC rate may be off");
        &mut imprecise[..imprecise_count]
    };
    rates.sort_unstable();
    Some(rates.get(rates.len() / 2).copied())
}

/// How long [`wait_for`] keeps polling.
#[derive(Clone, Copy)]
struct WaitLimit {
    cycles: u64,
    polls: u32,
}

/// Polls `done` until it returns true. Returns the TSC bounds of the moment it
/// became true: after the start of the last poll that saw false (or `start`)
/// and before the end of the first poll that saw true. `None` on timeout, or
/// if the very first poll already sees true: then there was no transition to
/// time.
fn wait_for(start: u64, limit: WaitLimit, mut done: impl FnMut() -> bool) -> Option<(u64, u64)> {
    let mut last_false = start;
    for poll in 0..limit.polls {
        let before = ordered_tsc();
        if done() {
            return (poll > 0).then(|| (last_false, ordered_tsc()));
        }
        last_false = before;
        if before - start > limit.cycles {
            return None;
        }
    }
    None
}

/// One window on PIT channel 2: load `ticks` in mode 0 with the gate open and
/// wait for OUT2 (port 0x61 bit 5) to rise. `None` if port 0x61 does not
/// behave like a PIT's.
fn pit_channel2_window(ticks: u16) -> Option<Measurement> {
    let mut port_b = Port::<u8>::new(PORT_B);
    let mut command = Port::<u8>::new(PIT_COMMAND);
    let mut channel2 = Port::<u8>::new(PIT_CHANNEL2);
    // The PIT and port B are standard PC devices that nothing else in the
    // kernel uses; the speaker stays off and port B is restored at the end.
    // SAFETY: reading port B (0x61) only samples the PIT/speaker status bits;
    // no other code uses the port.
    let saved = unsafe { port_b.read() };
    if saved == 0xff {
        return None; // nothing decodes port 0x61
    }
    // SAFETY: opens the gate of PIT channel 2 with the speaker bit clear (no
    // sound, nothing else on port B changes) and programs channel 2, which
    // only drives that gate's OUT2 line; nothing else in the kernel uses it.
    let (loaded_after, loaded_before) = unsafe {
        port_b.write((saved & !PORT_B_SPEAKER) | PORT_B_GATE2);
        // Channel 2, low byte then high byte, mode 0, binary. Counting starts
        // when the high byte is written.
        command.write(0b1011_0000);
        channel2.write(ticks as u8);
        let before = ordered_tsc();
        channel2.write((ticks >> 8) as u8);
        (before, ordered_tsc())
    };
    // Mode 0 holds OUT2 low until the count runs out; `wait_for` refuses an
    // OUT2 that is high from the start (port 0x61 not wired to this PIT).
    let end = wait_for(loaded_before, PIT_WAIT, || {
        // SAFETY: as above, a side-effect-free read of port B's status bits.
        let status = unsafe { port_b.read() };
        status & PORT_B_OUT2 != 0
    });
    // SAFETY: puts port B back as it was, except the speaker, kept off.
    unsafe { port_b.write(saved & !PORT_B_SPEAKER) };
    let (end_after, end_before) = end?;
    Some(Measurement {
        shortest: end_after.saturating_sub(loaded_before),
        longest: end_before - loaded_after,
        reference_ticks: ticks as u64,
        reference_hz: PIT_HZ,
    })
}

/// Latches and reads PIT channel 0's current count.
fn read_pit_channel0() -> u16 {
    let mut command = Port::<u8>::new(PIT_COMMAND);
    let mut channel0 = Port::<u8>::new(PIT_CHANNEL0);
    // SAFETY: a latch command and two data reads have no effect on counting.
    unsafe {
        command.write(0b0000_0000); // latch channel 0
        let low = channel0.read();
        let high = channel0.read();
        u16::from_le_bytes([low, high])
    }
}

/// One window on PIT channel 0, free-running in mode 2 from 65536: latch and
/// read the count until at least `ticks` have passed, summing the decrements.
/// Each latch happened between the TSC reads around it.
fn pit_channel0_window(ticks: u16) -> Option<Measurement> {
    let mut command = Port::<u8>::new(PIT_COMMAND);
    let mut channel0 = Port::<u8>::new(PIT_CHANNEL0);
    // SAFETY: channel 0 is reprogrammed as a rate generator with the largest
    // period; interrupts are still off and nothing else uses it yet.
    unsafe {
        command.write(0b0011_0100); // channel 0, lo/hi, mode 2, binary
        channel0.write(0);
        channel0.write(0);
    }
    let first_before = ordered_tsc();
    let mut previous = read_pit_channel0();
    let first_after = ordered_tsc();
    let mut elapsed: u64 = 0;
    for poll in 0..WAIT_POLL_LIMIT {
        let before = ordered_tsc();
        let now = read_pit_channel0();
        let after = ordered_tsc();
        // A down-counter modulo 65536. An empty bus reads 0xffff forever, so
        // nothing accumulates and the timeout below ends the attempt.
        elapsed += previous.wrapping_sub(now) as u64;
        previous = now;
        if elapsed == 0 && poll == STUCK_COUNTER_POLLS {
            return None; // a PIT that counts moves within a few microseconds
        }
        if elapsed >= ticks as u64 {
            return Some(Measurement {
                shortest: before - first_after,
                longest: after - first_before,
                reference_ticks: elapsed,
                reference_hz: PIT_HZ,
            });
        }
        if before - first_before > WAIT_CYCLE_LIMIT {
            break;
        }
    }
    None
}

/// Leaves channel 0 waiting for a count (mode 0, none written): it stops and
/// raises no further IRQ 0.
fn stop_pit_channel0() {
    let mut command = Port::<u8>::new(PIT_COMMAND);
    // SAFETY: only stops the PIT channel this module just used.
    unsafe { command.write(0b0011_0000) };
}

fn rtc_status_a() -> u8 {
    let mut index = Port::<u8>::new(CMOS_INDEX);
    let mut data = Port::<u8>::new(CMOS_DATA);
    // SAFETY: selecting and reading RTC status register A has no side effects.
    unsafe {
        index.write(RTC_STATUS_A);
        data.read()
    }
}

/// One RTC second: between two consecutive ends of the update cycle (status
/// A's UIP bit falling). Takes 1-2 s. `None` without an RTC.
fn rtc_second() -> Option<Measurement> {
    if rtc_status_a() == 0xff {
        return None;
    }
    // Wait until an update is in progress (it may already be), then time
    // its end. Should the end slip by between the two waits, take the next.
    let in_progress = || rtc_status_a() & RTC_UPDATE_IN_PROGRESS != 0;
    let update_ended = || {
        (0..3).find_map(|_| {
            if !in_progress() {
                wait_for(ordered_tsc(), RTC_WAIT, in_progress)?;
            }
            wait_for(ordered_tsc(), RTC_WAIT, || !in_progress())
        })
    };
    let (first_after, first_before) = update_ended()?;
    let (second_after, second_before) = update_ended()?;
    Some(Measurement {
        shortest: second_after - first_before,
        longest: second_before - first_after,
        reference_ticks: 1,
        reference_hz: 1,
    })
}

/// TSC frequencies the CPU (or hypervisor) states through CPUID.
struct CpuidFrequencies {
    hypervisor_hz: Option<u64>,
    crystal_hz: Option<u64>,
    base_hz: Option<u64>,
    invariant_tsc: bool,
}

impl CpuidFrequencies {
    fn read() -> Self {
        let max_leaf = __cpuid(0).eax;
        let crystal_hz = (max_leaf >= 0x15)
            .then(|| __cpuid(0x15))
            .filter(|leaf| leaf.eax != 0 && leaf.ebx != 0 && leaf.ecx != 0)
            .map(|leaf| leaf.ecx as u64 * leaf.ebx as u64 / leaf.eax as u64);
        let base_hz = (max_leaf >= 0x16)
            .then(|| __cpuid(0x16).eax & 0xffff)
            .filter(|&mhz| mhz != 0)
            .map(|mhz| mhz as u64 * 1_000_000);
        let under_hypervisor = __cpuid(1).ecx & (1 << 31) != 0;
        let hypervisor_hz = (under_hypervisor && __cpuid(0x4000_0000).eax >= 0x4000_0010)
            .then(|| __cpuid(0x4000_0010).eax)
            .filter(|&khz| khz != 0)
            .map(|khz| khz as u64 * 1000);
        let invariant_tsc =
            __cpuid(0x8000_0000).eax >= 0x8000_0007 && __cpuid(0x8000_0007).edx & (1 << 8) != 0;
        Self {
            hypervisor_hz,
            crystal_hz,
            base_hz,
            invariant_tsc,
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("CPUID 0x40000010 (hypervisor)", self.hypervisor_hz),
            ("CPUID 0x15 (crystal ratio)", self.crystal_hz),
            ("CPUID 0x16 (base frequency)", self.base_hz),
        ]
        .into_iter()
        .filter_map(|(name, hz)| Some((name, hz?)))
    }
}
