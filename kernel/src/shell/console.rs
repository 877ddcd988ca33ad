//! The kernel's virtio console: the device the shell talks through, and the
//! panic path's last resort (virtio 1.2 §5.3).
//!
//! ## Bring-up
//!
//! [`virtio::probe`](crate::virtio::probe) only finds the console. [`init`]
//! takes the first one from the registry ([`crate::virtio::take`]) and
//! brings it up, once, through [`crate::virtio::bring_up`]: the interrupt
//! set-up wraps [`drivers::console::ConsoleDevice`]'s §3.1.1 sequence
//! (MULTIPORT, EMERG_WRITE and SIZE where offered, and the multiport
//! handshake), the route covers every queue the driver set up, so
//! [`waiter`] halts until the console interrupts, and the device's one
//! `virtio:` line says what the driver negotiated (or why it failed). Any
//! other console is left reset with its own line.
//!
//! ## Sharing
//!
//! The driver lives in [`CONSOLE`]. The shell takes the lock for each
//! operation, and keeps it while the driver waits for the device (nothing
//! else needs the console meanwhile). Interrupt handlers never take it. The
//! panic handler ([`emergency_write`]) may find it held by the code that
//! panicked: it then breaks the lock, which is sound only because by then
//! interrupts are off, every other CPU has been stopped (`smp::stop`: the
//! panicking CPU owns the one crash report), and the holder will never run
//! again; and EMERG_WRITE touches nothing but one configuration register.
//! The stop is bounded (it gives up on a CPU that does not take its NMI), so
//! the lock is broken only if no other CPU is still running; otherwise the
//! console gets no report (the serial port still does).
//!
//! Command line: `console.ports=N` caps the ports the driver sets queues
//! up for (default 16); `virtio.ring=split|packed|auto` chooses the ring.

use alloc::vec::Vec;
use core::fmt::{self, Write as _};

use drivers::console::{ConsoleDevice, ConsoleError, ConsoleOptions};
use drivers::features;
use drivers::irq::QueueSet;
use drivers::transport::{DeviceType, Location, Transport};
use spin::{Mutex, MutexGuard};

use crate::hal_impl::KernelHal;
use crate::virtio::{self, BroughtUp, DrivenDevice, KernelTransport};
use crate::wait::{self, KernelWait};

/// The console driver on the kernel's Hal and transport.
pub type KernelConsole = ConsoleDevice<KernelHal, KernelTransport>;

impl DrivenDevice for KernelConsole {
    fn transport_for_routing(&mut self) -> &mut KernelTransport {
        self.transport_mut()
    }

    fn queues_in_use(&self) -> QueueSet {
        let mut set = QueueSet::EMPTY;
        for queue in self.queues() {
            set.insert(queue.index);
        }
        set
    }

    fn brought_up(&self) -> BroughtUp {
        BroughtUp::new(
            self.transport().kind(),
            self.queues().len(),
            self.features(),
        )
    }
}

/// The name the registry and the `virtio:` FAILED line give this driver.
pub const DRIVER_NAME: &str = "console";

/// The console the shell uses.
pub struct Console {
    /// Where the device is.
    pub location: Location,
    /// The driver.
    pub device: KernelConsole,
}

impl Console {
    /// Acts on a configuration change the device announced (virtio 1.2
    /// §2.5): a new size (`cols`/`rows`, §5.3.4) is applied to port 0 and
    /// logged; DEVICE_NEEDS_RESET (§2.1.2) stops the device, and it is
    /// brought back at once. An interrupt-driven console only looks at its
    /// interrupt handler's flag; a polled one reads its interrupt status.
    pub fn check_config(&mut self) {
        let result = match virtio::irq::of(self.location) {
            Some(irq) if !irq.state().is_polled() => {
                if !irq.state().take_config_change() {
                    return;
                }
                self.device.handle_config_change()
            }
            _ => self.device.handle_interrupt().map(|_| ()),
        };
        if let Err(error) = result {
            log::warn!("console: configuration change: {error}; recovering");
            if let Err(error) = self.device.recover() {
                log::error!("console: recovery failed: {error}");
            }
        }
    }
}

