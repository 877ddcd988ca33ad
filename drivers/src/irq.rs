//! # Interrupts, from the driver's side (virtio 1.2 §2.7.7, §4.1.4.5, §4.1.5.1.2-3, §4.2.2)
//!
//! A device says "I used some of your buffers" (or "my configuration
//! changed") by interrupting. How that reaches the CPU depends on the
//! transport, but what a driver does with it is always the same: note which
//! queues have news, wake whoever waits for them, and let them collect the
//! used entries from the ring. This module holds that shared part, with
//! nothing x86- or kernel-specific in it, so the host tests can drive every
//! path with device models:
//!
//! - **Who gets which MSI-X entry** ([`MsixLayout`], §4.1.5.1.2): the
//!   configuration-change event gets entry 0 and each queue its own entry
//!   after it; when the table is smaller than that, queues share the entries
//!   that are left (round robin), and a one-entry table carries everything.
//! - **Programming the entry numbers into the device at the moment the spec
//!   asks for** ([`MsixRouted`]): a queue's `queue_msix_vector` before the
//!   queue is made live (§4.1.4.3.2: "The driver MUST configure the other
//!   virtqueue fields before enabling the virtqueue"), the configuration
//!   vector before DRIVER_OK, each read back (§4.1.5.1.2.1: on failure the
//!   device returns NO_VECTOR). It wraps any [`Transport`], so every device
//!   driver gets this without knowing about it.
//! - **Reading and acknowledging the interrupt status from an interrupt
//!   handler** ([`InterruptStatusRegister`]): with INTx or virtio-mmio the
//!   interrupt does not say why it came; the ISR byte (PCI, cleared by the
//!   read, §4.1.4.5) or InterruptStatus + InterruptACK (MMIO, §4.2.2) does.
//!   The handler cannot borrow the driver's transport (the interrupted code
//!   may be using it), so this is a second, minimal view of the same
//!   register, safe to use concurrently: it touches nothing the transport's
//!   select registers govern.
//! - **What the handlers record** ([`DeviceInterrupts`]): per device, a
//!   "pending" bit per queue, a configuration-changed flag and counters, all
//!   atomics, so a handler (which must not block) can set them and a
//!   `static` can hold them.
//! - **Waiting without losing a wake-up** ([`InterruptWait`]), the
//!   [`crate::device::Wait`] the blocking helpers use: ask the queues for an
//!   interrupt and re-check the rings (the helper does that, see
//!   [`crate::device::Wait::sleeps_until_interrupt`]), then with interrupts
//!   off look at the pending bits, and only if nothing is pending enable
//!   interrupts and halt *in one step*. The CPU side of that ([`Idle`]) is
//!   the kernel's; host tests supply a simulated one.
//!   [`wait_for_used`] is the helper's side of that rhythm in one call.
//! - **Which INTx line firmware routed** ([`intx_line`]) and switching INTx
//!   off while MSI-X is used ([`set_intx_disabled`]).
//!
//! The chapter `docs/04-interrupts.md` follows one completion from the used
//! ring through all of this.

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hal::{Hal, HalError, MmioRegion, PhysAddr};

use crate::device::{Wait, WaitTimeout};
use crate::pci::{regs, Command, ConfigAccess, PciAddress, PciError, PciFunction};
use crate::queue::QueueAddresses;
use crate::transport::pci::{map_structure, PciTransportError, VirtioCaps};
use crate::transport::{
    mmio, AnyTransport, ConfigConsistency, DeviceStatus, DeviceType, FieldWidth, InterruptStatus,
    Location, RegisterWindow, RingLayout, Transport, TransportError, TransportKind,
};

/// The most queues per device whose interrupts are tracked (one bit each in
/// a `u64`). virtio-serial with 31 ports has 64 queues.
pub const MAX_QUEUES: u16 = 64;

/// A set of queue indices below [`MAX_QUEUES`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct QueueSet(u64);

impl QueueSet {
    /// No queue.
    pub const EMPTY: QueueSet = QueueSet(0);
    /// Every queue index below [`MAX_QUEUES`].
    pub const ALL: QueueSet = QueueSet(u64::MAX);

    /// The set with the given bits (bit `q` = queue `q`).
    pub const fn from_bits(bits: u64) -> Self {
        QueueSet(bits)
    }

    /// The bits.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Just queue `queue` (empty if `queue >= MAX_QUEUES`).
    pub const fn single(queue: u16) -> Self {
        if queue < MAX_QUEUES {
            QueueSet(1 << queue)
        } else {
            QueueSet(0)
        }
    }

