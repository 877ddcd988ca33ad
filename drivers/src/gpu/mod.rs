//! # virtio-gpu, 2D (virtio 1.2 §5.7)
//!
//! The GPU device shows *resources* (images the host keeps) on *scanouts*
//! (its displays). A 2D driver never draws through the device: it draws into
//! ordinary guest memory and tells the device which part changed. The
//! conversation, all on the control queue (§5.7.2, queue 0), one request
//! and one response per command ([`protocol`] has the layouts):
//!
//! ```text
//! GET_DISPLAY_INFO                  which scanouts, what size the host wants
//! RESOURCE_CREATE_2D  id, format, w, h      a host-side image
//! RESOURCE_ATTACH_BACKING id, [addr,len]*   the guest pages behind it (a scatter list)
//! SET_SCANOUT  scanout, id, rect            show it
//! ... draw into the guest pages ...
//! TRANSFER_TO_HOST_2D  id, rect, offset     copy the changed rectangle to the host image
//! RESOURCE_FLUSH  id, rect                  and put it on the screen
//! ```
//!
//! The backing ([`Framebuffer`]) is a list of DMA regions of whole pixel
//! rows, about [`CHUNK_TARGET_BYTES`] each, handed over as the scatter list
//! of RESOURCE_ATTACH_BACKING: a large screen needs no large physically
//! contiguous run of memory (§5.7.6.8: "the backing storage ... does not
//! need to be contiguous").
//!
//! When the host changes the display (a window resized), the device sets
//! VIRTIO_GPU_EVENT_DISPLAY in `events_read` and sends a configuration
//! change notification (§5.7.4.2); [`GpuDevice::take_display_event`] reads
//! and clears it, and the owner calls [`GpuDevice::set_up_display`] again,
//! which builds a new resource of the new size, switches the scanout to it
//! and only then lets the old one go.
//!
//! The cursor queue (queue 1) is set up, as the device expects both
//! queues, and never used: the text console draws its own cursor.
//!
//! No feature bits are accepted (VIRGL, EDID, RESOURCE_UUID, BLOB and
//! CONTEXT_INIT are all for what a 2D console does not need). The device is
//! not trusted: a response shorter than its header, an error type, a
//! display of impossible size are errors, and a device that stops
//! answering is reset, after which every call fails.

pub mod protocol;

use alloc::vec::Vec;
use core::fmt;

use hal::{DeviceVisible, DmaOwner, DmaRegion, Hal, HalError};

use crate::device::{self, DeviceError, QueueSpec, RequestError, Wait, WaitTimeout};
use crate::features;
use crate::queue::{QueueError, Ring, Segment, Virtqueue};
use crate::screen::{Canvas, PixelRect};
use crate::transport::{DeviceType, FieldWidth, Transport, TransportError};
use protocol::{Rect, ScanoutInfo};

/// The control queue's index (§5.7.2).
pub const CONTROLQ: u16 = 0;
/// The cursor queue's index (§5.7.2).
pub const CURSORQ: u16 = 1;

/// Bytes per pixel of the format used ([`protocol::FORMAT_B8G8R8X8`]).
pub const BYTES_PER_PIXEL: u32 = 4;
/// The widest or tallest display the driver accepts.
pub const MAX_DIMENSION: u32 = 8192;
/// The largest framebuffer the driver allocates (2560 x 1600 fits).
pub const MAX_FRAMEBUFFER_BYTES: usize = 16 << 20;
/// The size aimed at for each piece of the backing.
pub const CHUNK_TARGET_BYTES: usize = 64 << 10;
/// The most pieces a backing may have (pieces hold whole rows, so they
/// are at least `CHUNK_TARGET_BYTES - stride` long: 16 MiB needs < 350).
pub const MAX_CHUNKS: usize = 512;

/// The ring features the driver accepts: event indices, not indirect
/// descriptors (a request is two buffers).
pub const RING_FEATURES: u64 = features::RING_EVENT_IDX;

/// What can go wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuError {
    /// Bring-up or queue setup failed.
    Device(DeviceError),
    /// A configuration access failed.
    Transport(TransportError),
    /// No DMA memory.
    Dma(HalError),
    /// The control queue refused the request or the device broke the ring's rules.
    Queue(QueueError),
    /// No scanout is enabled with a size.
    NoDisplay,
    /// The device asks for a display the driver will not allocate.
    ImpossibleSize {
        /// Width asked for.
        width: u32,
        /// Height asked for.
        height: u32,
    },
    /// A response shorter than the answer it must carry.
    ShortResponse {
        /// The command.
        command: u32,
        /// Bytes the device said it wrote.
        len: u32,
    },
    /// The device answered with another type than expected (an error).
    Refused {
        /// The command.
        command: u32,
        /// The response type the device wrote.
        response: u32,
    },
    /// The device did not answer in time; it was reset.
    TimedOut(WaitTimeout),
    /// An earlier failure reset the device: nothing works any more.
    Broken,
}

