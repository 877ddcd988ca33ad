//! virtio-net feature bits and device configuration (virtio 1.2 §5.1.3
//! "Feature bits", §5.1.4 "Device configuration layout").
//!
//! Which configuration fields exist depends on the negotiated features, so
//! [`NetInfo::read`] reads only those, inside one consistent read (the
//! generation-counter loop on modern transports, read-twice on legacy ones,
//! §2.5.1 / §2.5.4):
//!
//! ```text
//! offset  field                        present with
//! 0       u8 mac[6]                    MAC
//! 6       le16 status                  STATUS   (bit 0 LINK_UP, bit 1 ANNOUNCE)
//! 8       le16 max_virtqueue_pairs     MQ       (queue pairs the device has, 1..=0x8000)
//! 10      le16 mtu                     MTU
//! 12      le32 speed                   SPEED_DUPLEX (not used)
//! 16      u8 duplex                    SPEED_DUPLEX (not used)
//! 17      u8 rss_max_key_size          RSS
//! 18      le16 rss_max_indirection_table_length   RSS
//! 20      le32 supported_hash_types    RSS
//! ```
//!
//! (`max_virtqueue_pairs` also exists with RSS alone, §5.1.4.)
//!
//! ## Which features this driver takes, and why
//!
//! | feature       | bit | what it buys                                             |
//! |---------------|-----|----------------------------------------------------------|
//! | MTU           | 3   | the device's MTU, which sizes receive and send buffers    |
//! | MAC           | 5   | the device's MAC address in `mac`                         |
//! | MRG_RXBUF     | 15  | one packet may fill several receive buffers (§5.1.6.4)    |
//! | STATUS        | 16  | link state in `status` and its change interrupt           |
//! | CTRL_VQ       | 17  | the control queue (§5.1.6.5)                              |
//! | CTRL_RX       | 18  | promiscuous and all-multicast modes through it            |
//! | MQ            | 22  | several receive/transmit queue pairs (§5.1.6.5.5)         |
//! | RSS           | 60  | the driver's hash key and indirection table steer packets |
//! | CTRL_MAC_ADDR | 23  | setting the MAC address through it                        |
//! | ANY_LAYOUT    | 27  | legacy only: header and packet may share a descriptor     |
//!
//! Checksum and segmentation offloads (CSUM, GUEST_CSUM, the TSO/UFO family)
//! are never accepted: QEMU's user, socket and hubport backends do not offer
//! them, and without them every packet is complete and fully checksummed in
//! both directions, so the header the driver sends is all zeroes and the one
//! it receives must say "no segmentation".
//!
//! CTRL_RX, MQ and CTRL_MAC_ADDR *require* CTRL_VQ (§5.1.3.1): a device must not
//! offer them alone, and a driver must not accept them alone. The driver
//! enforces the second rule after negotiation (see `NetDevice::with_options`).

use core::fmt;

use crate::features;
use crate::transport::{read_config_consistent, ConfigFields, Transport, TransportError};

/// virtio-net feature bits (§5.1.3) that this driver names.
pub mod feature {
    /// Bit 0: the device handles packets with partial checksums (TX offload).
    pub const CSUM: u64 = 1 << 0;
    /// Bit 1: the driver handles packets with partial checksums (RX offload).
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// Bit 3: the device reports its maximum MTU in `mtu`.
    pub const MTU: u64 = 1 << 3;
    /// Bit 5: the device has a MAC address, in `mac`.
    pub const MAC: u64 = 1 << 5;
    /// Bit 7: the driver can receive TSOv4 super-packets.
    pub const GUEST_TSO4: u64 = 1 << 7;
    /// Bit 15: the driver can merge receive buffers (`num_buffers`).
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// Bit 16: link status is in `status`.
    pub const STATUS: u64 = 1 << 16;
    /// Bit 17: there is a control queue.
    pub const CTRL_VQ: u64 = 1 << 17;
    /// Bit 18: receive filtering (promiscuous, all-multicast) over the control queue.
    pub const CTRL_RX: u64 = 1 << 18;
    /// Bit 21: the device asks the driver to announce itself (gratuitous ARP).
    pub const GUEST_ANNOUNCE: u64 = 1 << 21;
    /// Bit 22: several queue pairs.
    pub const MQ: u64 = 1 << 22;
    /// Bit 23: the MAC address can be set over the control queue.
    pub const CTRL_MAC_ADDR: u64 = 1 << 23;
    /// Bit 60: receive-side scaling: the driver sets how received packets
    /// are spread over the queues (§5.1.6.5.7, `super::rss`).
    pub const RSS: u64 = 1 << 60;
}