/// The claimed console, if any; the lock makes one reader or writer at a time use its queues
/// (thread context only; the panic path uses EMERG_WRITE, not this).
static CONSOLE: Mutex<Option<Console>> = Mutex::new(None);

/// Default for `console.ports=`.
const DEFAULT_MAX_PORTS: u32 = 16;

/// The console, locked (`None` inside if there is none).
pub fn lock() -> MutexGuard<'static, Option<Console>> {
    CONSOLE.lock()
}

/// The console, locked, unless someone holds it right now (the live queue
/// view, which must not wait on the shell that is printing it).
pub fn try_lock() -> Option<MutexGuard<'static, Option<Console>>> {
    CONSOLE.try_lock()
}

/// Driver options from the command line (see the module docs).
pub fn options_from_cmdline() -> ConsoleOptions {
    let mut options = ConsoleOptions::default();
    if let Some(ports) = crate::cmdline::get("console.ports").and_then(|v| v.parse::<u32>().ok()) {
        options.max_ports = ports.clamp(1, 31);
    } else {
        options.max_ports = DEFAULT_MAX_PORTS;
    }
    options.ring_features =
        virtio::ring_preference().ring_features() & !features::RING_INDIRECT_DESC;
    options
}

/// Brings the console driver up on the first console the probe found.
/// Returns `true` if a console is ready for the shell. Logs why not
/// otherwise; never panics on what the device does.
pub fn init() -> bool {
    if lock().is_some() {
        return true;
    }
    let Some(found) = virtio::take(DeviceType::Console, DRIVER_NAME) else {
        log::info!("console: no virtio console to bring up");
        return false;
    };
    let location = found.location;
    let options = options_from_cmdline();
    let result = virtio::bring_up(found, DRIVER_NAME, |transport| {
        ConsoleDevice::with_options(transport, options)
    });
    let ready = match result {
        Ok(device) => {
            log::info!(
                "console: {} at {location}: {}, {} port(s) now: {}",
                device.transport().kind(),
                device.config(),
                device.ports().count(),
                PortList(&device)
            );
            *lock() = Some(Console { location, device });
            true
        }
        Err(error) => {
            log::error!("console: {location}: driver bring-up failed: {error}");
            false
        }
    };
    // The driver takes one console; any other is left reset, with its line.
    virtio::leave_untaken(Some(DeviceType::Console));
    ready
}

/// Ports as `0 (console), 1 "org.test.one"`.
struct PortList<'a>(&'a KernelConsole);

impl fmt::Display for PortList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, port) in self.0.ports().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", port.id)?;
            if port.console {
                f.write_str(" (console)")?;
            }
            if let Some(name) = port.name {
                write!(f, " {name:?}")?;
            }
        }
        Ok(())
    }
}

/// A wait on the console at `location` that gives up after `timeout_ns`:
/// halting until the console interrupts (the kernel's one wait,
/// [`crate::wait`]), or polling if it has no interrupt route.
pub fn waiter(location: Location, timeout_ns: u64) -> KernelWait {
    // Every queue: any of the console's queues pending (a port's data, a
    // control message) is a reason to look again.
    wait::for_device(virtio::irq::of(location), QueueSet::ALL, timeout_ns)
}

/// Why [`write_all`] failed.
#[derive(Debug)]
pub enum WriteError {
    /// The driver or the device refused or failed the write.
    Device(ConsoleError),
    /// The IOMMU blocked a DMA of the console while the write was in flight
    /// (strict mode, `iommu/mod.rs`): the device may have sent something
    /// else than the bytes, or nothing.
    DmaBlocked(crate::iommu::Fault),
}