impl fmt::Display for GpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            GpuError::Device(e) => write!(f, "{e}"),
            GpuError::Transport(e) => write!(f, "transport: {e}"),
            GpuError::Dma(e) => write!(f, "{e}"),
            GpuError::Queue(e) => write!(f, "control queue: {e}"),
            GpuError::NoDisplay => f.write_str("no enabled scanout"),
            GpuError::ImpossibleSize { width, height } => write!(
                f,
                "the device asks for a {width}x{height} display (at most {MAX_DIMENSION}x{MAX_DIMENSION} and {MAX_FRAMEBUFFER_BYTES} bytes)"
            ),
            GpuError::ShortResponse { command, len } => {
                write!(f, "command {command:#06x}: response of only {len} bytes")
            }
            GpuError::Refused { command, response } => write!(
                f,
                "command {command:#06x}: device answered {response:#06x} ({})",
                protocol::response_name(response)
            ),
            GpuError::TimedOut(t) => write!(f, "no answer ({t}); device reset"),
            GpuError::Broken => f.write_str("device reset after an earlier failure"),
        }
    }
}

impl From<DeviceError> for GpuError {
    fn from(e: DeviceError) -> Self {
        GpuError::Device(e)
    }
}

impl From<TransportError> for GpuError {
    fn from(e: TransportError) -> Self {
        GpuError::Transport(e)
    }
}

impl From<HalError> for GpuError {
    fn from(e: HalError) -> Self {
        GpuError::Dma(e)
    }
}

/// Checks a display size the device asked for: not empty, not absurd.
pub fn check_size(width: u32, height: u32) -> Result<(), GpuError> {
    let bytes = u64::from(width) * u64::from(height) * u64::from(BYTES_PER_PIXEL);
    if width == 0
        || height == 0
        || width > MAX_DIMENSION
        || height > MAX_DIMENSION
        || bytes > MAX_FRAMEBUFFER_BYTES as u64
    {
        return Err(GpuError::ImpossibleSize { width, height });
    }
    Ok(())
}

/// The guest memory behind a 2D resource: pixel rows in DMA regions of
/// `rows_per_chunk` rows each, B8G8R8X8.
pub struct Framebuffer<H: Hal> {
    width: u32,
    height: u32,
    rows_per_chunk: u32,
    chunks: Vec<DmaRegion<H>>,
}

impl<H: Hal> Framebuffer<H> {
    /// Allocates a zeroed (black) framebuffer for device `owner`; the size
    /// must have passed [`check_size`].
    pub fn new(owner: DmaOwner, width: u32, height: u32) -> Result<Self, GpuError> {
        check_size(width, height)?;
        let stride = (width * BYTES_PER_PIXEL) as usize;
        let rows_per_chunk = (CHUNK_TARGET_BYTES / stride).max(1) as u32;
        let mut chunks = Vec::new();
        let mut row = 0;
        while row < height {
            let rows = rows_per_chunk.min(height - row);
            chunks.push(DmaRegion::new(owner, rows as usize * stride)?);
            row += rows;
        }
        Ok(Framebuffer {
            width,
            height,
            rows_per_chunk,
            chunks,
        })
    }

    /// Bytes per row.
    pub fn stride(&self) -> u32 {
        self.width * BYTES_PER_PIXEL
    }

    /// The scatter list for RESOURCE_ATTACH_BACKING: (device address,
    /// length) of each piece, in order.
    pub fn scatter_list(&self) -> Vec<(u64, u32)> {
        let mut row = 0;
        self.chunks
            .iter()
            .map(|chunk| {
                let rows = self.rows_per_chunk.min(self.height - row);
                row += rows;
                (chunk.device_addr(), rows * self.stride())
            })
            .collect()
    }

    /// Reads back one pixel row (host tests compare what was drawn).
    pub fn read_row(&self, y: u32, out: &mut [u8]) -> bool {
        if y >= self.height {
            return false;
        }
        let n = out.len().min(self.stride() as usize);
        let Some(chunk) = self.chunks.get((y / self.rows_per_chunk) as usize) else {
            return false;
        };
        let offset = ((y % self.rows_per_chunk) * self.stride()) as usize;
        chunk.read_bytes(offset, &mut out[..n])
    }
}

