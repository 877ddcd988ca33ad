//! # Transports: how a driver reaches a virtio device (virtio 1.2 §4)
//!
//! Every virtio device has the same four parts (§2): a **status** byte, the
//! **feature bits**, the **device configuration space** and one or more
//! **virtqueues**. What differs between machines is *where those live*, the
//! transport:
//!
//! | flavour      | found through                         | module           |
//! |--------------|---------------------------------------|------------------|
//! | `pci-modern` | PCI vendor capabilities (§4.1.4)      | [`pci::modern`]  |
//! | `pci-legacy` | I/O BAR 0 register block (§4.1.4.8)   | [`pci::legacy`]  |
//! | `mmio-v1`    | a 512-byte window, legacy registers (§4.2.4) | [`mmio`]  |
//! | `mmio-v2`    | the same window, 1.0 registers (§4.2.2) | [`mmio`]       |
//!
//! The [`Transport`] trait is the one interface device drivers program
//! against; they never learn which flavour they sit on. A type that *is* a
//! transport by holding one implements [`TransportWrapper`] instead
//! (`wrapper.rs`) and overrides only the moments it changes: [`AnyTransport`]
//! (`any.rs`) holds any flavour in one type for the kernel, and
//! [`crate::irq::MsixRouted`] programs MSI-X entries during the bring-up.
//! `dyn Transport` works too. Each flavour hands out its interrupt status
//! register for interrupt handlers (`interrupt_status()`, see
//! [`crate::irq::InterruptStatusRegister`]).
//!
//! The pieces shared by all flavours live here: the status byte
//! ([`DeviceStatus`], §2.1), the interrupt status ([`InterruptStatus`]),
//! consistent reads of multi-field device configuration
//! ([`read_config_consistent`], §2.5.1 and §2.5.4), and the bounded wait for a
//! reset to finish.

mod any;
pub mod mmio;
pub mod pci;
mod window;
mod wrapper;

pub use any::AnyTransport;
pub use window::RegisterWindow;
pub use wrapper::TransportWrapper;

use alloc::vec;
use core::fmt;

use bitflags::bitflags;
use hal::{DmaOwner, Hal};

use crate::pci::PciAddress;
pub use crate::queue::{QueueAddresses, RingLayout};

/// Which of the four transport flavours a device sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// virtio-pci through its vendor capabilities (virtio 1.0+).
    PciModern,
    /// virtio-pci through the legacy I/O register block (pre-1.0).
    PciLegacy,
    /// virtio-mmio version 1 (legacy: GuestPageSize, QueuePFN).
    MmioV1,
    /// virtio-mmio version 2 (virtio 1.0+).
    MmioV2,
}

impl TransportKind {
    /// `true` for the pre-1.0 interfaces, which have no FEATURES_OK step, no
    /// `VERSION_1`, a fixed ring layout and no configuration generation.
    pub fn is_legacy(self) -> bool {
        matches!(self, TransportKind::PciLegacy | TransportKind::MmioV1)
    }

    /// The name used in logs and on the `virtio:` boot line.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::PciModern => "pci-modern",
            TransportKind::PciLegacy => "pci-legacy",
            TransportKind::MmioV1 => "mmio-v1",
            TransportKind::MmioV2 => "mmio-v2",
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The virtio device type (§5 "Device Types"), as the transport reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceType {
    /// 1: network card (§5.1).
    Net,
    /// 2: block device (§5.2).
    Block,
    /// 3: console (§5.3).
    Console,
    /// 4: entropy source (§5.4).
    Entropy,
    /// 5: traditional memory balloon (§5.5).
    Balloon,
    /// 8: SCSI host (§5.6).
    Scsi,
    /// 9: 9P transport.
    NineP,
    /// 16: GPU (§5.7).
    Gpu,
    /// 18: input device (§5.8).
    Input,
    /// 19: socket device (§5.10).
    Socket,
    /// 20: crypto device (§5.9).
    Crypto,
    /// 23: IOMMU (§5.13).
    Iommu,
    /// 24: memory device (§5.15).
    Memory,
    /// 25: sound device (§5.14).
    Sound,
    /// 26: file system (§5.11).
    FileSystem,
    /// 27: persistent memory (§5.19).
    Pmem,
    /// Any other id (0 is "no device", which transports report as an error instead).
    Other(u32),
}

impl DeviceType {
    /// The type for virtio device id `id`.
    pub fn from_id(id: u32) -> Self {
        match id {
            1 => DeviceType::Net,
            2 => DeviceType::Block,
            3 => DeviceType::Console,
            4 => DeviceType::Entropy,
            5 => DeviceType::Balloon,
            8 => DeviceType::Scsi,
            9 => DeviceType::NineP,
            16 => DeviceType::Gpu,
            18 => DeviceType::Input,
            19 => DeviceType::Socket,
            20 => DeviceType::Crypto,
            23 => DeviceType::Iommu,
            24 => DeviceType::Memory,
            25 => DeviceType::Sound,
            26 => DeviceType::FileSystem,
            27 => DeviceType::Pmem,
            other => DeviceType::Other(other),
        }
    }