/// Every feature this driver implements: what it accepts when offered (the
/// ring features INDIRECT_DESC and EVENT_IDX, and VERSION_1, are added by the
/// shared code; ANY_LAYOUT is a legacy transport feature the net driver uses).
pub const SUPPORTED_FEATURES: u64 = feature::MTU
    | feature::MAC
    | feature::MRG_RXBUF
    | feature::STATUS
    | feature::CTRL_VQ
    | feature::CTRL_RX
    | feature::MQ
    | feature::CTRL_MAC_ADDR
    | feature::RSS
    | features::ANY_LAYOUT;

/// Features that need CTRL_VQ (§5.1.3.1).
pub const NEEDS_CTRL_VQ: u64 =
    feature::CTRL_RX | feature::MQ | feature::CTRL_MAC_ADDR | feature::RSS;

/// Features that give the device several queue pairs and move the control
/// queue behind them (§5.1.2: "N=1 if neither VIRTIO_NET_F_MQ nor
/// VIRTIO_NET_F_RSS are negotiated, otherwise N is set by max_virtqueue_pairs").
pub const MULTIQUEUE: u64 = feature::MQ | feature::RSS;

/// The range §5.1.4.1 allows for `max_virtqueue_pairs` ("between 1 and
/// 0x8000 inclusive"; VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN / _MAX, §5.1.6.5.5).
pub const QUEUE_PAIRS_MIN: u16 = 1;
/// See [`QUEUE_PAIRS_MIN`].
pub const QUEUE_PAIRS_MAX: u16 = 0x8000;

/// Byte offsets of the configuration fields (§5.1.4).
pub mod offset {
    /// `u8 mac[6]`.
    pub const MAC: usize = 0;
    /// le16 status.
    pub const STATUS: usize = 6;
    /// le16 max_virtqueue_pairs.
    pub const MAX_VIRTQUEUE_PAIRS: usize = 8;
    /// le16 mtu.
    pub const MTU: usize = 10;
    /// u8 rss_max_key_size.
    pub const RSS_MAX_KEY_SIZE: usize = 17;
    /// le16 rss_max_indirection_table_length.
    pub const RSS_MAX_INDIRECTION_TABLE_LENGTH: usize = 18;
    /// le32 supported_hash_types.
    pub const SUPPORTED_HASH_TYPES: usize = 20;
}

/// Bits of the `status` field (§5.1.4).
pub mod status {
    /// Bit 0: the link is up.
    pub const LINK_UP: u16 = 1;
    /// Bit 1: the device asks for an announcement (only with GUEST_ANNOUNCE).
    pub const ANNOUNCE: u16 = 2;
}

/// The MTU assumed when the device does not report one: Ethernet's 1500.
pub const DEFAULT_MTU: u16 = 1500;

/// The smallest MTU the spec lets a device report (§5.1.4.1: "The device
/// MUST NOT set mtu to a value less than 68"): the IPv4 minimum.
pub const MIN_MTU: u16 = 68;

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// `true` for a multicast (or broadcast) address: bit 0 of the first byte.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// A locally administered unicast address (bit 1 set, bit 0 clear in
    /// the first byte) made from `seed`, for a device without VIRTIO_NET_F_MAC
    /// (§5.1.5: "If the driver does not negotiate VIRTIO_NET_F_MAC, it SHOULD
    /// generate a random one"). Deterministic, so a boot is reproducible.
    pub fn local_from_seed(seed: u64) -> Self {
        // One round of a 64-bit mixer so nearby seeds give unrelated addresses.
        let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        let b = x.to_le_bytes();
        MacAddress([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]])
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// What the configuration space says, for the negotiated features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetInfo {
    /// The device's MAC address (`None` without VIRTIO_NET_F_MAC).
    pub mac: Option<MacAddress>,
    /// The raw `status` field (`None` without VIRTIO_NET_F_STATUS: the link
    /// is then always up, §5.1.4.2).
    pub status: Option<u16>,
    /// The device's MTU (`None` without VIRTIO_NET_F_MTU).
    pub mtu: Option<u16>,
    /// `max_virtqueue_pairs` as the device wrote it (`None` without
    /// VIRTIO_NET_F_MQ or VIRTIO_NET_F_RSS), not yet checked against §5.1.4.1.
    pub max_queue_pairs: Option<u16>,
    /// What the device's RSS can take (`None` without VIRTIO_NET_F_RSS), not
    /// yet checked against §5.1.4.1.
    pub rss: Option<RssLimits>,
}