    /// Queues `0..count` (capped at [`MAX_QUEUES`]).
    pub const fn first(count: u16) -> Self {
        if count >= MAX_QUEUES {
            QueueSet(u64::MAX)
        } else {
            QueueSet((1u64 << count) - 1)
        }
    }

    /// Whether `queue` is in the set.
    pub const fn contains(self, queue: u16) -> bool {
        queue < MAX_QUEUES && self.0 & (1 << queue) != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Number of queues in the set.
    pub const fn len(self) -> u32 {
        self.0.count_ones()
    }

    /// Adds `queue` (ignored if `queue >= MAX_QUEUES`).
    pub fn insert(&mut self, queue: u16) {
        self.0 |= QueueSet::single(queue).0;
    }

    /// The queues in both sets.
    pub const fn intersection(self, other: QueueSet) -> QueueSet {
        QueueSet(self.0 & other.0)
    }

    /// The queue indices, lowest first.
    pub fn iter(self) -> impl Iterator<Item = u16> {
        (0..MAX_QUEUES).filter(move |&q| self.contains(q))
    }
}

impl fmt::Debug for QueueSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for QueueSet {
    /// `{}`, `{0}`, `{0,1,2}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, q) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{q}")?;
        }
        f.write_str("}")
    }
}

// ---------------------------------------------------------------------------
// MSI-X entry layout
// ---------------------------------------------------------------------------

/// Which MSI-X table entry each event of one device uses.
///
/// The rule (the one Linux's virtio-pci uses too) depends only on the table
/// size, so it can be applied queue by queue while the device is set up:
///
/// - the configuration-change event: entry 0;
/// - queue `q`: entry `1 + q` when the table has room for it, else the
///   remaining entries `1..size` are shared round robin (`1 + q % (size - 1)`);
/// - a one-entry table: everything on entry 0.
///
/// QEMU's tables: blk 2 entries (config, queue 0), net 4 (config, rx, tx,
/// ctrl), virtio-serial 2 (config, and one shared by all its queues).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixLayout {
    table_size: u16,
}

impl MsixLayout {
    /// The layout for a table of `table_size` entries (at least 1).
    pub const fn new(table_size: u16) -> Self {
        MsixLayout {
            table_size: if table_size == 0 { 1 } else { table_size },
        }
    }

    /// Entries in the table.
    pub const fn table_size(&self) -> u16 {
        self.table_size
    }

    /// The entry of the configuration-change event.
    pub const fn config_entry(&self) -> u16 {
        0
    }

    /// The entry of queue `queue`.
    pub const fn queue_entry(&self, queue: u16) -> u16 {
        if self.table_size == 1 {
            0
        } else {
            1 + queue % (self.table_size - 1)
        }
    }

    /// Whether queue `queue` has an entry to itself among `queues`.
    pub fn queue_has_own_entry(&self, queue: u16, queues: QueueSet) -> bool {
        let entry = self.queue_entry(queue);
        entry != self.config_entry()
            && queues
                .iter()
                .filter(|&q| self.queue_entry(q) == entry)
                .count()
                == 1
    }

    /// The queues among `queues` that use `entry`.
    pub fn queues_on(&self, entry: u16, queues: QueueSet) -> QueueSet {
        let mut on = QueueSet::EMPTY;
        for q in queues.iter().filter(|&q| self.queue_entry(q) == entry) {
            on.insert(q);
        }
        on
    }

    /// The entries used by the configuration event and `queues`, each with
    /// the queues on it and whether the configuration event is on it, lowest
    /// entry first: what the interrupt code needs a CPU vector for.
    pub fn entries(&self, queues: QueueSet) -> impl Iterator<Item = EntryUse> + '_ {
        (0..self.table_size).filter_map(move |entry| {
            let on = self.queues_on(entry, queues);
            let config = entry == self.config_entry();
            (config || !on.is_empty()).then_some(EntryUse {
                entry,
                queues: on,
                config,
            })
        })
    }
}

/// One MSI-X table entry in use: by which queues, and the configuration event or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryUse {
    /// The table entry.
    pub entry: u16,
    /// The queues whose interrupts it carries.
    pub queues: QueueSet,
    /// Whether it carries the configuration-change event.
    pub config: bool,
}

/// Which event a device refused an MSI-X entry for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsixEvent {
    /// The configuration-change event.
    Config,
    /// Queue `n`.
    Queue(u16),
}

impl fmt::Display for MsixEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MsixEvent::Config => f.write_str("configuration change"),
            MsixEvent::Queue(q) => write!(f, "queue {q}"),
        }
    }
}

/// A vector the device did not accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixRejection {
    /// For which event.
    pub event: MsixEvent,
    /// The transport's error (normally [`TransportError::MsixVectorRejected`]).
    pub error: TransportError,
}