    /// The virtio device id.
    pub fn id(self) -> u32 {
        match self {
            DeviceType::Net => 1,
            DeviceType::Block => 2,
            DeviceType::Console => 3,
            DeviceType::Entropy => 4,
            DeviceType::Balloon => 5,
            DeviceType::Scsi => 8,
            DeviceType::NineP => 9,
            DeviceType::Gpu => 16,
            DeviceType::Input => 18,
            DeviceType::Socket => 19,
            DeviceType::Crypto => 20,
            DeviceType::Iommu => 23,
            DeviceType::Memory => 24,
            DeviceType::Sound => 25,
            DeviceType::FileSystem => 26,
            DeviceType::Pmem => 27,
            DeviceType::Other(id) => id,
        }
    }
}

impl fmt::Display for DeviceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            DeviceType::Net => "net",
            DeviceType::Block => "block",
            DeviceType::Console => "console",
            DeviceType::Entropy => "entropy",
            DeviceType::Balloon => "balloon",
            DeviceType::Scsi => "scsi",
            DeviceType::NineP => "9p",
            DeviceType::Gpu => "gpu",
            DeviceType::Input => "input",
            DeviceType::Socket => "vsock",
            DeviceType::Crypto => "crypto",
            DeviceType::Iommu => "iommu",
            DeviceType::Memory => "memory",
            DeviceType::Sound => "sound",
            DeviceType::FileSystem => "fs",
            DeviceType::Pmem => "pmem",
            DeviceType::Other(id) => return write!(f, "type {id}"),
        };
        f.write_str(name)
    }
}

/// Where a device is: a PCI function or a virtio-mmio window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    /// PCI segment/bus/device/function; prints as `pci 0000:00:03.0`.
    Pci(PciAddress),
    /// Physical base of the virtio-mmio register window; prints as `mmio@0xfeb00e00`.
    Mmio {
        /// Physical address of register 0 (MagicValue).
        base: u64,
    },
}

/// [`Location::dma_owner`]'s tag for a PCI function (bits 63:56).
const OWNER_PCI: u64 = 1 << 56;
/// [`Location::dma_owner`]'s tag for a virtio-mmio window.
const OWNER_MMIO: u64 = 2 << 56;
/// The bits below the tag.
const OWNER_VALUE: u64 = (1 << 56) - 1;

impl Location {
    /// The [`DmaOwner`] of the device here: what its driver passes with every
    /// DMA allocation and share, so that a Hal with an IOMMU maps them for
    /// this device only. A tag in bits 63:56 (PCI or mmio), then segment,
    /// bus, device and function (the PCI requester ID in bits 15:0), or the
    /// mmio window's base. Never [`DmaOwner::NO_DEVICE`].
    pub fn dma_owner(self) -> DmaOwner {
        DmaOwner::new(match self {
            Location::Pci(a) => {
                OWNER_PCI
                    | u64::from(a.segment) << 16
                    | u64::from(a.bus) << 8
                    | u64::from(a.device & 0x1f) << 3
                    | u64::from(a.function & 7)
            }
            Location::Mmio { base } => OWNER_MMIO | (base & OWNER_VALUE),
        })
    }

    /// The location [`Location::dma_owner`] made `owner` from; `None` for
    /// [`DmaOwner::NO_DEVICE`] and numbers it does not make.
    pub fn of_dma_owner(owner: DmaOwner) -> Option<Location> {
        let value = owner.id() & OWNER_VALUE;
        match owner.id() & !OWNER_VALUE {
            OWNER_PCI if value >> 32 == 0 => Some(Location::Pci(PciAddress {
                segment: (value >> 16) as u16,
                bus: (value >> 8) as u8,
                device: ((value >> 3) & 0x1f) as u8,
                function: (value & 7) as u8,
            })),
            OWNER_MMIO => Some(Location::Mmio { base: value }),
            _ => None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Pci(address) => write!(f, "pci {address}"),
            Location::Mmio { base } => write!(f, "mmio@{base:#x}"),
        }
    }
}