/// The RSS fields of the configuration (§5.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RssLimits {
    /// `rss_max_key_size`: the longest hash key (at least 40, §5.1.4.1).
    pub max_key_size: u8,
    /// `rss_max_indirection_table_length` (at least 128, §5.1.4.1).
    pub max_indirection_table_length: u16,
    /// `supported_hash_types`: VIRTIO_NET_RSS_HASH_TYPE_* bits.
    pub supported_hash_types: u32,
}

impl NetInfo {
    /// Reads the fields that `negotiated` says exist, in one consistent read.
    pub fn read<T: Transport + ?Sized>(
        transport: &mut T,
        negotiated: u64,
    ) -> Result<Self, TransportError> {
        read_config_consistent(transport, |fields| read_fields(fields, negotiated))
    }

    /// Reads only `status` (after a configuration-change interrupt). `None`
    /// without VIRTIO_NET_F_STATUS.
    pub fn read_status<T: Transport + ?Sized>(
        transport: &mut T,
        negotiated: u64,
    ) -> Result<Option<u16>, TransportError> {
        if negotiated & feature::STATUS == 0 {
            return Ok(None);
        }
        read_config_consistent(transport, |c| c.u16(offset::STATUS)).map(Some)
    }

    /// `true` if the link is up (always, without VIRTIO_NET_F_STATUS).
    pub fn link_up(&self) -> bool {
        self.status.is_none_or(|s| s & status::LINK_UP != 0)
    }
}

fn read_fields<T: Transport + ?Sized>(
    c: &mut ConfigFields<'_, T>,
    negotiated: u64,
) -> Result<NetInfo, TransportError> {
    let mac = if negotiated & feature::MAC != 0 {
        let mut bytes = [0u8; 6];
        c.bytes(offset::MAC, &mut bytes)?;
        Some(MacAddress(bytes))
    } else {
        None
    };
    let status = if negotiated & feature::STATUS != 0 {
        Some(c.u16(offset::STATUS)?)
    } else {
        None
    };
    let mtu = if negotiated & feature::MTU != 0 {
        Some(c.u16(offset::MTU)?)
    } else {
        None
    };
    let max_queue_pairs = if negotiated & MULTIQUEUE != 0 {
        Some(c.u16(offset::MAX_VIRTQUEUE_PAIRS)?)
    } else {
        None
    };
    let rss = if negotiated & feature::RSS != 0 {
        Some(RssLimits {
            max_key_size: c.u8(offset::RSS_MAX_KEY_SIZE)?,
            max_indirection_table_length: c.u16(offset::RSS_MAX_INDIRECTION_TABLE_LENGTH)?,
            supported_hash_types: c.u32(offset::SUPPORTED_HASH_TYPES)?,
        })
    } else {
        None
    };
    Ok(NetInfo {
        mac,
        status,
        mtu,
        max_queue_pairs,
        rss,
    })
}

impl fmt::Display for NetInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mac {
            Some(mac) => write!(f, "mac {mac}")?,
            None => f.write_str("no mac")?,
        }
        match self.status {
            Some(s) => write!(
                f,
                ", link {}",
                if s & status::LINK_UP != 0 {
                    "up"
                } else {
                    "down"
                }
            )?,
            None => f.write_str(", link up (no status field)")?,
        }
        if let Some(mtu) = self.mtu {
            write!(f, ", mtu {mtu}")?;
        }
        if let Some(pairs) = self.max_queue_pairs {
            write!(f, ", {pairs} queue pair(s) at most")?;
        }
        Ok(())
    }
}