impl fmt::Display for MsixRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MSI-X entry for the {}: {}", self.event, self.error)
    }
}

/// A [`Transport`] that programs MSI-X entry numbers into the device when the
/// spec wants them there; otherwise it passes every call through unchanged.
///
/// With a layout ([`MsixRouted::set_layout`], after MSI-X was enabled in the
/// PCI capability):
///
/// - `setup_queue(q)` first writes `queue_msix_vector` for `q` (read back by
///   the transport), then lets the transport make the queue live;
/// - the `set_status` that adds DRIVER_OK first writes `config_msix_vector`;
/// - `reset` forgets what was programmed (a reset sets every vector back to
///   NO_VECTOR, §4.1.5.1.2).
///
/// A refusal does not stop the bring-up (the queue works, it just cannot
/// interrupt through MSI-X); it is kept in [`MsixRouted::rejection`] for
/// the interrupt code, which then falls back to INTx or polling.
pub struct MsixRouted<T> {
    inner: T,
    layout: Option<MsixLayout>,
    routed_queues: QueueSet,
    config_routed: bool,
    rejection: Option<MsixRejection>,
}

impl<T: Transport> MsixRouted<T> {
    /// Wraps `inner` with no MSI-X layout (a pure pass-through until
    /// [`MsixRouted::set_layout`]).
    pub fn new(inner: T) -> Self {
        MsixRouted {
            inner,
            layout: None,
            routed_queues: QueueSet::EMPTY,
            config_routed: false,
            rejection: None,
        }
    }

    /// Uses `layout` from now on (`None`: stop programming vectors).
    pub fn set_layout(&mut self, layout: Option<MsixLayout>) {
        self.layout = layout;
    }

    /// The layout in use.
    pub fn layout(&self) -> Option<MsixLayout> {
        self.layout
    }

    /// The queues whose vector the device accepted since the last reset.
    pub fn routed_queues(&self) -> QueueSet {
        self.routed_queues
    }

    /// Whether the configuration vector was accepted since the last reset.
    pub fn config_routed(&self) -> bool {
        self.config_routed
    }

    /// The first vector the device refused since the last reset.
    pub fn rejection(&self) -> Option<MsixRejection> {
        self.rejection
    }

    /// The wrapped transport.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// The wrapped transport, mutably.
    pub fn inner_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Unwraps the transport.
    pub fn into_inner(self) -> T {
        self.inner
    }

    fn route(&mut self, event: MsixEvent, entry: u16) {
        let result = match event {
            MsixEvent::Config => self.inner.set_config_msix_vector(entry),
            MsixEvent::Queue(q) => self.inner.set_queue_msix_vector(q, entry),
        };
        let location = self.inner.location();
        match result {
            Ok(()) => {
                log::trace!("{location}: {event} -> MSI-X entry {entry} (device accepted it)");
                match event {
                    MsixEvent::Config => self.config_routed = true,
                    MsixEvent::Queue(q) => self.routed_queues.insert(q),
                }
            }
            Err(error) => {
                log::warn!("{location}: {event}: device refused MSI-X entry {entry}: {error}");
                self.rejection.get_or_insert(MsixRejection { event, error });
            }
        }
    }
}

impl<T: Transport> From<T> for MsixRouted<T> {
    fn from(inner: T) -> Self {
        MsixRouted::new(inner)
    }
}

/// So that code holding `MsixRouted<AnyTransport<H>>` can take any concrete
/// transport with `.into()`.
macro_rules! routed_from_concrete {
    ($($concrete:ty),*) => {$(
        impl<H: Hal> From<$concrete> for MsixRouted<AnyTransport<H>> {
            fn from(transport: $concrete) -> Self {
                MsixRouted::new(AnyTransport::from(transport))
            }
        }
    )*};
}
routed_from_concrete!(
    crate::transport::pci::ModernPciTransport<H>,
    crate::transport::pci::LegacyPciTransport<H>,
    crate::transport::mmio::MmioTransport<H>
);

impl<T: Transport + fmt::Debug> fmt::Debug for MsixRouted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MsixRouted")
            .field("inner", &self.inner)
            .field("layout", &self.layout)
            .field("routed_queues", &self.routed_queues)
            .field("config_routed", &self.config_routed)
            .finish()
    }
}

