//! # The screen and the keyboard: a terminal without a serial line
//!
//! A virtio-gpu (virtio 1.2 §5.7) shows a text console drawn by the kernel,
//! and virtio-input keyboards (§5.8) type into it. Together they are one of
//! the shell's terminals (`shell/terminal.rs`), and with no virtio console
//! the only one.
//!
//! - [`init`] takes the first GPU from the registry ([`virtio::take`]),
//!   brings it up through [`virtio::bring_up`] (its one `virtio:` line),
//!   asks it for the display size and shows a framebuffer of that size
//!   ([`drivers::gpu::GpuDevice::set_up_display`]). The text grid
//!   ([`drivers::screen::TextGrid`]) gets as many 8x16 cells as fit. Then it
//!   brings up every virtio-input device; those with letter keys are the
//!   keyboards.
//! - [`write`] puts terminal output on the grid and redraws what changed
//!   ([`present`]): each dirty span is drawn into the framebuffer, runs of
//!   adjacent rows are merged into one rectangle, and each rectangle is sent
//!   with TRANSFER_TO_HOST_2D + RESOURCE_FLUSH. A key press costs one cell;
//!   a command's output one rectangle per run of changed rows.
//! - The kernel log goes here too ([`log_line`], called by the logger), if
//!   the screen is free: the logger never waits for the screen's lock, so a
//!   line logged while the screen itself is busy (by the GPU driver) goes
//!   to the serial port only.
//! - [`read_input`] collects key events from every keyboard and turns them
//!   into terminal bytes ([`drivers::input::keymap::Keyboard`]); it also
//!   looks for a display change (VIRTIO_GPU_EVENT_DISPLAY, §5.7.4.2) and
//!   then sets the display up again at the new size and redraws the text.
//!   The display event is read from the configuration on each look (a
//!   4-byte read), not from the configuration interrupt.
//!
//! Command line: `screen=off` leaves both device types to nobody.

use alloc::format;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use drivers::gpu::{GpuDevice, GpuError};
use drivers::input::keymap::Keyboard;
use drivers::input::{InputDevice, InputEvent};
use drivers::irq::QueueSet;
use drivers::queue::Ring;
use drivers::screen::{self, PixelRect, TextGrid};
use drivers::transport::{DeviceType, Location, Transport};
use spin::Mutex;

use crate::hal_impl::KernelHal;
use crate::virtio::{self, BroughtUp, DrivenDevice, KernelTransport};
use crate::wait::{self, KernelWait};

/// The GPU driver on the kernel's Hal and transport.
pub type KernelGpu = GpuDevice<KernelHal, KernelTransport>;
/// The input driver on the kernel's Hal and transport.
pub type KernelInput = InputDevice<KernelHal, KernelTransport>;

/// Names on the `virtio:` FAILED lines and in the registry.
pub const GPU_DRIVER: &str = "gpu";
/// See [`GPU_DRIVER`].
pub const INPUT_DRIVER: &str = "input";

/// How long one GPU command may take.
const COMMAND_TIMEOUT_NS: u64 = 2_000_000_000;

impl DrivenDevice for KernelGpu {
    fn transport_for_routing(&mut self) -> &mut KernelTransport {
        self.transport_mut()
    }

    fn queues_in_use(&self) -> QueueSet {
        let mut set = QueueSet::EMPTY;
        for queue in self.queues() {
            set.insert(queue.index());
        }
        set
    }

    fn brought_up(&self) -> BroughtUp {
        BroughtUp::new(self.transport().kind(), 2, self.features())
    }
}

impl DrivenDevice for KernelInput {
    fn transport_for_routing(&mut self) -> &mut KernelTransport {
        self.transport_mut()
    }

    fn queues_in_use(&self) -> QueueSet {
        let mut set = QueueSet::EMPTY;
        for queue in self.queues() {
            set.insert(queue.index());
        }
        set
    }

    fn brought_up(&self) -> BroughtUp {
        BroughtUp::new(self.transport().kind(), 2, self.features())
    }
}

/// The display and its text.
struct Screen {
    location: Location,
    gpu: KernelGpu,
    grid: TextGrid,
    /// Set after a GPU failure: the screen is dead, the grid is kept.
    failed: bool,
}

/// One input device and its modifier state.
struct KeyboardInput {
    location: Location,
    device: KernelInput,
    keymap: Keyboard,
    /// Set after the device broke its queue's rules: no longer read.
    failed: bool,
}