bitflags! {
    /// The device status byte (§2.1 "Device Status Field").
    ///
    /// The driver walks it forward one bit at a time during initialisation
    /// (§3.1.1): `0 -> ACKNOWLEDGE -> +DRIVER -> +FEATURES_OK -> +DRIVER_OK`,
    /// and sets `FAILED` when it gives up. Writing 0 resets the device.
    /// The device sets `DEVICE_NEEDS_RESET` when it has hit an error it cannot
    /// recover from.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct DeviceStatus: u8 {
        /// 1: the guest OS has found the device and recognised it as a virtio device.
        const ACKNOWLEDGE = 1;
        /// 2: the guest OS knows how to drive the device.
        const DRIVER = 2;
        /// 4: the driver is set up and ready to drive the device.
        const DRIVER_OK = 4;
        /// 8: the driver has acknowledged the features it understands; feature
        /// negotiation is complete (modern interfaces only).
        const FEATURES_OK = 8;
        /// 64: the device has experienced an error from which it cannot recover.
        const DEVICE_NEEDS_RESET = 64;
        /// 128: something went wrong in the guest and it has given up on the device.
        const FAILED = 128;
    }
}

impl DeviceStatus {
    /// What writing this status tells the device, in the spec's words (for
    /// the trace narration of each status write).
    pub fn meaning(self) -> &'static str {
        if self.is_empty() {
            "reset the device"
        } else if self.contains(DeviceStatus::FAILED) {
            "the driver gave up on the device"
        } else if self.contains(DeviceStatus::DRIVER_OK) {
            "the driver is set up: the device is live"
        } else if self.contains(DeviceStatus::FEATURES_OK) {
            "the driver accepted its feature subset; feature negotiation is complete"
        } else if self.contains(DeviceStatus::DRIVER) {
            "the guest knows how to drive this device"
        } else if self.contains(DeviceStatus::ACKNOWLEDGE) {
            "the guest has noticed the device"
        } else {
            "unusual status"
        }
    }
}

impl fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#04x}", self.bits())?;
        if self.is_empty() {
            return f.write_str(" (reset)");
        }
        f.write_str(" (")?;
        let mut first = true;
        for (name, _) in self.iter_names() {
            if !first {
                f.write_str("|")?;
            }
            first = false;
            f.write_str(name)?;
        }
        let unknown = self.bits() & !DeviceStatus::all().bits();
        if unknown != 0 {
            if !first {
                f.write_str("|")?;
            }
            write!(f, "{unknown:#x}")?;
        }
        f.write_str(")")
    }
}

bitflags! {
    /// Why the device interrupted (§4.1.4.5 ISR status, §4.2.2 InterruptStatus).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct InterruptStatus: u32 {
        /// Bit 0: a virtqueue has new used buffers.
        const QUEUE = 1;
        /// Bit 1: the device configuration changed.
        const CONFIG = 2;
    }
}

/// How a transport keeps multi-field configuration reads consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigConsistency {
    /// A configuration generation counter (§2.5.1): read it before and after;
    /// equal means nothing changed in between.
    Generation,
    /// No counter (legacy, §2.5.4): read everything twice until two reads agree.
    ReadTwice,
}

/// The width of one device-configuration access (§4.1.3.1: 8-bit fields with
/// 8-bit accesses, 16-bit fields with 16-bit accesses, 32- and 64-bit fields
/// with 32-bit accesses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldWidth {
    /// One byte.
    U8,
    /// Two bytes, 2-aligned.
    U16,
    /// Four bytes, 4-aligned.
    U32,
}

impl FieldWidth {
    /// Width in bytes.
    pub fn bytes(self) -> usize {
        match self {
            FieldWidth::U8 => 1,
            FieldWidth::U16 => 2,
            FieldWidth::U32 => 4,
        }
    }
}