impl<T: Transport> Transport for MsixRouted<T> {
    fn kind(&self) -> TransportKind {
        self.inner.kind()
    }
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }
    fn location(&self) -> Location {
        self.inner.location()
    }
    fn status(&self) -> DeviceStatus {
        self.inner.status()
    }
    fn set_status(&mut self, status: DeviceStatus) {
        let going_live =
            status.contains(DeviceStatus::DRIVER_OK) && !status.contains(DeviceStatus::FAILED);
        if let (true, false, Some(layout)) = (going_live, self.config_routed, self.layout) {
            self.route(MsixEvent::Config, layout.config_entry());
        }
        self.inner.set_status(status)
    }
    fn reset(&mut self) -> Result<(), TransportError> {
        self.routed_queues = QueueSet::EMPTY;
        self.config_routed = false;
        self.rejection = None;
        self.inner.reset()
    }
    fn device_features(&mut self) -> u64 {
        self.inner.device_features()
    }
    fn set_driver_features(&mut self, features: u64) {
        self.inner.set_driver_features(features)
    }
    fn ring_layout(&self) -> RingLayout {
        self.inner.ring_layout()
    }
    fn max_queue_size(&mut self, queue: u16) -> Result<u16, TransportError> {
        self.inner.max_queue_size(queue)
    }
    fn queue_size_is_fixed(&self) -> bool {
        self.inner.queue_size_is_fixed()
    }
    fn setup_queue(&mut self, queue: u16, addrs: &QueueAddresses) -> Result<(), TransportError> {
        if let Some(layout) = self.layout {
            self.route(MsixEvent::Queue(queue), layout.queue_entry(queue));
        }
        self.inner.setup_queue(queue, addrs)
    }
    #[inline]
    fn notify(&mut self, queue: u16) {
        self.inner.notify(queue)
    }
    fn config_generation(&mut self) -> u32 {
        self.inner.config_generation()
    }
    fn config_consistency(&self) -> ConfigConsistency {
        self.inner.config_consistency()
    }
    fn config_space_size(&self) -> usize {
        self.inner.config_space_size()
    }
    fn read_config_field(
        &mut self,
        offset: usize,
        width: FieldWidth,
    ) -> Result<u32, TransportError> {
        self.inner.read_config_field(offset, width)
    }
    fn write_config_field(
        &mut self,
        offset: usize,
        width: FieldWidth,
        value: u32,
    ) -> Result<(), TransportError> {
        self.inner.write_config_field(offset, width, value)
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner.ack_interrupt()
    }
    fn set_config_msix_vector(&mut self, vector: u16) -> Result<(), TransportError> {
        self.inner.set_config_msix_vector(vector)
    }
    fn set_queue_msix_vector(&mut self, queue: u16, vector: u16) -> Result<(), TransportError> {
        self.inner.set_queue_msix_vector(queue, vector)
    }
    fn set_msix_enabled(&mut self, enabled: bool) {
        self.inner.set_msix_enabled(enabled)
    }
}

// ---------------------------------------------------------------------------
// The interrupt status register, for handlers
// ---------------------------------------------------------------------------

/// What can go wrong setting up a device's interrupt plumbing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqSetupError {
    /// Configuration access failed.
    Pci(PciError),
    /// The ISR structure could not be found or mapped.
    Transport(PciTransportError),
    /// A legacy device without a usable I/O BAR 0.
    NoLegacyBar,
    /// Mapping a register window failed.
    Map(HalError),
    /// virtio-mmio has no ISR byte of the PCI kind (and PCI no InterruptACK).
    WrongTransport(TransportKind),
}

impl From<PciError> for IrqSetupError {
    fn from(e: PciError) -> Self {
        IrqSetupError::Pci(e)
    }
}

impl From<PciTransportError> for IrqSetupError {
    fn from(e: PciTransportError) -> Self {
        IrqSetupError::Transport(e)
    }
}

impl fmt::Display for IrqSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IrqSetupError::Pci(e) => write!(f, "{e}"),
            IrqSetupError::Transport(e) => write!(f, "ISR structure: {e}"),
            IrqSetupError::NoLegacyBar => f.write_str("no legacy I/O BAR 0 for the ISR byte"),
            IrqSetupError::Map(e) => write!(f, "mapping the interrupt status: {e}"),
            IrqSetupError::WrongTransport(kind) => {
                write!(f, "no interrupt status register of that kind on {kind}")
            }
        }
    }
}

/// A device's interrupt status register, reachable without its transport.
///
/// Reading it *acknowledges* the interrupt: the PCI ISR byte clears itself
/// when read and the device drops its INTx line (§4.1.4.5.1); the MMIO
/// status is written back to InterruptACK, which clears those bits and
/// drops the line (§4.2.2). A level-triggered line must be dropped before
/// the handler's EOI, or it interrupts again at once.
pub enum InterruptStatusRegister<H: Hal> {
    /// virtio-pci: the ISR byte (modern ISR structure, or the legacy block's
    /// offset 19); cleared by the read.
    Pci(RegisterWindow<H>),
    /// virtio-mmio: InterruptStatus (0x60), acknowledged through InterruptACK (0x64).
    Mmio(MmioRegion<H>),
}

