//! # Feature bits (virtio 1.2 §2.2 "Feature Bits", §6 "Reserved Feature Bits")
//!
//! A device offers a 64-bit set of features; the driver answers with the subset
//! it understands, and from then on both sides behave as that subset says.
//! The bits fall into three ranges (§2.2):
//!
//! | bits      | meaning                                                      |
//! |-----------|--------------------------------------------------------------|
//! | 0 - 23    | device-specific (a block device's bit 6 is not a net device's) |
//! | 24 - 41   | transport and ring features, the same for every device (§6)   |
//! | 42 - 49   | reserved for future transport features                        |
//! | 50 - 127  | device-specific again                                        |
//!
//! This module names the bits (so logs say `VERSION_1 | RING_EVENT_IDX`, not
//! `0x1_2000_0000`) and holds the negotiation rule, [`negotiate`]: accept a bit
//! only if the device offered it **and** the code implements it, never the
//! legacy `BAD_FEATURE` bit 30, and `VERSION_1` exactly when the transport is a
//! modern one.

use core::fmt;

use crate::transport::{DeviceType, TransportKind};

/// Bit 24, legacy only: the device interrupts even when the driver suppressed
/// interrupts, once the available ring runs empty.
pub const NOTIFY_ON_EMPTY: u64 = 1 << 24;
/// Bit 27, legacy only: the device accepts any split of a request into descriptors.
pub const ANY_LAYOUT: u64 = 1 << 27;
/// Bit 28: indirect descriptor tables (§2.7.5.3).
pub const RING_INDIRECT_DESC: u64 = 1 << 28;
/// Bit 29: the `used_event` / `avail_event` fields that replace the flags for
/// notification suppression (§2.7.7, §2.7.10).
pub const RING_EVENT_IDX: u64 = 1 << 29;
/// Bit 30, legacy only: QEMU's legacy devices set it to catch drivers that
/// accept everything they are offered. A driver must never accept it.
pub const BAD_FEATURE: u64 = 1 << 30;
/// Bit 32: the device follows virtio 1.0 or later (the "modern" interface).
pub const VERSION_1: u64 = 1 << 32;
/// Bit 33: the device sits behind an IOMMU / uses platform-specific DMA: the addresses the
/// driver gives it are translated by the platform (§6.1). Accepted on every modern transport
/// ([`negotiate`]).
pub const ACCESS_PLATFORM: u64 = 1 << 33;
/// Bit 34: the packed virtqueue layout (§2.8).
pub const RING_PACKED: u64 = 1 << 34;
/// Bit 35: the device uses buffers in the order they were made available.
pub const IN_ORDER: u64 = 1 << 35;
/// Bit 36: memory accesses need platform-specific ordering (real hardware):
/// accepted whenever offered, and the queues then use the platform's device
/// barriers ([`crate::queue::MemoryOrder`], §6.1).
pub const ORDER_PLATFORM: u64 = 1 << 36;
/// Bit 37: the device supports single-root I/O virtualisation.
pub const SR_IOV: u64 = 1 << 37;
/// Bit 38: the driver passes extra data with each notification.
pub const NOTIFICATION_DATA: u64 = 1 << 38;
/// Bit 39: the driver uses `queue_notify_data` as the notification value.
pub const NOTIF_CONFIG_DATA: u64 = 1 << 39;
/// Bit 40: a single queue can be reset without resetting the device.
pub const RING_RESET: u64 = 1 << 40;

/// The ring features the shared queue code implements, added to whatever a
/// device driver declares (the split ring supports indirect tables and event
/// indices).
///
/// RING_PACKED is not in it: a driver opts into the packed ring through
/// [`RingPreference::ring_features`], and then must build its queues with
/// [`crate::queue::Virtqueue`] (which follows what was negotiated), not
/// with `SplitQueue`.
pub const SHARED_RING_FEATURES: u64 = RING_INDIRECT_DESC | RING_EVENT_IDX;

/// Which ring layout a driver is willing to use: the kernel command line's
/// `virtio.ring=split|packed|auto` ([`RingPreference::parse`]).
///
/// - `Split`: never accept VIRTIO_F_RING_PACKED; every queue is split.
/// - `Packed`: accept it whenever the device offers it; a device that does
///   not offer it still gets split queues (the layout is the device's to
///   offer), which the caller may report ([`RingPreference::wanted_packed`]).
/// - `Auto` (the default): accept it whenever offered, like `Packed`, but
///   without reporting a device that lacks it.
///
/// Either way the bit is accepted only when offered ([`negotiate`] keeps
/// the result a subset of the offer) and never on a legacy transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RingPreference {
    /// Split rings only.
    Split,
    /// Packed rings where the device offers them, and say so where it does not.
    Packed,
    /// Packed rings where the device offers them.
    #[default]
    Auto,
}

