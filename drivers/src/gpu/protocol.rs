//! The virtio-gpu control protocol, 2D subset (virtio 1.2 §5.7.6): the
//! request and response layouts as bytes, built and parsed here so that
//! the driver ([`super::GpuDevice`]) only moves them and host tests can
//! check them field by field.
//!
//! Every request starts with `struct virtio_gpu_ctrl_hdr` (§5.7.6.7):
//!
//! ```text
//! le32 type; le32 flags; le64 fence_id; le32 ctx_id; u8 ring_idx; u8 padding[3];   (24 bytes)
//! ```
//!
//! and so does every response, whose `type` says OK (0x11xx) or which
//! error (0x12xx). All fields are little-endian.

use alloc::vec::Vec;

/// Size of `struct virtio_gpu_ctrl_hdr`.
pub const HEADER_LEN: usize = 24;

/// Request types (§5.7.6.7, `enum virtio_gpu_ctrl_type`).
pub mod command {
    /// VIRTIO_GPU_CMD_GET_DISPLAY_INFO.
    pub const GET_DISPLAY_INFO: u32 = 0x0100;
    /// VIRTIO_GPU_CMD_RESOURCE_CREATE_2D.
    pub const RESOURCE_CREATE_2D: u32 = 0x0101;
    /// VIRTIO_GPU_CMD_RESOURCE_UNREF.
    pub const RESOURCE_UNREF: u32 = 0x0102;
    /// VIRTIO_GPU_CMD_SET_SCANOUT.
    pub const SET_SCANOUT: u32 = 0x0103;
    /// VIRTIO_GPU_CMD_RESOURCE_FLUSH.
    pub const RESOURCE_FLUSH: u32 = 0x0104;
    /// VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D.
    pub const TRANSFER_TO_HOST_2D: u32 = 0x0105;
    /// VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING.
    pub const RESOURCE_ATTACH_BACKING: u32 = 0x0106;
    /// VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING.
    pub const RESOURCE_DETACH_BACKING: u32 = 0x0107;
}

/// Response types (§5.7.6.7).
pub mod response {
    /// VIRTIO_GPU_RESP_OK_NODATA.
    pub const OK_NODATA: u32 = 0x1100;
    /// VIRTIO_GPU_RESP_OK_DISPLAY_INFO.
    pub const OK_DISPLAY_INFO: u32 = 0x1101;
    /// VIRTIO_GPU_RESP_ERR_UNSPEC (the first error code).
    pub const ERR_UNSPEC: u32 = 0x1200;
}

/// The name of a response type, for messages.
pub fn response_name(kind: u32) -> &'static str {
    match kind {
        0x1100 => "OK_NODATA",
        0x1101 => "OK_DISPLAY_INFO",
        0x1200 => "ERR_UNSPEC",
        0x1201 => "ERR_OUT_OF_MEMORY",
        0x1202 => "ERR_INVALID_SCANOUT_ID",
        0x1203 => "ERR_INVALID_RESOURCE_ID",
        0x1204 => "ERR_INVALID_CONTEXT_ID",
        0x1205 => "ERR_INVALID_PARAMETER",
        _ => "unknown",
    }
}

/// VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM (§5.7.6.8): 4 bytes per pixel, in
/// memory blue, green, red, unused.
pub const FORMAT_B8G8R8X8: u32 = 2;

/// VIRTIO_GPU_MAX_SCANOUTS: the display info response has this many entries.
pub const MAX_SCANOUTS: usize = 16;

/// Size of the display info response: header + 16 x (rect, enabled, flags).
pub const DISPLAY_INFO_LEN: usize = HEADER_LEN + MAX_SCANOUTS * 24;

/// Size of one `struct virtio_gpu_mem_entry` (le64 addr, le32 length, le32 padding).
pub const MEM_ENTRY_LEN: usize = 16;

/// `struct virtio_gpu_rect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// One scanout of the display info response (§5.7.6.8 GET_DISPLAY_INFO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanoutInfo {
    /// Its index (the scanout id SET_SCANOUT takes).
    pub id: u32,
    /// The preferred position and size the host asks for.
    pub rect: Rect,
    /// Whether the host shows this scanout.
    pub enabled: bool,
}

/// Builds a request: the header, then the body's 32-bit fields.
struct Request(Vec<u8>);