/// Everything a transport operation can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportError {
    /// After writing 0 to the status, it did not read back 0 within
    /// [`RESET_TIMEOUT_US`]: the device may still be using its memory.
    ResetTimeout {
        /// How many reads were made.
        polls: u32,
        /// Microseconds waited between them ([`hal::Hal::delay_us`]).
        waited_us: u32,
        /// What the last one returned.
        last_status: u8,
    },
    /// The device has no queue with this index (its size reads 0).
    NoSuchQueue(u16),
    /// The queue is already live (enabled / has a PFN) and must not be reprogrammed.
    QueueAlreadyActive(u16),
    /// A size of 0 or above the device's maximum.
    InvalidQueueSize {
        /// Queue index.
        queue: u16,
        /// What the driver asked for.
        requested: u16,
        /// What the device allows.
        max: u16,
    },
    /// Legacy PCI: the size is fixed by the device and the driver asked for another.
    FixedQueueSize {
        /// Queue index.
        queue: u16,
        /// What the driver asked for.
        requested: u16,
        /// The only size the device accepts.
        required: u16,
    },
    /// A ring area is not aligned as the spec requires.
    Misaligned {
        /// Which area ("descriptor table", "driver area", ...).
        what: &'static str,
        /// Its device address.
        addr: u64,
        /// The required alignment.
        align: u64,
    },
    /// An address the transport cannot express (a legacy PFN above 32 bits).
    AddressTooHigh {
        /// Which area.
        what: &'static str,
        /// Its device address.
        addr: u64,
    },
    /// A contiguous (legacy) layout whose areas are not where the layout puts them.
    LayoutMismatch {
        /// Which area is misplaced.
        what: &'static str,
        /// Where the layout says it must be.
        expected: u64,
        /// Where it is.
        actual: u64,
    },
    /// The device's `queue_notify_off * notify_off_multiplier` points outside the notify window.
    NotifyOutOfRange {
        /// Queue index.
        queue: u16,
        /// Offset into the notify structure.
        offset: u64,
        /// Length of the notify structure.
        len: u64,
    },
    /// A device-configuration access outside the configuration space.
    ConfigOutOfRange {
        /// Offset asked for.
        offset: usize,
        /// Bytes asked for.
        len: usize,
        /// Size of the configuration space.
        size: usize,
    },
    /// A configuration access whose offset is not aligned to its width.
    ConfigMisaligned {
        /// Offset asked for.
        offset: usize,
        /// Width in bytes.
        width: usize,
    },
    /// The configuration kept changing while it was read.
    ConfigUnstable {
        /// How many times it was read.
        attempts: u32,
    },
    /// The device answered an MSI-X vector write with another value (usually NO_VECTOR).
    MsixVectorRejected {
        /// The vector written.
        requested: u16,
        /// What read back.
        read_back: u16,
    },
    /// A register could not be reached (outside its mapped window, or the
    /// machine refused the port access).
    RegisterAccess {
        /// Which register.
        what: &'static str,
    },
    /// This transport has no such facility (MSI-X on virtio-mmio, ...).
    Unsupported(&'static str),
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TransportError::ResetTimeout {
                polls,
                waited_us,
                last_status,
            } => write!(
                f,
                "device did not finish reset: status still {last_status:#04x} after {polls} reads over {waited_us} us"
            ),
            TransportError::NoSuchQueue(q) => write!(f, "device has no queue {q}"),
            TransportError::QueueAlreadyActive(q) => write!(f, "queue {q} is already active"),
            TransportError::InvalidQueueSize {
                queue,
                requested,
                max,
            } => write!(f, "queue {queue}: size {requested} invalid (device max {max})"),
            TransportError::FixedQueueSize {
                queue,
                requested,
                required,
            } => write!(
                f,
                "queue {queue}: legacy size is fixed at {required}, driver asked for {requested}"
            ),
            TransportError::Misaligned { what, addr, align } => {
                write!(f, "{what} at {addr:#x} is not {align}-byte aligned")
            }
            TransportError::AddressTooHigh { what, addr } => {
                write!(f, "{what} at {addr:#x} is beyond what the transport can address")
            }
            TransportError::LayoutMismatch {
                what,
                expected,
                actual,
            } => write!(
                f,
                "{what} at {actual:#x}, but the legacy layout puts it at {expected:#x}"
            ),
            TransportError::NotifyOutOfRange { queue, offset, len } => write!(
                f,
                "queue {queue}: notify offset {offset:#x} outside the {len:#x}-byte notify structure"
            ),
            TransportError::ConfigOutOfRange { offset, len, size } => write!(
                f,
                "config access {offset:#x}+{len} outside the {size}-byte config space"
            ),
            TransportError::ConfigMisaligned { offset, width } => {
                write!(f, "config access of {width} bytes at unaligned offset {offset:#x}")
            }
            TransportError::ConfigUnstable { attempts } => {
                write!(f, "device config kept changing over {attempts} reads")
            }
            TransportError::MsixVectorRejected {
                requested,
                read_back,
            } => write!(
                f,
                "device rejected MSI-X vector {requested} (read back {read_back:#x})"
            ),
            TransportError::RegisterAccess { what } => {
                write!(f, "register {what} could not be accessed")
            }
            TransportError::Unsupported(what) => write!(f, "not supported: {what}"),
        }
    }
}