impl<H: Hal> Canvas for Framebuffer<H> {
    fn width(&self) -> u32 {
        self.width
    }

    fn height(&self) -> u32 {
        self.height
    }

    fn write_row(&mut self, x: u32, y: u32, pixels: &[u8]) {
        if x >= self.width || y >= self.height {
            return;
        }
        let fit = ((self.width - x) * BYTES_PER_PIXEL) as usize;
        let n = (pixels.len() / 4 * 4).min(fit);
        let Some(chunk) = self.chunks.get((y / self.rows_per_chunk) as usize) else {
            return;
        };
        let offset = ((y % self.rows_per_chunk) * self.stride() + x * BYTES_PER_PIXEL) as usize;
        // Cannot fail: the row lies inside its chunk by construction.
        let _ = chunk.write_bytes(offset, &pixels[..n]);
    }
}

/// The scanout being shown and the resource behind it.
struct Display<H: Hal> {
    scanout: u32,
    resource: u32,
    framebuffer: Framebuffer<H>,
}

/// A virtio-gpu device driven in 2D mode. See the module documentation.
pub struct GpuDevice<H: Hal, T: Transport> {
    transport: T,
    /// The queues, the command buffers and the framebuffer shown: kept for
    /// ever, not freed, if the device never acknowledges a reset
    /// (`device::reset_or_keep`).
    control: DeviceVisible<Virtqueue<H>>,
    cursor: DeviceVisible<Virtqueue<H>>,
    request: DeviceVisible<DmaRegion<H>>,
    response: DeviceVisible<DmaRegion<H>>,
    features: u64,
    num_scanouts: u32,
    display: DeviceVisible<Option<Display<H>>>,
    next_resource: u32,
    broken: bool,
}