impl Request {
    fn new(kind: u32) -> Self {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&kind.to_le_bytes());
        // flags, fence_id, ctx_id, ring_idx, padding: all zero (no fence).
        bytes.extend_from_slice(&[0; HEADER_LEN - 4]);
        Request(bytes)
    }

    fn u32(mut self, value: u32) -> Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    fn u64(mut self, value: u64) -> Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    fn rect(self, r: Rect) -> Self {
        self.u32(r.x).u32(r.y).u32(r.width).u32(r.height)
    }
}

/// GET_DISPLAY_INFO: the header alone.
pub fn get_display_info() -> Vec<u8> {
    Request::new(command::GET_DISPLAY_INFO).0
}

/// RESOURCE_CREATE_2D: resource_id, format, width, height.
pub fn resource_create_2d(resource: u32, format: u32, width: u32, height: u32) -> Vec<u8> {
    Request::new(command::RESOURCE_CREATE_2D)
        .u32(resource)
        .u32(format)
        .u32(width)
        .u32(height)
        .0
}

/// RESOURCE_ATTACH_BACKING: resource_id, nr_entries, then the entries
/// (device address, length) of the scatter list.
pub fn resource_attach_backing(resource: u32, entries: &[(u64, u32)]) -> Vec<u8> {
    let mut request = Request::new(command::RESOURCE_ATTACH_BACKING)
        .u32(resource)
        .u32(entries.len() as u32);
    for &(addr, len) in entries {
        request = request.u64(addr).u32(len).u32(0);
    }
    request.0
}

/// RESOURCE_DETACH_BACKING: resource_id, padding.
pub fn resource_detach_backing(resource: u32) -> Vec<u8> {
    Request::new(command::RESOURCE_DETACH_BACKING)
        .u32(resource)
        .u32(0)
        .0
}

/// RESOURCE_UNREF: resource_id, padding.
pub fn resource_unref(resource: u32) -> Vec<u8> {
    Request::new(command::RESOURCE_UNREF).u32(resource).u32(0).0
}

/// SET_SCANOUT: rect, scanout_id, resource_id (0 turns the scanout off).
pub fn set_scanout(rect: Rect, scanout: u32, resource: u32) -> Vec<u8> {
    Request::new(command::SET_SCANOUT)
        .rect(rect)
        .u32(scanout)
        .u32(resource)
        .0
}

/// TRANSFER_TO_HOST_2D: rect, offset of the rectangle's first pixel in
/// the backing, resource_id, padding.
pub fn transfer_to_host_2d(rect: Rect, offset: u64, resource: u32) -> Vec<u8> {
    Request::new(command::TRANSFER_TO_HOST_2D)
        .rect(rect)
        .u64(offset)
        .u32(resource)
        .u32(0)
        .0
}

/// RESOURCE_FLUSH: rect, resource_id, padding.
pub fn resource_flush(rect: Rect, resource: u32) -> Vec<u8> {
    Request::new(command::RESOURCE_FLUSH)
        .rect(rect)
        .u32(resource)
        .u32(0)
        .0
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    if let Some(field) = bytes.get(at..at + 4) {
        word.copy_from_slice(field);
    }
    u32::from_le_bytes(word)
}

/// The `type` of a response header (`None` if shorter than a header).
pub fn response_type(bytes: &[u8]) -> Option<u32> {
    (bytes.len() >= HEADER_LEN).then(|| le32(bytes, 0))
}

/// The scanouts of an OK_DISPLAY_INFO response (`None` if it is short).
pub fn parse_display_info(bytes: &[u8]) -> Option<Vec<ScanoutInfo>> {
    if bytes.len() < DISPLAY_INFO_LEN {
        return None;
    }
    Some(
        (0..MAX_SCANOUTS)
            .map(|i| {
                let at = HEADER_LEN + i * 24;
                ScanoutInfo {
                    id: i as u32,
                    rect: Rect {
                        x: le32(bytes, at),
                        y: le32(bytes, at + 4),
                        width: le32(bytes, at + 8),
                        height: le32(bytes, at + 12),
                    },
                    enabled: le32(bytes, at + 16) != 0,
                }
            })
            .collect(),
    )
}

/// Device configuration (§5.7.4): offsets of its fields.
pub mod config {
    /// le32 events_read: events pending (read-only).
    pub const EVENTS_READ: usize = 0;
    /// le32 events_clear: write bits to clear them from events_read.
    pub const EVENTS_CLEAR: usize = 4;
    /// le32 num_scanouts.
    pub const NUM_SCANOUTS: usize = 8;
    /// VIRTIO_GPU_EVENT_DISPLAY: the display configuration changed (§5.7.4.2).
    pub const EVENT_DISPLAY: u32 = 1;
}
