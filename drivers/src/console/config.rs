//! virtio-console feature bits and device configuration (virtio 1.2 §5.3.3
//! "Feature bits", §5.3.4 "Device configuration layout").
//!
//! ```text
//! offset  field              valid with
//! 0       le16 cols          VIRTIO_CONSOLE_F_SIZE
//! 2       le16 rows          VIRTIO_CONSOLE_F_SIZE
//! 4       le32 max_nr_ports  VIRTIO_CONSOLE_F_MULTIPORT
//! 8       le32 emerg_wr      VIRTIO_CONSOLE_F_EMERG_WRITE (driver writes it)
//! ```
//!
//! `cols`, `rows` and `max_nr_ports` are read together in one consistent
//! read ([`ConsoleConfig::read`]); `emerg_wr` is write-only in practice: a
//! write of a character to it makes the device print that character on
//! port 0 at once, without any virtqueue (§5.3.6.1). That is what a panic
//! handler needs: it works even when the queues are in an unknown state.

use core::fmt;

use crate::transport::{read_config_consistent, Transport, TransportError};

/// virtio-console feature bits (§5.3.3).
pub mod feature {
    /// Bit 0: `cols` and `rows` hold the console size.
    pub const SIZE: u64 = 1 << 0;
    /// Bit 1: the device has several ports, announced over the control
    /// queues; `max_nr_ports` is valid.
    pub const MULTIPORT: u64 = 1 << 1;
    /// Bit 2: the driver may write characters to `emerg_wr`.
    pub const EMERG_WRITE: u64 = 1 << 2;
}

/// Every console feature this driver implements.
pub const SUPPORTED_FEATURES: u64 = feature::SIZE | feature::MULTIPORT | feature::EMERG_WRITE;

/// Byte offsets of the configuration fields.
pub mod offset {
    /// `cols` (le16).
    pub const COLS: usize = 0;
    /// `rows` (le16).
    pub const ROWS: usize = 2;
    /// `max_nr_ports` (le32).
    pub const MAX_NR_PORTS: usize = 4;
    /// `emerg_wr` (le32).
    pub const EMERG_WR: usize = 8;
}

/// The console's configuration, as far as the negotiated features make it valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// `(cols, rows)` with VIRTIO_CONSOLE_F_SIZE.
    pub size: Option<(u16, u16)>,
    /// `max_nr_ports` with VIRTIO_CONSOLE_F_MULTIPORT; 1 without (port 0 only).
    pub max_nr_ports: u32,
    /// VIRTIO_CONSOLE_F_EMERG_WRITE was negotiated.
    pub emergency_write: bool,
}

impl ConsoleConfig {
    /// Reads the fields the `negotiated` features make valid, consistently.
    pub fn read<T: Transport + ?Sized>(
        transport: &mut T,
        negotiated: u64,
    ) -> Result<Self, TransportError> {
        let has = |bit: u64| negotiated & bit != 0;
        let (size, max_nr_ports) = if has(feature::SIZE) || has(feature::MULTIPORT) {
            read_config_consistent(transport, |c| {
                let size = if has(feature::SIZE) {
                    Some((c.u16(offset::COLS)?, c.u16(offset::ROWS)?))
                } else {
                    None
                };
                let ports = if has(feature::MULTIPORT) {
                    c.u32(offset::MAX_NR_PORTS)?
                } else {
                    1
                };
                Ok((size, ports))
            })?
        } else {
            (None, 1)
        };
        Ok(Self {
            size,
            max_nr_ports,
            emergency_write: has(feature::EMERG_WRITE),
        })
    }
}

impl fmt::Display for ConsoleConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.size {
            Some((cols, rows)) => write!(f, "{cols}x{rows}")?,
            None => f.write_str("size unknown")?,
        }
        write!(f, ", max {} port(s)", self.max_nr_ports)?;
        if self.emergency_write {
            f.write_str(", emergency write")?;
        }
        Ok(())
    }
}

/// Writes `bytes` to the device's `emerg_wr` field, one 32-bit write per
/// byte (§5.3.6.1: "the driver can use emerg_wr to write a character to
/// the console without setting up a virtqueue"). The device prints each
/// on port 0 at once.
///
/// NUL bytes are skipped: a device cannot tell a written 0 from "no
/// character" (QEMU ignores it). Returns how many bytes were written.
///
/// The caller checks that VIRTIO_CONSOLE_F_EMERG_WRITE was negotiated;
/// this function only needs the transport, so a panic handler can call it
/// without any other driver state.
pub fn emergency_write<T: Transport + ?Sized>(
    transport: &mut T,
    bytes: &[u8],
) -> Result<usize, TransportError> {
    let mut written = 0;
    for &byte in bytes.iter().filter(|&&b| b != 0) {
        transport.write_config(offset::EMERG_WR, &u32::from(byte).to_le_bytes())?;
        written += 1;
    }
    Ok(written)
}
