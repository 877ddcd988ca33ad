//! # Entropy: where the kernel's random numbers come from
//!
//! One question, asked by the network stack (smoltcp's random seed: TCP
//! initial sequence numbers, DHCP transaction ids, ephemeral ports) and by
//! the shell's `rng`: "give me n random bytes". [`fill`] answers it from
//! the best source the machine has, and says which one it used:
//!
//! 1. **virtio-rng** (virtio 1.2 §5.4), when QEMU has one
//!    (`-device virtio-rng-pci`, `virtio-rng-device` on virtio-mmio): the
//!    host's entropy (its `/dev/urandom`, or whatever `-object rng-*`
//!    backend was given). [`init`] takes the first such device from the
//!    registry and brings it up through [`virtio::bring_up`], like every
//!    other driver (`drivers::rng` does the work; its `virtio:` line names
//!    the device and its negotiated features). Any other rng device is left
//!    reset, with its line.
//! 2. **RDSEED**, else **RDRAND**, when the CPU has them (CPUID.07H:EBX
//!    bit 18, CPUID.01H:ECX bit 30; QEMU's `-cpu max` under TCG has both,
//!    its default `qemu64` neither).
//! 3. **The TSC**, mixed (SplitMix64). Not random: an observer who knows
//!    roughly when the machine booted can guess it. The kernel says so
//!    with a warning at boot.
//!
//! [`init`] prints which source is in use (`entropy: ...`). If the
//! virtio device fails later (it stops answering, or breaks a rule: the
//! driver resets it and stops), [`fill`] falls back to the CPU's source
//! and logs why, once.
//!
//! `kernel/src/shell/rng.rs` is the shell's `rng <n>`;
//! `kernel/src/net/stack.rs` seeds smoltcp through [`seed_u64`].

use core::arch::x86_64::__cpuid;
use core::fmt;

use drivers::irq::QueueSet;
use drivers::rng::RngDevice;
use drivers::transport::{DeviceType, Location, Transport};
use spin::{Mutex, Once};

use crate::hal_impl::KernelHal;
use crate::println;
use crate::virtio::{self, BroughtUp, DrivenDevice, KernelTransport};
use crate::wait;

// ANCHOR: driven
/// The virtio-rng driver on the kernel's Hal and transport.
pub type KernelRng = RngDevice<KernelHal, KernelTransport>;

impl DrivenDevice for KernelRng {
    fn transport_for_routing(&mut self) -> &mut KernelTransport {
        self.transport_mut()
    }

    fn queues_in_use(&self) -> QueueSet {
        QueueSet::single(drivers::rng::REQUEST_QUEUE)
    }

    fn brought_up(&self) -> BroughtUp {
        BroughtUp::new(self.transport().kind(), 1, self.features())
    }
}
// ANCHOR_END: driven

/// The name the registry and the `virtio:` FAILED line give this driver.
pub const DRIVER_NAME: &str = "rng";

/// How long one read may wait for the device before it is given up.
const READ_TIMEOUT_NS: u64 = 1_000_000_000;

/// Where a batch of random bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The virtio-rng device.
    VirtioRng,
    /// The CPU's RDSEED instruction.
    Rdseed,
    /// The CPU's RDRAND instruction.
    Rdrand,
    /// The time-stamp counter, mixed: predictable, the last resort.
    Tsc,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::VirtioRng => "virtio-rng",
            Source::Rdseed => "RDSEED",
            Source::Rdrand => "RDRAND",
            Source::Tsc => "TSC (not random)",
        })
    }
}

/// The virtio-rng device in use, and where it is.
struct Device {
    location: Location,
    driver: KernelRng,
}

/// The virtio-rng driver: one request at a time (thread context only).
static DEVICE: Mutex<Option<Device>> = Mutex::new(None);
/// What the CPU offers when there is no device (decided once).
static CPU_SOURCE: Once<Source> = Once::new();

// ANCHOR: init
/// Brings up the first virtio-rng device, if any, and prints the source
/// the kernel's random numbers come from. Call after `virtio::probe` and
/// before anything asks for random bytes (the network stack).
pub fn init() {
    if let Some(found) = virtio::take(DeviceType::Entropy, DRIVER_NAME) {
        let location = found.location;
        let rings = virtio::ring_preference().ring_features();
        match virtio::bring_up(found, DRIVER_NAME, |transport| {
            RngDevice::new(transport, rings)
        }) {
            Ok(driver) => *DEVICE.lock() = Some(Device { location, driver }),
            Err(error) => log::error!("entropy: rng at {location}: bring-up failed: {error}"),
        }
    }
    // One device is enough; any other is left reset, with its line.
    virtio::leave_untaken(Some(DeviceType::Entropy));
    if let Some(device) = DEVICE.lock().as_ref() {
        println!("entropy: source virtio-rng (rng at {})", device.location);
        return;
    }
    match cpu_source() {
        Source::Tsc => log::warn!(
            "entropy: no virtio-rng and no RDRAND/RDSEED: falling back to the TSC, which is predictable (attach -device virtio-rng-pci)"
        ),
        source => println!("entropy: no virtio-rng; source {source} (CPU instruction)"),
    }
}
// ANCHOR_END: init

