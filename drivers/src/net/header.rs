//! The header in front of every packet (virtio 1.2 §5.1.6 "Device
//! Operation", `struct virtio_net_hdr`).
//!
//! ```text
//! offset  field                 sent by the driver     received from the device
//! 0       u8   flags            0 (no checksum to do)  NEEDS_CSUM / DATA_VALID (only with
//!                                                      GUEST_CSUM, which is not negotiated)
//! 1       u8   gso_type         0 = GSO_NONE           must be GSO_NONE (no GUEST_TSO*)
//! 2       le16 hdr_len          0                      ignored
//! 4       le16 gso_size         0                      ignored
//! 6       le16 csum_start       0                      ignored
//! 8       le16 csum_offset      0                      ignored
//! 10      le16 num_buffers      0                      buffers this packet fills (MRG_RXBUF)
//! ```
//!
//! How long is it? 12 bytes on a modern device (VERSION_1) or whenever
//! MRG_RXBUF is negotiated; 10 bytes on a legacy device without MRG_RXBUF,
//! whose header has no `num_buffers` (§5.1.6.1 "Legacy Interface: Device
//! Operation"). Getting this wrong shifts every packet by two bytes, so
//! [`header_len`] is the one place that decides it.

use crate::features;

use super::config::feature;

/// Length of the header without `num_buffers` (legacy, no MRG_RXBUF).
pub const LEGACY_HEADER_LEN: usize = 10;
/// Length of the header with `num_buffers` (modern, or MRG_RXBUF).
pub const HEADER_LEN: usize = 12;

/// `gso_type`: not a segmentation offload packet.
pub const GSO_NONE: u8 = 0;

/// `flags` bit 0: the checksum starting at `csum_start` still has to be computed.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags` bit 1: the device already validated the checksum.
pub const F_DATA_VALID: u8 = 2;

/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFFSET: usize = 10;

/// The header length that goes with `negotiated` features.
pub fn header_len(negotiated: u64) -> usize {
    if negotiated & (features::VERSION_1 | feature::MRG_RXBUF) != 0 {
        HEADER_LEN
    } else {
        LEGACY_HEADER_LEN
    }
}

/// The fields of a received header that the driver looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxHeader {
    /// `flags`.
    pub flags: u8,
    /// `gso_type`.
    pub gso_type: u8,
    /// `num_buffers`, if the header has that field.
    pub num_buffers: Option<u16>,
}

impl RxHeader {
    /// Decodes the first `header_len` bytes of `bytes` (which must hold at
    /// least that many; `None` otherwise).
    pub fn parse(bytes: &[u8], header_len: usize) -> Option<Self> {
        if bytes.len() < header_len || header_len < LEGACY_HEADER_LEN {
            return None;
        }
        let num_buffers = (header_len >= HEADER_LEN).then(|| {
            u16::from_le_bytes([bytes[NUM_BUFFERS_OFFSET], bytes[NUM_BUFFERS_OFFSET + 1]])
        });
        Some(Self {
            flags: bytes[0],
            gso_type: bytes[1],
            num_buffers,
        })
    }
}

/// Encodes a header with the given fields into `out` (at least `header_len`
/// bytes; the rest of `out` is untouched). Used by device models in tests,
/// and with all-zero fields by the transmit path.
pub fn encode(out: &mut [u8], header_len: usize, flags: u8, gso_type: u8, num_buffers: u16) {
    let len = header_len.min(out.len());
    out[..len].fill(0);
    if len >= 2 {
        out[0] = flags;
        out[1] = gso_type;
    }
    if len >= HEADER_LEN {
        out[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2].copy_from_slice(&num_buffers.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_length_follows_version_1_and_mrg_rxbuf() {
        assert_eq!(header_len(0), LEGACY_HEADER_LEN);
        assert_eq!(header_len(feature::MRG_RXBUF), HEADER_LEN);
        assert_eq!(header_len(features::VERSION_1), HEADER_LEN);
        assert_eq!(
            header_len(features::VERSION_1 | feature::MRG_RXBUF),
            HEADER_LEN
        );
    }

    #[test]
    fn num_buffers_is_read_only_when_the_header_has_it() {
        let mut bytes = [0u8; 12];
        encode(&mut bytes, 12, 0, GSO_NONE, 3);
        assert_eq!(RxHeader::parse(&bytes, 12).unwrap().num_buffers, Some(3));
        assert_eq!(RxHeader::parse(&bytes, 10).unwrap().num_buffers, None);
        assert_eq!(RxHeader::parse(&bytes[..9], 10), None);
    }
}