/// The MSI-X "no vector" value (§4.1.4.3, §4.1.5.1.2).
pub const NO_VECTOR: u16 = 0xffff;

/// How long [`Transport::reset`] waits for the status to read 0. The spec
/// gives no time limit (Linux waits for ever); QEMU resets synchronously, so
/// the first read already returns 0. A second is far more than any real
/// device needs, and short enough that a dead device does not hang a boot.
pub const RESET_TIMEOUT_US: u32 = 1_000_000;

/// The longest single pause between two status reads during a reset: the
/// pauses double from 1 µs up to this, so a fast device is seen at once and
/// a slow one costs about one status read per millisecond.
pub const RESET_MAX_PAUSE_US: u32 = 1_000;

/// How many times a configuration read is retried while the device keeps
/// changing it before giving up with [`TransportError::ConfigUnstable`].
pub const CONFIG_READ_ATTEMPTS: u32 = 16;

/// What a virtio transport offers a device driver.
///
/// The methods follow the order a driver uses them in (§3.1.1): reset, status,
/// features, queues, then the running device (notify, interrupts, config).
/// `init::begin` walks the initialisation sequence with them.
pub trait Transport {
    /// Which flavour this is.
    fn kind(&self) -> TransportKind;
    /// Which kind of device sits behind it.
    fn device_type(&self) -> DeviceType;
    /// Where it is.
    fn location(&self) -> Location;
    /// Whose DMA the driver's allocations and shares are: this device's
    /// (see [`hal::DmaOwner`]), derived from [`Transport::location`].
    fn dma_owner(&self) -> DmaOwner {
        self.location().dma_owner()
    }

    /// Reads the device status byte. A register that cannot be reached reads
    /// as all ones (FAILED | DEVICE_NEEDS_RESET | ...), like an absent device.
    fn status(&self) -> DeviceStatus;
    /// Writes the device status byte.
    fn set_status(&mut self, status: DeviceStatus);
    /// Writes 0 to the status and waits (at most [`RESET_TIMEOUT_US`], with
    /// real pauses) for it to read 0. An error means the device may still
    /// be reading and writing its rings and buffers: the caller must not
    /// free them (see `hal::DeviceVisible`).
    fn reset(&mut self) -> Result<(), TransportError>;

    /// All 64 feature bits the device offers (legacy PCI has only the low 32).
    fn device_features(&mut self) -> u64;
    /// Tells the device which features the driver accepted.
    fn set_driver_features(&mut self, features: u64);

    /// How this transport needs the ring memory laid out.
    fn ring_layout(&self) -> RingLayout;
    /// The largest size queue `queue` may have; `Ok(0)` if there is no such queue.
    fn max_queue_size(&mut self, queue: u16) -> Result<u16, TransportError>;
    /// `true` if the queue size cannot be chosen (legacy PCI: it must be the maximum).
    fn queue_size_is_fixed(&self) -> bool;
    /// Programs queue `queue` with its size and ring addresses and makes it live.
    fn setup_queue(&mut self, queue: u16, addrs: &QueueAddresses) -> Result<(), TransportError>;
    /// Tells the device that queue `queue` has new buffers. One register write
    /// at an address computed in `setup_queue`; a queue that was never set up
    /// is ignored (with a warning).
    ///
    /// Takes `&self`: a notification is one volatile write and changes
    /// nothing the transport keeps, so drivers that run a queue per CPU
    /// (`blk`'s per-queue path) notify their own queue without taking a
    /// lock that covers the whole transport.
    fn notify(&self, queue: u16);