impl RingPreference {
    /// Parses the value of `virtio.ring=`: `split`, `packed` or `auto`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "split" => Some(RingPreference::Split),
            "packed" => Some(RingPreference::Packed),
            "auto" => Some(RingPreference::Auto),
            _ => None,
        }
    }

    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            RingPreference::Split => "split",
            RingPreference::Packed => "packed",
            RingPreference::Auto => "auto",
        }
    }

    /// The ring features to pass as `shared_supported` to [`negotiate`]
    /// (through `init::begin_with` or `device::bring_up`):
    /// [`SHARED_RING_FEATURES`], plus [`RING_PACKED`] unless `Split`.
    pub const fn ring_features(self) -> u64 {
        match self {
            RingPreference::Split => SHARED_RING_FEATURES,
            RingPreference::Packed | RingPreference::Auto => SHARED_RING_FEATURES | RING_PACKED,
        }
    }

    /// `true` for `Packed`: the user asked for packed rings explicitly, so a
    /// device that ends up split is worth a warning.
    pub fn wanted_packed(self) -> bool {
        self == RingPreference::Packed
    }
}

impl fmt::Display for RingPreference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Computes the features to accept.
///
/// - `offered`: what the device offers (all 64 bits as the transport read them);
/// - `driver_supported`: what the device driver implements (its device-specific
///   bits, plus any ring bit it knows the queue code supports);
/// - `shared_supported`: what the shared code adds, normally [`SHARED_RING_FEATURES`];
/// - `kind`: the transport, which decides `VERSION_1` and [`ORDER_PLATFORM`]
///   (accepted whenever a modern device offers it: the queues then use the
///   platform's barriers, [`crate::queue::MemoryOrder`]): a modern transport (PCI
///   modern, MMIO v2) speaks the 1.0 interface and must accept it (§6.1 "A driver
///   MUST accept VIRTIO_F_VERSION_1 if it is offered"); a legacy one must not,
///   because its registers are the pre-1.0 ones. For the same reason a legacy
///   transport never gets [`RING_PACKED`]: the packed ring is a 1.1 format
///   that only exists together with VERSION_1.
///
/// [`ACCESS_PLATFORM`] is accepted whenever a modern device offers it (§6.1: a device
/// behind an IOMMU, or in a confidential VM, offers it and may refuse FEATURES_OK without it).
/// With it the device uses the platform's DMA translation for every address the driver gives
/// it; every driver here already takes all such addresses from the Hal (`dma_alloc` for rings,
/// `share` for request buffers), never from the CPU's own mapping, so nothing else changes.
/// Legacy interfaces have no such bit (it lies above bit 31).
///
/// The result is always a subset of `offered` and never contains [`BAD_FEATURE`].
pub fn negotiate(
    offered: u64,
    driver_supported: u64,
    shared_supported: u64,
    kind: TransportKind,
) -> u64 {
    let mut implemented = driver_supported | shared_supported;
    if kind.is_legacy() {
        implemented &= !(VERSION_1 | RING_PACKED | ACCESS_PLATFORM);
    } else {
        implemented |= VERSION_1 | ACCESS_PLATFORM;
        // §6.1: with it the driver must use the platform's barriers, which
        // every queue then does (`queue/order.rs`); offered by hardware
        // devices, never by QEMU's software ones.
        implemented |= ORDER_PLATFORM;
    }
    implemented &= !BAD_FEATURE;
    offered & implemented
}

/// The name of feature `bit` for a device of type `device`, if it has one.
pub fn feature_name(device: DeviceType, bit: u32) -> Option<&'static str> {
    if (24..=49).contains(&bit) {
        return transport_feature_name(bit);
    }
    match device {
        DeviceType::Net => net_feature_name(bit),
        DeviceType::Block => block_feature_name(bit),
        DeviceType::Console => console_feature_name(bit),
        DeviceType::Balloon => balloon_feature_name(bit),
        DeviceType::NineP => (bit == 0).then_some("9P_MOUNT_TAG"),
        _ => None,
    }
}

fn transport_feature_name(bit: u32) -> Option<&'static str> {
    Some(match bit {
        24 => "NOTIFY_ON_EMPTY",
        27 => "ANY_LAYOUT",
        28 => "RING_INDIRECT_DESC",
        29 => "RING_EVENT_IDX",
        30 => "BAD_FEATURE",
        32 => "VERSION_1",
        33 => "ACCESS_PLATFORM",
        34 => "RING_PACKED",
        35 => "IN_ORDER",
        36 => "ORDER_PLATFORM",
        37 => "SR_IOV",
        38 => "NOTIFICATION_DATA",
        39 => "NOTIF_CONFIG_DATA",
        40 => "RING_RESET",
        _ => return None,
    })
}