/// The text grid and the GPU driver that shows it. The logger only ever `try_lock`s it (a log
/// line from any CPU, or from inside the GPU driver, is dropped from the screen rather than
/// waited for).
static SCREEN: Mutex<Option<Screen>> = Mutex::new(None);
/// The virtio-input keyboards (read by the shell loop; thread context only).
static KEYBOARDS: Mutex<Vec<KeyboardInput>> = Mutex::new(Vec::new());
/// Set once the screen shows text (the logger checks it before formatting).
static SCREEN_UP: AtomicBool = AtomicBool::new(false);

fn waiter(location: Location) -> KernelWait {
    wait::for_device(virtio::irq::of(location), QueueSet::ALL, COMMAND_TIMEOUT_NS)
}

/// Hands the rings of the GPU or keyboard at `location` to `visit`, with
/// their names (`controlq`, `cursorq`; `eventq`, `statusq`): a read-only
/// look for the live queue view (`crate::virtio::view`). `None` if the
/// screen or the keyboards are in use right now (the view never waits).
pub fn try_visit_rings(
    location: Location,
    mut visit: impl FnMut(&dyn core::fmt::Display, &drivers::queue::Virtqueue<KernelHal>),
) -> Option<()> {
    if let Some(screen) = SCREEN
        .try_lock()?
        .as_ref()
        .filter(|s| s.location == location)
    {
        let [control, cursor] = screen.gpu.queues();
        visit(&"controlq", control);
        visit(&"cursorq", cursor);
        return Some(());
    }
    if let Some(keyboard) = KEYBOARDS
        .try_lock()?
        .iter()
        .find(|k| k.location == location)
    {
        let [events, status] = keyboard.device.queues();
        visit(&"eventq", events);
        visit(&"statusq", status);
    }
    Some(())
}

/// Brings up the first GPU and every input device (see the module docs).
pub fn init() {
    if crate::cmdline::get("screen") == Some("off") {
        return;
    }
    if let Some(found) = virtio::take(DeviceType::Gpu, GPU_DRIVER) {
        let location = found.location;
        match virtio::bring_up(found, GPU_DRIVER, KernelGpu::new) {
            Ok(gpu) => {
                let mut screen = Screen {
                    location,
                    gpu,
                    grid: TextGrid::new(1, 1),
                    failed: false,
                };
                match screen.set_up() {
                    Ok(()) => {
                        let (cols, rows) = (screen.grid.cols(), screen.grid.rows());
                        let (width, height) = screen.gpu.size().unwrap_or((0, 0));
                        crate::println!(
                            "screen: {width}x{height} pixels, {cols}x{rows} text at {location}"
                        );
                        *SCREEN.lock() = Some(screen);
                        SCREEN_UP.store(true, Ordering::Release);
                    }
                    Err(error) => {
                        crate::println!("screen: gpu at {location}: no display: {error}")
                    }
                }
            }
            Err(error) => log::error!("screen: gpu at {location}: bring-up failed: {error}"),
        }
        virtio::leave_untaken(Some(DeviceType::Gpu));
    }
    while let Some(found) = virtio::take(DeviceType::Input, INPUT_DRIVER) {
        let location = found.location;
        match virtio::bring_up(found, INPUT_DRIVER, KernelInput::new) {
            Ok(device) => {
                crate::println!(
                    "input: {:?} at {location}{}",
                    device.name(),
                    if device.is_keyboard() {
                        ", a keyboard"
                    } else {
                        ", not a keyboard (events ignored)"
                    }
                );
                KEYBOARDS.lock().push(KeyboardInput {
                    location,
                    device,
                    keymap: Keyboard::new(),
                    failed: false,
                });
            }
            Err(error) => log::error!("input: {location}: bring-up failed: {error}"),
        }
    }
}

impl Screen {
    /// Shows a framebuffer of the size the device asks for and redraws
    /// the whole grid on it.
    fn set_up(&mut self) -> Result<(), GpuError> {
        let mut wait = waiter(self.location);
        let (width, height) = self.gpu.set_up_display(&mut wait)?;
        let (cols, rows) = screen::grid_size(width, height);
        self.grid.resize(cols, rows);
        if let Some(fb) = self.gpu.framebuffer() {
            screen::clear(fb);
        }
        self.gpu.flush(
            PixelRect {
                x: 0,
                y: 0,
                width,
                height,
            },
            &mut wait,
        )?;
        self.present();
        Ok(())
    }