    /// The configuration generation counter (always 0 where there is none).
    fn config_generation(&mut self) -> u32;
    /// How this transport keeps multi-field configuration reads consistent.
    fn config_consistency(&self) -> ConfigConsistency;
    /// Size of the device-specific configuration space in bytes.
    fn config_space_size(&self) -> usize;
    /// One raw read of a configuration field of `width` at `offset`
    /// (no consistency loop; see [`read_config_consistent`]).
    fn read_config_field(
        &mut self,
        offset: usize,
        width: FieldWidth,
    ) -> Result<u32, TransportError>;
    /// One raw write of a configuration field.
    fn write_config_field(
        &mut self,
        offset: usize,
        width: FieldWidth,
        value: u32,
    ) -> Result<(), TransportError>;

    /// Reads `buf.len()` bytes of device configuration at `offset`,
    /// consistently: a 1-, 2-, 4- or 8-byte aligned read is one field read with
    /// the right access width; anything else is read byte by byte. Either way
    /// it is repeated until the generation counter (or, for legacy, a second
    /// read) shows nothing changed in between.
    fn read_config(&mut self, offset: usize, buf: &mut [u8]) -> Result<(), TransportError> {
        let len = buf.len();
        let value = read_config_consistent(self, |fields| {
            let mut bytes = vec![0u8; len];
            fields.read_natural(offset, &mut bytes)?;
            Ok(bytes)
        })?;
        buf.copy_from_slice(&value);
        Ok(())
    }

    /// Writes `data` to device configuration at `offset` (same width rules as `read_config`).
    fn write_config(&mut self, offset: usize, data: &[u8]) -> Result<(), TransportError> {
        check_config_range(offset, data.len(), self.config_space_size())?;
        for (width, at) in natural_accesses(offset, data.len()) {
            let mut raw = [0u8; 4];
            raw[..width.bytes()].copy_from_slice(&data[at - offset..at - offset + width.bytes()]);
            self.write_config_field(at, width, u32::from_le_bytes(raw))?;
        }
        Ok(())
    }

    /// Reads (and so acknowledges) the interrupt status: PCI's read-to-clear
    /// ISR, or MMIO's InterruptStatus followed by InterruptACK.
    fn ack_interrupt(&mut self) -> InterruptStatus;

    /// Routes configuration-change interrupts to MSI-X table entry `vector`
    /// ([`NO_VECTOR`] for none); checks that the device accepted it.
    fn set_config_msix_vector(&mut self, vector: u16) -> Result<(), TransportError>;
    /// Routes queue `queue`'s interrupts to MSI-X table entry `vector`; checks
    /// the read-back. The spec's order is before `setup_queue` enables the queue.
    fn set_queue_msix_vector(&mut self, queue: u16, vector: u16) -> Result<(), TransportError>;
    /// Tells the transport that MSI-X was enabled or disabled in the PCI MSI-X
    /// capability. Only legacy PCI cares: its device configuration moves from
    /// offset 20 to 24 when MSI-X is on (§4.1.4.8). Others ignore it.
    fn set_msix_enabled(&mut self, enabled: bool) {
        let _ = enabled;
    }
}

/// Checks that `offset..offset+len` lies inside a `size`-byte configuration space.
pub fn check_config_range(offset: usize, len: usize, size: usize) -> Result<(), TransportError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(TransportError::ConfigOutOfRange { offset, len, size }),
    }
}

/// Splits a `len`-byte access at `offset` into the accesses §4.1.3.1 asks for:
/// `(width, offset)` pairs. An aligned 1/2/4-byte field is one access, an
/// aligned 8-byte field is two 32-bit accesses (low half first), anything else
/// (byte arrays such as a MAC address or a serial number) is bytes.
fn natural_accesses(offset: usize, len: usize) -> impl Iterator<Item = (FieldWidth, usize)> {
    let (width, step) = match len {
        2 if offset.is_multiple_of(2) => (FieldWidth::U16, 2),
        4 | 8 if offset.is_multiple_of(4) => (FieldWidth::U32, 4),
        _ => (FieldWidth::U8, 1),
    };
    (0..len / step).map(move |i| (width, offset + i * step))
}

/// Narrates one status write at trace level (every transport calls this, so
/// `log=trace` shows the whole §3.1.1 walk whatever the transport).
pub(crate) fn trace_status_write(location: Location, status: DeviceStatus) {
    log::trace!("{location}: status <- {status}: {}", status.meaning());
}