/// virtio-net feature names (§5.1.3).
fn net_feature_name(bit: u32) -> Option<&'static str> {
    Some(match bit {
        0 => "NET_CSUM",
        1 => "NET_GUEST_CSUM",
        2 => "NET_CTRL_GUEST_OFFLOADS",
        3 => "NET_MTU",
        5 => "NET_MAC",
        6 => "NET_GSO",
        7 => "NET_GUEST_TSO4",
        8 => "NET_GUEST_TSO6",
        9 => "NET_GUEST_ECN",
        10 => "NET_GUEST_UFO",
        11 => "NET_HOST_TSO4",
        12 => "NET_HOST_TSO6",
        13 => "NET_HOST_ECN",
        14 => "NET_HOST_UFO",
        15 => "NET_MRG_RXBUF",
        16 => "NET_STATUS",
        17 => "NET_CTRL_VQ",
        18 => "NET_CTRL_RX",
        19 => "NET_CTRL_VLAN",
        20 => "NET_CTRL_RX_EXTRA",
        21 => "NET_GUEST_ANNOUNCE",
        22 => "NET_MQ",
        23 => "NET_CTRL_MAC_ADDR",
        56 => "NET_HOST_USO",
        57 => "NET_HASH_REPORT",
        59 => "NET_GUEST_HDRLEN",
        60 => "NET_RSS",
        61 => "NET_RSC_EXT",
        62 => "NET_STANDBY",
        63 => "NET_SPEED_DUPLEX",
        _ => return None,
    })
}

/// virtio-blk feature names (§5.2.3, legacy names for bits 0 and 7).
fn block_feature_name(bit: u32) -> Option<&'static str> {
    Some(match bit {
        0 => "BLK_BARRIER",
        1 => "BLK_SIZE_MAX",
        2 => "BLK_SEG_MAX",
        4 => "BLK_GEOMETRY",
        5 => "BLK_RO",
        6 => "BLK_BLK_SIZE",
        7 => "BLK_SCSI",
        9 => "BLK_FLUSH",
        10 => "BLK_TOPOLOGY",
        11 => "BLK_CONFIG_WCE",
        12 => "BLK_MQ",
        13 => "BLK_DISCARD",
        14 => "BLK_WRITE_ZEROES",
        15 => "BLK_LIFETIME",
        16 => "BLK_SECURE_ERASE",
        _ => return None,
    })
}

/// virtio-console feature names (§5.3.3).
fn console_feature_name(bit: u32) -> Option<&'static str> {
    Some(match bit {
        0 => "CONSOLE_SIZE",
        1 => "CONSOLE_MULTIPORT",
        2 => "CONSOLE_EMERG_WRITE",
        _ => return None,
    })
}

/// virtio-balloon feature names (§5.5.3).
fn balloon_feature_name(bit: u32) -> Option<&'static str> {
    Some(match bit {
        0 => "BALLOON_MUST_TELL_HOST",
        1 => "BALLOON_STATS_VQ",
        2 => "BALLOON_DEFLATE_ON_OOM",
        3 => "BALLOON_FREE_PAGE_HINT",
        4 => "BALLOON_PAGE_POISON",
        5 => "BALLOON_REPORTING",
        _ => return None,
    })
}

/// A feature set that prints as names: `VERSION_1 | RING_EVENT_IDX | bit 45`.
///
/// Formatting walks 64 bits, so log it behind `log::log_enabled!` (or at a
/// level that is normally off), never on a hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureNames {
    /// The device type that gives bits 0-23 and 50-63 their meaning.
    pub device: DeviceType,
    /// The bits.
    pub bits: u64,
}

impl FeatureNames {
    /// Names `bits` as features of a `device`.
    pub fn new(device: DeviceType, bits: u64) -> Self {
        Self { device, bits }
    }
}

impl fmt::Display for FeatureNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bits == 0 {
            return f.write_str("(none)");
        }
        let mut first = true;
        for bit in 0..64u32 {
            if self.bits & (1u64 << bit) == 0 {
                continue;
            }
            if !first {
                f.write_str(" | ")?;
            }
            first = false;
            match feature_name(self.device, bit) {
                Some(name) => f.write_str(name)?,
                None => write!(f, "bit {bit}")?,
            }
        }
        Ok(())
    }
}