/// Fills `out` with random bytes from the best source available (see the
/// module docs) and says which one.
pub fn fill(out: &mut [u8]) -> Source {
    if fill_from_device(out) {
        return Source::VirtioRng;
    }
    let source = cpu_source();
    for chunk in out.chunks_mut(8) {
        let word = match source {
            Source::Rdseed => rdseed().or_else(rdrand),
            Source::Rdrand => rdrand(),
            _ => None,
        }
        .unwrap_or_else(tsc_word);
        chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
    }
    source
}

/// Eight random bytes as a seed for `purpose`, logged with their source
/// (the QEMU scenario compares the seed with the bytes it gave the device).
pub fn seed_u64(purpose: &str) -> u64 {
    let mut bytes = [0u8; 8];
    let source = fill(&mut bytes);
    let seed = u64::from_le_bytes(bytes);
    log::info!("entropy: {purpose} seeded with {seed:#018x} from {source}");
    seed
}

/// Hands the rings of the virtio-rng at `location` to `visit` (the live queue
/// view, `crate::virtio::view`); `None` if the driver is in use right now
/// (the view never waits).
pub fn try_visit_rings(
    location: Location,
    visit: impl FnMut(&dyn core::fmt::Display, &drivers::queue::Virtqueue<KernelHal>),
) -> Option<()> {
    if let Some(device) = DEVICE
        .try_lock()?
        .as_ref()
        .filter(|d| d.location == location)
    {
        device.driver.visit_rings(visit);
    }
    Some(())
}

/// The device in use, for the shell: where it is and what it has done.
pub fn device_summary() -> Option<(Location, drivers::rng::RngStats, bool)> {
    DEVICE
        .lock()
        .as_ref()
        .map(|d| (d.location, d.driver.stats(), d.driver.is_stopped()))
}

/// Reads from the virtio device; `false` if there is none or it failed
/// (the failure is logged once: the driver then refuses further reads).
fn fill_from_device(out: &mut [u8]) -> bool {
    let mut guard = DEVICE.lock();
    let Some(device) = guard.as_mut() else {
        return false;
    };
    if device.driver.is_stopped() {
        return false;
    }
    let mut wait = wait::for_device(
        virtio::irq::of(device.location),
        QueueSet::single(drivers::rng::REQUEST_QUEUE),
        READ_TIMEOUT_NS,
    );
    match device.driver.fill(out, &mut wait) {
        Ok(()) => true,
        Err(error) => {
            log::warn!(
                "entropy: rng at {}: {error}; falling back to {}",
                device.location,
                cpu_source()
            );
            false
        }
    }
}

/// What the CPU offers, decided once from CPUID.
fn cpu_source() -> Source {
    *CPU_SOURCE.call_once(|| {
        let max_leaf = __cpuid(0).eax;
        let rdseed = max_leaf >= 7 && __cpuid(7).ebx & (1 << 18) != 0;
        let rdrand = __cpuid(1).ecx & (1 << 30) != 0;
        if rdseed {
            Source::Rdseed
        } else if rdrand {
            Source::Rdrand
        } else {
            Source::Tsc
        }
    })
}

/// Tries RDSEED a few times (it may run dry: CF=0 means "try again").
fn rdseed() -> Option<u64> {
    if cpu_source() != Source::Rdseed {
        return None;
    }
    #[target_feature(enable = "rdseed")]
    fn step(value: &mut u64) -> i32 {
        core::arch::x86_64::_rdseed64_step(value)
    }
    (0..16).find_map(|_| {
        let mut value = 0;
        // SAFETY: CPUID said the CPU has RDSEED (`cpu_source` is Rdseed,
        // checked above), which is all `step` requires.
        (unsafe { step(&mut value) } == 1).then_some(value)
    })
}

/// Tries RDRAND a few times (CF=0: no value this time).
fn rdrand() -> Option<u64> {
    if !matches!(cpu_source(), Source::Rdrand | Source::Rdseed) || __cpuid(1).ecx & (1 << 30) == 0 {
        return None;
    }
    #[target_feature(enable = "rdrand")]
    fn step(value: &mut u64) -> i32 {
        core::arch::x86_64::_rdrand64_step(value)
    }
    (0..16).find_map(|_| {
        let mut value = 0;
        // SAFETY: CPUID.01H:ECX bit 30 was just checked: the CPU has RDRAND.
        (unsafe { step(&mut value) } == 1).then_some(value)
    })
}

/// The last resort: the TSC through SplitMix64's mixer, so consecutive
/// words differ in every bit. Predictable; the boot warned about it.
fn tsc_word() -> u64 {
    let mut z = crate::clock::tsc().wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