    /// Draws the dirty spans and flushes them, one rectangle per run of
    /// adjacent rows.
    fn present(&mut self) {
        if self.failed {
            return;
        }
        let spans = self.grid.take_dirty();
        let Some(fb) = self.gpu.framebuffer() else {
            return;
        };
        let mut rects: Vec<PixelRect> = Vec::new();
        let mut last_row = None;
        for span in spans {
            let rect = screen::render(&self.grid, span, fb);
            match (rects.last_mut(), last_row) {
                (Some(run), Some(row)) if span.row == row + 1 => *run = run.union(rect),
                _ => rects.push(rect),
            }
            last_row = Some(span.row);
        }
        let mut wait = waiter(self.location);
        for rect in rects {
            if let Err(error) = self.gpu.flush(rect, &mut wait) {
                self.failed = true;
                crate::println!("screen: gpu at {}: {error}; screen off", self.location);
                return;
            }
        }
    }
}

/// `true` if a screen shows text and a keyboard can type into it.
pub fn ready() -> bool {
    SCREEN_UP.load(Ordering::Acquire) && KEYBOARDS.lock().iter().any(|k| k.device.is_keyboard())
}

/// Puts terminal output (bytes as the shell sends them) on the screen.
pub fn write(bytes: &[u8]) {
    if let Some(screen) = SCREEN.lock().as_mut() {
        screen.grid.write(bytes);
        screen.present();
    }
}

/// The logger's way in: one log line, if the screen is up and not busy.
pub fn log_line(args: core::fmt::Arguments<'_>) {
    if !SCREEN_UP.load(Ordering::Acquire) {
        return;
    }
    // Never wait: the line may come from inside the GPU driver itself.
    let Some(mut guard) = SCREEN.try_lock() else {
        return;
    };
    if let Some(screen) = guard.as_mut() {
        // Start on a fresh line if the cursor is inside one (a prompt).
        if screen.grid.cursor().0 != 0 {
            screen.grid.write(b"\r\n");
        }
        let line = format!("{args}\r\n");
        screen.grid.write(line.as_bytes());
        screen.present();
    }
}

/// Appends what the keyboards typed to `out`; handles a display change.
pub fn read_input(out: &mut Vec<u8>) {
    let mut events: Vec<InputEvent> = Vec::new();
    for keyboard in KEYBOARDS.lock().iter_mut().filter(|k| !k.failed) {
        events.clear();
        if let Err(error) = keyboard.device.poll(&mut events) {
            // Said once: the device is not read again (its queue is broken).
            keyboard.failed = true;
            crate::println!("input: {}: {error}; no longer read", keyboard.location);
        }
        if keyboard.device.is_keyboard() {
            for &event in &events {
                keyboard.keymap.feed(event, out);
            }
        }
    }
    let mut guard = SCREEN.lock();
    if let Some(screen) = guard.as_mut().filter(|s| !s.failed) {
        if let Ok(true) = screen.gpu.take_display_event() {
            log::info!("screen: the display changed; setting it up again");
            match screen.set_up() {
                Ok(()) => {
                    let (width, height) = screen.gpu.size().unwrap_or((0, 0));
                    crate::println!(
                        "screen: now {width}x{height} pixels, {}x{} text",
                        screen.grid.cols(),
                        screen.grid.rows()
                    );
                }
                // Refused before anything changed: the old display stays.
                Err(error @ (GpuError::ImpossibleSize { .. } | GpuError::NoDisplay)) => {
                    crate::println!(
                        "screen: gpu at {}: {error}; keeping the current display",
                        screen.location
                    );
                }
                Err(error) => {
                    screen.failed = true;
                    crate::println!("screen: gpu at {}: {error}; screen off", screen.location);
                }
            }
        }
    }
}

/// Asks every keyboard for an interrupt on its next event; `true` if one
/// is already there (look again instead of sleeping, §2.7.7).
pub fn arm() -> bool {
    let mut pending = false;
    for keyboard in KEYBOARDS.lock().iter_mut().filter(|k| !k.failed) {
        pending |= keyboard.device.enable_interrupts();
    }
    pending
}

/// Interrupts off again after a wait.
pub fn disarm() {
    for keyboard in KEYBOARDS.lock().iter_mut() {
        keyboard.device.disable_interrupts();
    }
}
