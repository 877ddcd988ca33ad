//! Receive-side scaling (virtio 1.2 §5.1.6.5.7.1 "Setting RSS parameters",
//! VIRTIO_NET_F_RSS).
//!
//! Without RSS the device chooses a flow's receive queue by itself
//! ("automatic receive steering", §5.1.6.5.5). With it, the driver decides:
//! the device hashes each packet's addresses and ports (the Toeplitz hash,
//! §5.1.6.4.3.1) with the driver's key, for the hash types the driver
//! enabled, and looks the low bits of the hash up in the driver's
//! indirection table, which names the receive queue. One control command,
//! `VIRTIO_NET_CTRL_MQ_RSS_CONFIG` (class 4, command 1), sets it all and the
//! number of transmit queues in use:
//!
//! ```text
//! le32 hash_types                    the VIRTIO_NET_RSS_HASH_TYPE_* bits to hash
//! le16 indirection_table_mask        table length - 1 (a power of two)
//! le16 unclassified_queue            receive queue for packets no hash type covers
//! le16 indirection_table[length]     receive queue (0-based, receiveq1 = 0) per hash value
//! le16 max_tx_vq                     transmit queues the driver uses
//! u8   hash_key_length
//! u8   hash_key_data[hash_key_length]
//! ```
//!
//! This driver fills the table round robin over its pairs (entry `i` names
//! queue `i mod pairs`), hashes IPv4 and IPv6 with TCP and UDP ports, and
//! uses a fixed 40-byte key ([`HASH_KEY`]). The device's limits come from
//! the configuration ([`RssLimits`]); one that is outside what §5.1.4.1
//! promises (a key shorter than 40 bytes, a table shorter than 128 entries,
//! none of the hash types) is not used: the driver then falls back to
//! VQ_PAIRS_SET and automatic steering.

use alloc::vec::Vec;

use super::config::RssLimits;

/// The control command (class VIRTIO_NET_CTRL_MQ, 4).
pub const MQ_RSS_CONFIG: u8 = 1;

/// VIRTIO_NET_RSS_HASH_TYPE_* (§5.1.6.4.3.1).
pub mod hash_type {
    /// Source and destination IPv4 addresses.
    pub const IPV4: u32 = 1 << 0;
    /// IPv4 addresses and TCP ports.
    pub const TCPV4: u32 = 1 << 1;
    /// IPv4 addresses and UDP ports.
    pub const UDPV4: u32 = 1 << 2;
    /// Source and destination IPv6 addresses.
    pub const IPV6: u32 = 1 << 3;
    /// IPv6 addresses and TCP ports.
    pub const TCPV6: u32 = 1 << 4;
    /// IPv6 addresses and UDP ports.
    pub const UDPV6: u32 = 1 << 5;
}

/// The hash types this driver asks for (those the device supports).
pub const WANTED_HASH_TYPES: u32 = hash_type::IPV4
    | hash_type::TCPV4
    | hash_type::UDPV4
    | hash_type::IPV6
    | hash_type::TCPV6
    | hash_type::UDPV6;

/// Key bytes: the minimum every RSS device takes (§5.1.4.1: "at least 40").
pub const HASH_KEY_LEN: usize = 40;
/// Indirection table entries: the minimum every RSS device takes (128).
pub const INDIRECTION_TABLE_LEN: u16 = 128;

/// The hash key: 40 bytes from a fixed 64-bit mixer (any key spreads flows;
/// a fixed one makes a boot's steering reproducible).
pub const HASH_KEY: [u8; HASH_KEY_LEN] = hash_key();

const fn hash_key() -> [u8; HASH_KEY_LEN] {
    let mut key = [0u8; HASH_KEY_LEN];
    let mut state: u64 = 0x7669_7274_696f_2d6e; // "virtio-n"
    let mut i = 0;
    while i < HASH_KEY_LEN {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        key[i] = (z ^ (z >> 31)) as u8;
        i += 1;
    }
    key
}

/// Why the device's RSS cannot be used.
pub fn unusable(limits: &RssLimits) -> Option<&'static str> {
    if usize::from(limits.max_key_size) < HASH_KEY_LEN {
        Some("rss_max_key_size below 40 (virtio 1.2 §5.1.4.1)")
    } else if limits.max_indirection_table_length < INDIRECTION_TABLE_LEN {
        Some("rss_max_indirection_table_length below 128 (virtio 1.2 §5.1.4.1)")
    } else if limits.supported_hash_types & WANTED_HASH_TYPES == 0 {
        Some("no IPv4/IPv6 hash type supported")
    } else {
        None
    }
}

/// The data of VIRTIO_NET_CTRL_MQ_RSS_CONFIG spreading received packets
/// over `pairs` receive queues (and `pairs` transmit queues in use), for a
/// device with `limits`; `None` if [`unusable`] or `pairs` is 0.
pub fn rss_config_data(pairs: u16, limits: &RssLimits) -> Option<Vec<u8>> {
    if pairs == 0 || unusable(limits).is_some() {
        return None;
    }
    let mut data = Vec::with_capacity(
        4 + 2 + 2 + 2 * usize::from(INDIRECTION_TABLE_LEN) + 2 + 1 + HASH_KEY_LEN,
    );
    data.extend_from_slice(&(limits.supported_hash_types & WANTED_HASH_TYPES).to_le_bytes());
    data.extend_from_slice(&(INDIRECTION_TABLE_LEN - 1).to_le_bytes());
    // Packets no hash type covers (ARP, for one) go to the first queue.
    data.extend_from_slice(&0u16.to_le_bytes());
    for entry in 0..INDIRECTION_TABLE_LEN {
        data.extend_from_slice(&(entry % pairs).to_le_bytes());
    }
    data.extend_from_slice(&pairs.to_le_bytes());
    data.push(HASH_KEY_LEN as u8);
    data.extend_from_slice(&HASH_KEY);
    Some(data)
}