impl From<ConsoleError> for WriteError {
    fn from(error: ConsoleError) -> Self {
        WriteError::Device(error)
    }
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::Device(error) => write!(f, "{error}"),
            WriteError::DmaBlocked(fault) => write!(
                f,
                "the IOMMU blocked a DMA {} at {:#x} by the console during the write",
                if fault.read { "read" } else { "write" },
                fault.address
            ),
        }
    }
}

/// Writes all of `bytes` to port `port`, waiting up to `timeout_ns` for
/// room (the driver's [`ConsoleDevice::write_all`], which turns transmit
/// interrupts on only while it waits). A timeout says how much went. A
/// write during which the IOMMU blocked a DMA of the console failed, as a
/// block request does (`iommu::check_request`; one relaxed load without a
/// strict IOMMU).
pub fn write_all(port: u32, bytes: &[u8], timeout_ns: u64) -> Result<(), WriteError> {
    let mut guard = lock();
    let Some(console) = guard.as_mut() else {
        return Err(ConsoleError::DeviceFailed.into());
    };
    let mut wait = waiter(console.location, timeout_ns);
    let faults = crate::iommu::faults_of(console.location);
    console.device.write_all(port, bytes, &mut wait)?;
    crate::iommu::check_request(console.location, faults).map_err(|fault| {
        // Not through the console: its output is what failed.
        log::warn!(
            "console: write of {} bytes to port {port} failed: the IOMMU blocked a DMA of the device",
            bytes.len()
        );
        WriteError::DmaBlocked(fault)
    })
}

/// The panic path: writes `message` to the console through EMERG_WRITE if
/// a console with that feature is up. Allocates nothing. See the module
/// docs for why breaking the lock is sound here.
pub fn emergency_write(message: &[u8]) {
    let guard = match CONSOLE.try_lock() {
        Some(guard) => guard,
        None => {
            if crate::smp::stop::still_running_mask() != 0 {
                // Another CPU did not stop: it may be the holder, and use
                // the console right now.
                return;
            }
            // SAFETY: interrupts off, and no other CPU runs (the check
            // above: every other one parked after smp::stop's NMI), so the
            // holder (the code that panicked, or a parked CPU) never
            // resumes: nobody else uses the console any more. EMERG_WRITE
            // only writes one configuration field.
            unsafe { CONSOLE.force_unlock() };
            match CONSOLE.try_lock() {
                Some(guard) => guard,
                None => return,
            }
        }
    };
    let mut guard = guard;
    if let Some(console) = guard.as_mut() {
        let _ = console.device.emergency_write(message);
    }
}

/// A fixed buffer for formatting the panic message without allocating.
pub struct StackBuffer<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> StackBuffer<N> {
    /// An empty buffer.
    pub const fn new() -> Self {
        Self {
            bytes: [0; N],
            len: 0,
        }
    }

    /// What was written (cut at `N` bytes).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl<const N: usize> Default for StackBuffer<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Write for StackBuffer<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == N {
                break;
            }
            // Terminals want CR LF.
            if b == b'\n' && self.len + 1 < N {
                self.bytes[self.len] = b'\r';
                self.len += 1;
            }
            self.bytes[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// Formats `args` into a stack buffer and emergency-writes it.
pub fn emergency_print(args: fmt::Arguments<'_>) {
    let mut buffer = StackBuffer::<512>::new();
    let _ = buffer.write_fmt(args);
    emergency_write(buffer.as_bytes());
}

/// Bytes as text for the shell: printable ASCII as is, the rest escaped.
pub fn escaped(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => {}
            0x20..=0x7e | b'\t' => out.push(b),
            _ => {
                let _ = write!(Hex(&mut out), "\\x{b:02x}");
            }
        }
    }
    out
}

/// `fmt::Write` into a byte vector.
pub struct Hex<'a>(pub &'a mut Vec<u8>);

impl fmt::Write for Hex<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}