/// Writes 0 through `write_zero` and polls `read_status` until it returns 0
/// (§2.1.2, §4.1.4.3.2: "After writing 0 to device_status, the driver MUST
/// wait for a read of device_status to return 0 before reinitializing the
/// device"). Between reads it pauses through [`Hal::delay_us`], 1 µs first
/// and twice as long each time up to [`RESET_MAX_PAUSE_US`], and gives up
/// after [`RESET_TIMEOUT_US`] of pauses: a real time, not a count of reads
/// that a fast CPU gets through in no time.
pub(crate) fn reset_and_wait<H: Hal>(
    location: Location,
    write_zero: impl FnOnce(),
    mut read_status: impl FnMut() -> u8,
) -> Result<(), TransportError> {
    trace_status_write(location, DeviceStatus::empty());
    write_zero();
    let mut polls = 1u32;
    let mut last_status = read_status();
    let mut waited_us = 0u32;
    let mut pause_us = 1u32;
    while last_status != 0 {
        if waited_us >= RESET_TIMEOUT_US {
            log::warn!(
                "{location}: reset did not complete: status still {last_status:#04x} after {polls} reads over {waited_us} us"
            );
            return Err(TransportError::ResetTimeout {
                polls,
                waited_us,
                last_status,
            });
        }
        H::delay_us(pause_us);
        waited_us = waited_us.saturating_add(pause_us);
        pause_us = (pause_us * 2).min(RESET_MAX_PAUSE_US);
        last_status = read_status();
        polls += 1;
    }
    if waited_us == 0 {
        log::trace!("{location}: reset complete after {polls} status read(s)");
    } else {
        log::trace!(
            "{location}: reset complete after {polls} status read(s) and {waited_us} us of pauses"
        );
    }
    Ok(())
}

/// Field-by-field access to device configuration inside one consistent read;
/// see [`read_config_consistent`].
pub struct ConfigFields<'t, T: ?Sized> {
    transport: &'t mut T,
}

impl<T: Transport + ?Sized> ConfigFields<'_, T> {
    fn read(&mut self, offset: usize, width: FieldWidth) -> Result<u32, TransportError> {
        check_config_range(offset, width.bytes(), self.transport.config_space_size())?;
        if !offset.is_multiple_of(width.bytes()) {
            return Err(TransportError::ConfigMisaligned {
                offset,
                width: width.bytes(),
            });
        }
        self.transport.read_config_field(offset, width)
    }

    /// An 8-bit field.
    pub fn u8(&mut self, offset: usize) -> Result<u8, TransportError> {
        Ok(self.read(offset, FieldWidth::U8)? as u8)
    }

    /// A little-endian 16-bit field (2-aligned).
    pub fn u16(&mut self, offset: usize) -> Result<u16, TransportError> {
        Ok(self.read(offset, FieldWidth::U16)? as u16)
    }

    /// A little-endian 32-bit field (4-aligned).
    pub fn u32(&mut self, offset: usize) -> Result<u32, TransportError> {
        self.read(offset, FieldWidth::U32)
    }

    /// A little-endian 64-bit field (4-aligned), read as two 32-bit halves,
    /// low first (§4.1.3.1). Only a consistent read makes the halves belong together.
    pub fn u64(&mut self, offset: usize) -> Result<u64, TransportError> {
        check_config_range(offset, 8, self.transport.config_space_size())?;
        let low = self.read(offset, FieldWidth::U32)?;
        let high = self.read(offset + 4, FieldWidth::U32)?;
        Ok(u64::from(high) << 32 | u64::from(low))
    }

    /// A byte array (a MAC address, a serial number), read byte by byte.
    pub fn bytes(&mut self, offset: usize, buf: &mut [u8]) -> Result<(), TransportError> {
        check_config_range(offset, buf.len(), self.transport.config_space_size())?;
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte = self.read(offset + i, FieldWidth::U8)? as u8;
        }
        Ok(())
    }

    /// `buf.len()` bytes with the natural access widths (see [`Transport::read_config`]).
    pub fn read_natural(&mut self, offset: usize, buf: &mut [u8]) -> Result<(), TransportError> {
        check_config_range(offset, buf.len(), self.transport.config_space_size())?;
        for (width, at) in natural_accesses(offset, buf.len()) {
            let value = self.read(at, width)?.to_le_bytes();
            let start = at - offset;
            buf[start..start + width.bytes()].copy_from_slice(&value[..width.bytes()]);
        }
        Ok(())
    }
}