impl<H: Hal> Clone for InterruptStatusRegister<H> {
    fn clone(&self) -> Self {
        match self {
            InterruptStatusRegister::Pci(window) => InterruptStatusRegister::Pci(window.clone()),
            InterruptStatusRegister::Mmio(region) => InterruptStatusRegister::Mmio(*region),
        }
    }
}

impl<H: Hal> fmt::Debug for InterruptStatusRegister<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InterruptStatusRegister::Pci(window) => write!(f, "Pci({window:?})"),
            InterruptStatusRegister::Mmio(region) => write!(f, "Mmio({region:?})"),
        }
    }
}

/// Bytes of a virtio-mmio window the status register view needs.
const MMIO_STATUS_WINDOW: usize = mmio::regs::INTERRUPT_ACK + 4;

impl<H: Hal> InterruptStatusRegister<H> {
    /// The ISR byte of PCI function `function` driven through `kind`
    /// (modern: the ISR capability's structure; legacy: I/O BAR 0 + 19).
    pub fn pci<C: ConfigAccess + ?Sized>(
        access: &C,
        function: &PciFunction,
        kind: TransportKind,
    ) -> Result<Self, IrqSetupError> {
        match kind {
            TransportKind::PciModern => {
                let caps = VirtioCaps::find(access, function)?;
                let cap = caps
                    .isr
                    .ok_or(PciTransportError::MissingStructure { cfg_type: 3 })?;
                let window = map_structure::<H>(function, &cap, 1)?;
                Ok(InterruptStatusRegister::Pci(window))
            }
            TransportKind::PciLegacy => {
                let bar = function
                    .bar(0)
                    .filter(|bar| bar.is_io())
                    .ok_or(IrqSetupError::NoLegacyBar)?;
                let port = bar.address + crate::transport::pci::legacy::regs::ISR_STATUS as u64;
                let isr = hal::PortRange::device_ports(port, 1)
                    .map_err(|_| IrqSetupError::NoLegacyBar)?;
                Ok(InterruptStatusRegister::Pci(RegisterWindow::Ports(isr)))
            }
            other => Err(IrqSetupError::WrongTransport(other)),
        }
    }

    /// The InterruptStatus / InterruptACK pair of the virtio-mmio window at `base`.
    pub fn mmio(base: PhysAddr) -> Result<Self, IrqSetupError> {
        MmioRegion::map(base, MMIO_STATUS_WINDOW)
            .map(InterruptStatusRegister::Mmio)
            .map_err(IrqSetupError::Map)
    }

    /// Reads why the device interrupted and acknowledges it. An unreachable
    /// register reads as "nothing" (the handler then counts the interrupt as
    /// not this device's).
    pub fn read_and_acknowledge(&self) -> InterruptStatus {
        match self {
            InterruptStatusRegister::Pci(window) => {
                InterruptStatus::from_bits_truncate(u32::from(window.read8(0).unwrap_or(0)))
            }
            InterruptStatusRegister::Mmio(region) => {
                let status = region
                    .read::<u32>(mmio::regs::INTERRUPT_STATUS)
                    .unwrap_or(0);
                if status != 0 {
                    region.write::<u32>(mmio::regs::INTERRUPT_ACK, status);
                }
                InterruptStatus::from_bits_truncate(status)
            }
        }
    }
}

// ---------------------------------------------------------------------------
// INTx
// ---------------------------------------------------------------------------

/// What the firmware did with a PCI function's INTx pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntxLine {
    /// The function has no interrupt pin (interrupt pin register 0).
    NoPin,
    /// Routed: the firmware wrote this legacy (ISA) IRQ number into the
    /// interrupt line register (SeaBIOS does).
    Routed {
        /// 1 = INTA .. 4 = INTD.
        pin: u8,
        /// The IRQ, 1..=15.
        isa_irq: u8,
    },
    /// Not routed: the line register holds 0 or 0xff (qboot writes
    /// nothing), or a number that is not an ISA IRQ a PCI device can have.
    NotRouted {
        /// 1 = INTA .. 4 = INTD.
        pin: u8,
        /// What the line register holds.
        line: u8,
    },
}