impl<H: Hal, T: Transport> GpuDevice<H, T> {
    /// Brings the device up (§3.1.1): no device features, both queues.
    /// No command is sent yet: [`GpuDevice::set_up_display`] does that.
    pub fn new(mut transport: T) -> Result<Self, GpuError> {
        device::expect_device_type(&transport, DeviceType::Gpu)?;
        let ((control, cursor, num_scanouts), features) =
            device::bring_up(&mut transport, 0, RING_FEATURES, |t, negotiated| {
                let num_scanouts =
                    t.read_config_field(protocol::config::NUM_SCANOUTS, FieldWidth::U32)?;
                let spec = QueueSpec::new(8).with_indirect_capacity(0);
                let mut control = device::setup_queue_with::<H, T>(t, CONTROLQ, spec, negotiated)?;
                let mut cursor = device::setup_queue_with::<H, T>(t, CURSORQ, spec, negotiated)?;
                control.disable_interrupts();
                cursor.disable_interrupts();
                Ok::<_, GpuError>((control, cursor, num_scanouts))
            })?;
        let owner = transport.dma_owner();
        let request = DmaRegion::new(owner, 32 + protocol::MEM_ENTRY_LEN * MAX_CHUNKS)?;
        let response = DmaRegion::new(owner, protocol::DISPLAY_INFO_LEN)?;
        log::debug!(
            "{}: gpu up, {num_scanouts} scanout(s)",
            transport.location()
        );
        Ok(GpuDevice {
            transport,
            control: DeviceVisible::new(control),
            cursor: DeviceVisible::new(cursor),
            request: DeviceVisible::new(request),
            response: DeviceVisible::new(response),
            features,
            num_scanouts,
            display: DeviceVisible::new(None),
            next_resource: 1,
            broken: false,
        })
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably (interrupt routing).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// The negotiated features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// `num_scanouts` from the configuration.
    pub fn num_scanouts(&self) -> u32 {
        self.num_scanouts
    }

    /// The control and cursor queues.
    pub fn queues(&self) -> [&Virtqueue<H>; 2] {
        [&self.control, &self.cursor]
    }

    /// The framebuffer being shown, if a display is set up.
    pub fn framebuffer(&mut self) -> Option<&mut Framebuffer<H>> {
        self.display.as_mut().map(|d| &mut d.framebuffer)
    }

    /// The size shown, if a display is set up.
    pub fn size(&self) -> Option<(u32, u32)> {
        self.display
            .as_ref()
            .map(|d| (d.framebuffer.width, d.framebuffer.height))
    }

    /// Sends one command and waits for its response; returns the response
    /// type and the length the device reported.
    fn command<W: Wait + ?Sized>(
        &mut self,
        request: &[u8],
        response_len: usize,
        wait: &mut W,
    ) -> Result<(u32, u32), GpuError> {
        if self.broken {
            return Err(GpuError::Broken);
        }
        let command = protocol::response_type(request).unwrap_or(0);
        if !self.request.write_bytes(0, request) || response_len > self.response.len() {
            return Err(GpuError::Queue(QueueError::RequestTooLong));
        }
        // A device that writes nothing leaves a type no answer has.
        self.response.write(0, 0u32);
        let segments = [
            Segment::readable(self.request.device_addr(), request.len() as u32),
            Segment::writable(self.response.device_addr(), response_len as u32),
        ];
        let used = match device::request_and_wait(
            &mut self.transport,
            &mut *self.control,
            &segments,
            wait,
        ) {
            Ok(used) => used,
            Err(RequestError::NotAdded(e)) => return Err(GpuError::Queue(e)),
            Err(RequestError::Queue(e)) => return Err(self.fail(GpuError::Queue(e))),
            Err(RequestError::TimedOut(t)) => return Err(self.fail(GpuError::TimedOut(t))),
            Err(RequestError::WrongCompletion) => {
                return Err(self.fail(GpuError::Queue(QueueError::DeviceBroken)))
            }
        };
        if (used.len as usize) < protocol::HEADER_LEN {
            return Err(GpuError::ShortResponse {
                command,
                len: used.len,
            });
        }
        let kind = self.response.read::<u32>(0).unwrap_or(0);
        Ok((kind, used.len))
    }

    /// A command whose answer must be OK_NODATA.
    fn command_ok<W: Wait + ?Sized>(
        &mut self,
        request: &[u8],
        wait: &mut W,
    ) -> Result<(), GpuError> {
        let command = protocol::response_type(request).unwrap_or(0);
        let (kind, _) = self.command(request, protocol::HEADER_LEN, wait)?;
        if kind != protocol::response::OK_NODATA {
            return Err(GpuError::Refused {
                command,
                response: kind,
            });
        }
        Ok(())
    }

    /// Resets the device after a failure it may still be part of (its
    /// buffers are ours again only once it is reset) and remembers.
    fn fail(&mut self, error: GpuError) -> GpuError {
        log::warn!(
            "{}: gpu: {error}; resetting the device",
            self.transport.location()
        );
        self.reset_or_keep();
        self.broken = true;
        error
    }

    /// Resets the device; `false` if it never acknowledged, and may still
    /// read and write its queues, command buffers and framebuffer: they are
    /// then kept for ever, never freed (`hal::DeviceVisible`), and the
    /// device is not reset again.
    fn reset_or_keep(&mut self) -> bool {
        let dead = self.is_dead();
        device::reset_unless_dead(&mut self.transport, "virtio-gpu", dead, || {
            self.control.keep_forever();
            self.cursor.keep_forever();
            self.request.keep_forever();
            self.response.keep_forever();
            self.display.keep_forever();
        })
    }

    /// `true` once the device failed to acknowledge a reset: its memory is
    /// kept for ever and the device is not used again.
    pub fn is_dead(&self) -> bool {
        self.control.is_kept_forever()
    }

    /// GET_DISPLAY_INFO: every scanout the device reports.
    pub fn display_info<W: Wait + ?Sized>(
        &mut self,
        wait: &mut W,
    ) -> Result<Vec<ScanoutInfo>, GpuError> {
        let request = protocol::get_display_info();
        let (kind, len) = self.command(&request, protocol::DISPLAY_INFO_LEN, wait)?;
        if kind != protocol::response::OK_DISPLAY_INFO {
            return Err(GpuError::Refused {
                command: protocol::command::GET_DISPLAY_INFO,
                response: kind,
            });
        }
        let mut bytes = [0u8; protocol::DISPLAY_INFO_LEN];
        let len = (len as usize).min(bytes.len());
        if !self.response.read_bytes(0, &mut bytes[..len]) {
            return Err(GpuError::Dma(HalError::InvalidArgument));
        }
        let scanouts =
            protocol::parse_display_info(&bytes[..len]).ok_or(GpuError::ShortResponse {
                command: protocol::command::GET_DISPLAY_INFO,
                len: len as u32,
            })?;
        // Only the scanouts the configuration says exist.
        let count = (self.num_scanouts as usize).clamp(1, protocol::MAX_SCANOUTS);
        Ok(scanouts.into_iter().take(count).collect())
    }

    // ANCHOR: set_up_display
    /// Shows a new framebuffer of the size the host asks for on the first
    /// enabled scanout (create, attach, set_scanout; then the old one, if
    /// any, is detached and unreferenced). Returns the new size. The new
    /// framebuffer is black: the owner redraws it and flushes.
    pub fn set_up_display<W: Wait + ?Sized>(
        &mut self,
        wait: &mut W,
    ) -> Result<(u32, u32), GpuError> {
        let scanouts = self.display_info(wait)?;
        let chosen = scanouts
            .iter()
            .find(|s| s.enabled && s.rect.width > 0 && s.rect.height > 0)
            .ok_or(GpuError::NoDisplay)?;
        let (width, height) = (chosen.rect.width, chosen.rect.height);
        check_size(width, height)?;
        // Device-visible from ATTACH_BACKING on: kept for ever if a failed
        // command then leaves the device dead (never reset).
        let mut framebuffer = DeviceVisible::new(Framebuffer::<H>::new(
            self.transport.dma_owner(),
            width,
            height,
        )?);
        let resource = self.next_resource;
        self.next_resource = self.next_resource.wrapping_add(1).max(1);
        self.command_ok(
            &protocol::resource_create_2d(resource, protocol::FORMAT_B8G8R8X8, width, height),
            wait,
        )?;
        let whole = Rect {
            x: 0,
            y: 0,
            width,
            height,
        };
        let shown = self
            .command_ok(
                &protocol::resource_attach_backing(resource, &framebuffer.scatter_list()),
                wait,
            )
            .and_then(|()| {
                self.command_ok(&protocol::set_scanout(whole, chosen.id, resource), wait)
            });
        if let Err(error) = shown {
            if self.is_dead() {
                framebuffer.keep_forever();
            }
            return Err(error);
        }
        let framebuffer = framebuffer.into_inner().ok_or(GpuError::Broken)?;
        let new = Display {
            scanout: chosen.id,
            resource,
            framebuffer,
        };
        log::info!(
            "{}: gpu: scanout {} shows resource {resource}, {width}x{height}, backing in {} pieces",
            self.transport.location(),
            new.scanout,
            new.framebuffer.chunks.len()
        );
        if let Some(old) = self.display.replace(new) {
            // The old memory is freed only after the device let go of it
            // (or was reset); kept for ever if it is dead.
            let mut old = DeviceVisible::new(old);
            let released = self
                .command_ok(&protocol::resource_detach_backing(old.resource), wait)
                .and_then(|()| self.command_ok(&protocol::resource_unref(old.resource), wait));
            if released.is_err() && self.is_dead() {
                old.keep_forever();
            }
            released?;
        }
        Ok((width, height))
    }
    // ANCHOR_END: set_up_display

    // ANCHOR: flush
    /// Copies `rect` of the framebuffer to the host's resource and puts it
    /// on the screen (TRANSFER_TO_HOST_2D, RESOURCE_FLUSH).
    pub fn flush<W: Wait + ?Sized>(
        &mut self,
        rect: PixelRect,
        wait: &mut W,
    ) -> Result<(), GpuError> {
        let Some(display) = self.display.as_ref() else {
            return Err(GpuError::NoDisplay);
        };
        let fb = &display.framebuffer;
        // Clip to the resource: the device refuses rectangles outside it.
        let x = rect.x.min(fb.width);
        let y = rect.y.min(fb.height);
        let r = Rect {
            x,
            y,
            width: rect.width.min(fb.width - x),
            height: rect.height.min(fb.height - y),
        };
        if r.width == 0 || r.height == 0 {
            return Ok(());
        }
        let offset = u64::from(r.y) * u64::from(fb.stride()) + u64::from(r.x * BYTES_PER_PIXEL);
        let resource = display.resource;
        self.command_ok(&protocol::transfer_to_host_2d(r, offset, resource), wait)?;
        self.command_ok(&protocol::resource_flush(r, resource), wait)
    }
    // ANCHOR_END: flush

    /// Reads `events_read`; if the display changed (VIRTIO_GPU_EVENT_DISPLAY),
    /// clears it through `events_clear` and returns `true` (§5.7.4.2).
    pub fn take_display_event(&mut self) -> Result<bool, GpuError> {
        if self.broken {
            return Err(GpuError::Broken);
        }
        let events = self
            .transport
            .read_config_field(protocol::config::EVENTS_READ, FieldWidth::U32)?;
        if events == 0 {
            return Ok(false);
        }
        self.transport.write_config_field(
            protocol::config::EVENTS_CLEAR,
            FieldWidth::U32,
            events,
        )?;
        Ok(events & protocol::config::EVENT_DISPLAY != 0)
    }
}

impl<H: Hal, T: Transport> Drop for GpuDevice<H, T> {
    /// Resets the device before the framebuffer and queues are freed
    /// (§2.1.2: a reset device has forgotten its resources' backing), or
    /// keeps them for ever if it never acknowledges.
    fn drop(&mut self) {
        self.reset_or_keep();
    }
}