/// Reads several configuration fields so that they belong together.
///
/// `read` reads the fields through [`ConfigFields`]. With a generation counter
/// (§2.5.1, modern PCI and MMIO v2) it runs between two reads of the counter
/// and is repeated until both agree. Without one (§2.5.4, legacy PCI and MMIO
/// v1, whose fields are read byte by byte) it is repeated until two runs in a
/// row return the same value. Either way at most [`CONFIG_READ_ATTEMPTS`] runs.
///
/// ```ignore
/// let (capacity, blk_size) = read_config_consistent(&mut transport, |c| {
///     Ok((c.u64(0)?, c.u32(20)?))
/// })?;
/// ```
pub fn read_config_consistent<T, R, F>(transport: &mut T, mut read: F) -> Result<R, TransportError>
where
    T: Transport + ?Sized,
    R: PartialEq,
    F: FnMut(&mut ConfigFields<'_, T>) -> Result<R, TransportError>,
{
    match transport.config_consistency() {
        ConfigConsistency::Generation => {
            for attempt in 1..=CONFIG_READ_ATTEMPTS {
                let before = transport.config_generation();
                let value = read(&mut ConfigFields {
                    transport: &mut *transport,
                })?;
                let after = transport.config_generation();
                if before == after {
                    return Ok(value);
                }
                log::trace!(
                    "{}: config generation moved {before} -> {after} during read {attempt}; reading again",
                    transport.location()
                );
            }
        }
        ConfigConsistency::ReadTwice => {
            let mut previous = read(&mut ConfigFields {
                transport: &mut *transport,
            })?;
            for attempt in 2..=CONFIG_READ_ATTEMPTS {
                let value = read(&mut ConfigFields {
                    transport: &mut *transport,
                })?;
                if value == previous {
                    return Ok(value);
                }
                log::trace!(
                    "{}: legacy config changed between reads {} and {attempt}; reading again",
                    transport.location(),
                    attempt - 1
                );
                previous = value;
            }
        }
    }
    Err(TransportError::ConfigUnstable {
        attempts: CONFIG_READ_ATTEMPTS,
    })
}

/// Checks ring addresses against the layout a transport requires, before any
/// register is written (§2.7 alignment table; §2.7.2 for the legacy layout).
pub(crate) fn check_queue_addresses(
    layout: RingLayout,
    addrs: &QueueAddresses,
) -> Result<(), TransportError> {
    let size = u64::from(addrs.size);
    match layout {
        RingLayout::Separate => {
            for (what, addr, align) in [
                ("descriptor table", addrs.desc, 16u64),
                ("driver area", addrs.driver, 2),
                ("device area", addrs.device, 4),
            ] {
                if !addr.is_multiple_of(align) {
                    return Err(TransportError::Misaligned { what, addr, align });
                }
            }
        }
        RingLayout::Contiguous { align } => {
            let align = u64::from(align);
            if !addrs.desc.is_multiple_of(4096) {
                return Err(TransportError::Misaligned {
                    what: "descriptor table",
                    addr: addrs.desc,
                    align: 4096,
                });
            }
            let expected_driver = addrs.desc + 16 * size;
            if addrs.driver != expected_driver {
                return Err(TransportError::LayoutMismatch {
                    what: "driver area",
                    expected: expected_driver,
                    actual: addrs.driver,
                });
            }
            // The available ring is flags, idx, ring[size], used_event: 6 + 2*size bytes.
            let avail_end = expected_driver + 6 + 2 * size;
            let expected_device = avail_end.div_ceil(align) * align;
            if addrs.device != expected_device {
                return Err(TransportError::LayoutMismatch {
                    what: "device area",
                    expected: expected_device,
                    actual: addrs.device,
                });
            }
        }
    }
    Ok(())
}

/// Trace narration of one queue's programming (size and ring addresses).
pub(crate) fn trace_queue_setup(location: Location, queue: u16, addrs: &QueueAddresses) {
    log::trace!(
        "{location}: queue {queue}: size {}, descriptors at {:#x}, driver (avail) ring at {:#x}, device (used) ring at {:#x}",
        addrs.size,
        addrs.desc,
        addrs.driver,
        addrs.device
    );
}