/// Classifies what the firmware left in `function`'s interrupt pin and line
/// registers (PCI 3.0 §6.2.4: the line register is written by firmware and
/// only read by the OS; "0xFF ... means unknown or no connection").
pub fn intx_line(function: &PciFunction) -> IntxLine {
    let pin = function.interrupt_pin;
    let line = function.interrupt_line;
    if pin == 0 {
        return IntxLine::NoPin;
    }
    // IRQ 0 is the timer and 2 the cascade from the second 8259: neither
    // can carry a PCI interrupt.
    match line {
        1 | 3..=15 => IntxLine::Routed { pin, isa_irq: line },
        _ => IntxLine::NotRouted { pin, line },
    }
}

/// The letter of an interrupt pin (1 = A).
pub fn pin_name(pin: u8) -> char {
    match pin {
        1..=4 => char::from(b'A' + pin - 1),
        _ => '?',
    }
}

/// Sets (`true`) or clears the command register's Interrupt Disable bit:
/// while it is set the function does not assert INTx (PCI 3.0 §6.2.2). Set
/// while MSI-X is used or the device is polled; clear for INTx.
pub fn set_intx_disabled<C: ConfigAccess + ?Sized>(
    access: &C,
    address: PciAddress,
    disabled: bool,
) -> Result<(), PciError> {
    let current = Command::from_bits_retain(access.read16(address, regs::COMMAND)?);
    let wanted = if disabled {
        current | Command::INTERRUPT_DISABLE
    } else {
        current - Command::INTERRUPT_DISABLE
    };
    if wanted != current {
        log::trace!(
            "pci: {address}: INTx {} (command {:#06x} -> {:#06x})",
            if disabled { "disabled" } else { "enabled" },
            current.bits(),
            wanted.bits()
        );
        access.write16(address, regs::COMMAND, wanted.bits())?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// What handlers record
// ---------------------------------------------------------------------------

/// Interrupt bookkeeping of one device, written by interrupt handlers and
/// read by waiters, self-tests and the log. All atomics: a handler never
/// blocks, and a `static` array of these needs no lock.
pub struct DeviceInterrupts {
    /// Bit `q`: queue `q` had an interrupt its waiter has not consumed yet.
    pending: AtomicU64,
    /// A configuration-change interrupt the driver has not consumed yet.
    config_changed: AtomicBool,
    /// The device is polled instead (no route, or interrupts were given up on).
    polled: AtomicBool,
    /// Per queue: interrupts that named this queue.
    queue_interrupts: [AtomicU64; MAX_QUEUES as usize],
    /// Configuration-change interrupts.
    config_interrupts: AtomicU64,
    /// Line (INTx / virtio-mmio) handler runs whose status read found something.
    line_claimed: AtomicU64,
    /// Line handler runs whose status read found nothing (another device on
    /// a shared line, or spurious).
    line_unclaimed: AtomicU64,
}

/// A copy of a device's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InterruptCounters {
    /// Sum over all queues of the per-queue counts.
    pub queue_interrupts: u64,
    /// Configuration-change interrupts.
    pub config_interrupts: u64,
    /// Line interrupts that were this device's.
    pub line_claimed: u64,
    /// Line interrupts that were not.
    pub line_unclaimed: u64,
}

impl Default for DeviceInterrupts {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceInterrupts {
    /// Everything zero, interrupt-driven.
    pub const fn new() -> Self {
        DeviceInterrupts {
            pending: AtomicU64::new(0),
            config_changed: AtomicBool::new(false),
            polled: AtomicBool::new(false),
            queue_interrupts: [const { AtomicU64::new(0) }; MAX_QUEUES as usize],
            config_interrupts: AtomicU64::new(0),
            line_claimed: AtomicU64::new(0),
            line_unclaimed: AtomicU64::new(0),
        }
    }

    /// An interrupt for `queues` arrived (an MSI-X entry they share fired, or
    /// a line interrupt with the QUEUE bit). Marks them pending for their
    /// waiters and counts one interrupt for each.
    pub fn queue_interrupt(&self, queues: QueueSet) {
        for q in queues.iter() {
            self.queue_interrupts[usize::from(q)].fetch_add(1, Ordering::Relaxed);
        }
        // Release: the waiter that sees the bit also sees whatever the
        // handler saw before it (the used ring was written before the
        // interrupt was sent).
        self.pending.fetch_or(queues.bits(), Ordering::Release);
    }

    /// A configuration-change interrupt arrived.
    pub fn config_interrupt(&self) {
        self.config_interrupts.fetch_add(1, Ordering::Relaxed);
        self.config_changed.store(true, Ordering::Release);
    }

    /// Marks `queues` pending without counting an interrupt for them: for
    /// queues that share an MSI-X entry or a line with the counted ones but
    /// that nobody set up yet when the route was made (a driver may add
    /// queues later: a network card's control queue).
    pub fn wake(&self, queues: QueueSet) {
        self.pending.fetch_or(queues.bits(), Ordering::Release);
    }

    /// A line (INTx / virtio-mmio) interrupt: `status` is what the status
    /// register read returned (and acknowledged), `queues` the device's
    /// queues in use. A line interrupt does not say which queue: every
    /// queue's waiter is woken, and one interrupt is counted for each queue
    /// in `queues`. Returns whether it was this device's.
    pub fn line_interrupt(&self, status: InterruptStatus, queues: QueueSet) -> bool {
        if status.is_empty() {
            self.line_unclaimed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.line_claimed.fetch_add(1, Ordering::Relaxed);
        if status.contains(InterruptStatus::QUEUE) {
            self.queue_interrupt(queues);
            self.wake(QueueSet::ALL);
        }
        if status.contains(InterruptStatus::CONFIG) {
            self.config_interrupt();
        }
        true
    }

    /// Takes (clears and returns) the pending bits of `queues`.
    pub fn take_pending(&self, queues: QueueSet) -> QueueSet {
        let before = self.pending.fetch_and(!queues.bits(), Ordering::Acquire);
        QueueSet::from_bits(before).intersection(queues)
    }

    /// The pending bits of `queues`, without clearing them.
    pub fn pending(&self, queues: QueueSet) -> QueueSet {
        QueueSet::from_bits(self.pending.load(Ordering::Acquire)).intersection(queues)
    }

    /// Takes the configuration-changed flag: `true` once per change (or
    /// burst of changes) since the last call. Net drivers re-read the link
    /// status, console drivers the port configuration.
    pub fn take_config_change(&self) -> bool {
        self.config_changed.swap(false, Ordering::Acquire)
    }

    /// Interrupts counted for queue `queue`.
    pub fn queue_interrupt_count(&self, queue: u16) -> u64 {
        self.queue_interrupts
            .get(usize::from(queue))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Configuration-change interrupts so far.
    pub fn config_interrupt_count(&self) -> u64 {
        self.config_interrupts.load(Ordering::Relaxed)
    }

    /// All counters at once.
    pub fn counters(&self) -> InterruptCounters {
        InterruptCounters {
            queue_interrupts: self
                .queue_interrupts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum(),
            config_interrupts: self.config_interrupts.load(Ordering::Relaxed),
            line_claimed: self.line_claimed.load(Ordering::Relaxed),
            line_unclaimed: self.line_unclaimed.load(Ordering::Relaxed),
        }
    }

    /// Marks the device as polled (`true`) or interrupt-driven; waiters
    /// check it on every wait, so a device whose interrupts had to be given
    /// up on mid-run stops halting.
    pub fn set_polled(&self, polled: bool) {
        self.polled.store(polled, Ordering::Release);
    }

    /// Whether the device is polled.
    pub fn is_polled(&self) -> bool {
        self.polled.load(Ordering::Acquire)
    }

    /// Clears everything (to reuse a slot for another device).
    pub fn reset(&self) {
        self.pending.store(0, Ordering::Relaxed);
        self.config_changed.store(false, Ordering::Relaxed);
        self.polled.store(false, Ordering::Relaxed);
        for counter in &self.queue_interrupts {
            counter.store(0, Ordering::Relaxed);
        }
        self.config_interrupts.store(0, Ordering::Relaxed);
        self.line_claimed.store(0, Ordering::Relaxed);
        self.line_unclaimed.store(0, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------

/// What waiting needs from the CPU. The kernel implements it with `cli`,
/// `sti; hlt` and a watchdog timer; host tests with a simulated machine.
pub trait Idle {
    /// Disables interrupts on this CPU.
    fn disable_interrupts(&mut self);
    /// Enables interrupts.
    fn enable_interrupts(&mut self);
    /// Enables interrupts and halts until the next one, as one step (an
    /// interrupt that is already pending ends the halt at once instead of
    /// being taken before it). Returns with interrupts enabled, after the
    /// interrupt's handler ran. Must return even if the device never
    /// interrupts (the kernel arms a timer).
    fn enable_interrupts_and_halt(&mut self);
    /// One step of busy-waiting (polling mode).
    fn pause(&mut self);
    /// `true` once the caller's patience is used up.
    fn expired(&mut self) -> bool;
}

/// How an [`InterruptWait`] waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// Halt until an interrupt says the queues have news.
    Interrupt,
    /// Spin, re-checking the ring after every [`Idle::pause`].
    Poll,
}

/// What an [`InterruptWait`] did, for self-tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WaitStats {
    /// Calls to `wait`.
    pub waits: u64,
    /// Of those, how many halted the CPU.
    pub halts: u64,
    /// How many returned at once because an interrupt had already arrived
    /// between the caller's last look at the ring and the wait.
    pub already_pending: u64,
    /// How many halts ended with this wait's queues pending (the others were
    /// woken by something else: another device, the watchdog).
    pub woken_by_queue: u64,
    /// Polling steps.
    pub polls: u64,
}

/// The [`Wait`] of a blocking helper on an interrupt-driven device: halts
/// until one of `queues` had an interrupt (or polls, for a polled device).
///
/// Race-free: the helper re-arms the queue's interrupt and re-checks the ring
/// first ([`Wait::sleeps_until_interrupt`] tells it to); then `wait` turns
/// interrupts off, looks at the pending bits, and halts only if they are
/// clear, with `sti; hlt` as one step. An interrupt between the helper's
/// re-check and the `cli` has set a pending bit, so `wait` returns at once;
/// one after the `cli` is held by the CPU and ends the `hlt` immediately.
pub struct InterruptWait<'d, I: Idle> {
    device: &'d DeviceInterrupts,
    queues: QueueSet,
    idle: I,
    mode: WaitMode,
    stats: WaitStats,
}

impl<'d, I: Idle> InterruptWait<'d, I> {
    /// A wait for `queues` of `device`, halting (or polling, if the device
    /// is polled) through `idle`.
    pub fn new(device: &'d DeviceInterrupts, queues: QueueSet, idle: I) -> Self {
        let mode = if device.is_polled() {
            WaitMode::Poll
        } else {
            WaitMode::Interrupt
        };
        InterruptWait {
            device,
            queues,
            idle,
            mode,
            stats: WaitStats::default(),
        }
    }

    /// Forces a mode (benchmarks compare both on one device).
    pub fn with_mode(mut self, mode: WaitMode) -> Self {
        self.mode = mode;
        self
    }

    /// The mode in use.
    pub fn mode(&self) -> WaitMode {
        if self.device.is_polled() {
            WaitMode::Poll
        } else {
            self.mode
        }
    }

    /// What the waits so far did.
    pub fn stats(&self) -> WaitStats {
        self.stats
    }

    /// The CPU side.
    pub fn idle(&self) -> &I {
        &self.idle
    }

    /// The CPU side, mutably.
    pub fn idle_mut(&mut self) -> &mut I {
        &mut self.idle
    }
}

impl<I: Idle> Wait for InterruptWait<'_, I> {
    fn wait(&mut self) -> Result<(), WaitTimeout> {
        if self.idle.expired() {
            return Err(WaitTimeout {
                waits: self.stats.waits,
            });
        }
        self.stats.waits += 1;
        match self.mode() {
            WaitMode::Poll => {
                self.stats.polls += 1;
                self.idle.pause();
            }
            WaitMode::Interrupt => {
                self.idle.disable_interrupts();
                if !self.device.take_pending(self.queues).is_empty() {
                    self.stats.already_pending += 1;
                    self.idle.enable_interrupts();
                    return Ok(());
                }
                self.stats.halts += 1;
                self.idle.enable_interrupts_and_halt();
                // Consume what woke us before the caller looks at the ring:
                // a later interrupt sets the bit again, so nothing is lost.
                if !self.device.take_pending(self.queues).is_empty() {
                    self.stats.woken_by_queue += 1;
                }
            }
        }
        Ok(())
    }

    fn sleeps_until_interrupt(&self) -> bool {
        self.mode() == WaitMode::Interrupt
    }
}

/// Waits once for used buffers, doing what `wait` needs around it: if it
/// sleeps until an interrupt, `arm` first asks the queues for one and
/// re-checks the rings (`SplitQueue::enable_interrupts`, which returns `true`
/// if used entries are already there: then there is nothing to wait for),
/// and `disarm` suppresses them again once the wait is over, while the
/// caller collects (§2.7.7: interrupts are only wanted while nobody looks).
/// Returns `Ok(false)` when the re-check made the wait unnecessary.
///
/// ```ignore
/// irq::wait_for_used(wait, self, |d| d.enable_interrupts(), |d| d.disable_interrupts())?;
/// ```
pub fn wait_for_used<W, S>(
    wait: &mut W,
    queues: &mut S,
    arm: impl FnOnce(&mut S) -> bool,
    disarm: impl FnOnce(&mut S),
) -> Result<bool, WaitTimeout>
where
    W: Wait + ?Sized,
    S: ?Sized,
{
    if !wait.sleeps_until_interrupt() {
        wait.wait()?;
        return Ok(true);
    }
    if arm(queues) {
        return Ok(false);
    }
    let waited = wait.wait();
    disarm(queues);
    waited.map(|()| true)
}
