//! The screen drivers against device models (`tests::screen_models`):
//! `drivers::gpu` (virtio-gpu 2D), `drivers::input` (virtio-input) with its
//! keymap, and the text grid of `drivers::screen` drawn through the GPU.
//! Hostile models too: impossible display sizes, short and error
//! responses, a silent GPU, short input events, bogus event types, an
//! oversized configuration answer.
//!
//! `cargo test -p tests --test screen`

use drivers::device::BoundedWait;
use drivers::gpu::protocol::command;
use drivers::gpu::{GpuDevice, GpuError};
use drivers::input::keymap::{code, Keyboard};
use drivers::input::{InputDevice, InputEvent};
use drivers::screen::font::{self, GLYPH_HEIGHT, GLYPH_WIDTH};
use drivers::screen::{self, pixel, DirtySpan, PixelRect, TextGrid, BACKGROUND, FOREGROUND};
use drivers::transport::{Transport, TransportKind};
use tests::host_hal::HostHal;
use tests::screen_models::{shared, GpuKnob, GpuModel, InputModel, ModelTransport, Shared};

type Gpu = GpuDevice<HostHal, ModelTransport<GpuModel>>;
type Input = InputDevice<HostHal, ModelTransport<InputModel>>;

const ONE_BRING_UP: [u8; 5] = [0, 1, 3, 11, 15];

fn gpu(model: GpuModel, kind: TransportKind) -> (Result<Gpu, GpuError>, Shared<GpuModel>) {
    let device = shared(model);
    let transport = ModelTransport {
        device: device.clone(),
        kind,
    };
    (GpuDevice::new(transport), device)
}

/// The model answers inside `notify`: a wait is only a budget.
fn patience() -> BoundedWait<impl FnMut()> {
    BoundedWait::new(10, || {})
}

#[test]
fn gpu_shows_a_framebuffer_of_the_size_the_device_asks_for() {
    for kind in [TransportKind::PciModern, TransportKind::MmioV1] {
        let (driver, device) = gpu(GpuModel::with_display(640, 400), kind);
        let mut driver = driver.expect("the gpu comes up");
        // Legacy devices have no FEATURES_OK step (§3.1.2).
        let expected: &[u8] = if kind.is_legacy() {
            &[0, 1, 3, 7]
        } else {
            &ONE_BRING_UP
        };
        assert_eq!(device.borrow().status_writes, expected, "{kind}");
        // No device feature accepted (the model offers EDID).
        assert_eq!(driver.features() & 0xff_ffff, 0, "{kind}");
        assert_eq!(driver.set_up_display(&mut patience()), Ok((640, 400)));
        let d = device.borrow();
        assert_eq!(
            d.model.commands,
            [
                command::GET_DISPLAY_INFO,
                command::RESOURCE_CREATE_2D,
                command::RESOURCE_ATTACH_BACKING,
                command::SET_SCANOUT
            ]
        );
        let resource = &d.model.resources[&1];
        // A scatter list of several pieces, covering the whole image.
        assert!(resource.backing.len() > 1, "{:?}", resource.backing);
        let total: u32 = resource.backing.iter().map(|&(_, len)| len).sum();
        assert_eq!(total, 640 * 400 * 4);
        assert_eq!(d.model.scanout_resource[&0], 1);
        assert!(d.model.violations.is_empty(), "{:?}", d.model.violations);
        HostHal::assert_dma_only_for(driver.transport().dma_owner());
    }
}

/// Decodes the text cell at (col, row) of what the host shows.
fn shown_cell(model: &GpuModel, col: u32, row: u32) -> Option<u8> {
    let fg = pixel(FOREGROUND);
    let mut rows = [0u8; GLYPH_HEIGHT];
    for (line, bits) in rows.iter_mut().enumerate() {
        for bit in 0..GLYPH_WIDTH {
            let p = model.shown_pixel(col * 8 + bit as u32, row * 16 + line as u32)?;
            if p == fg {
                *bits |= 0x80 >> bit;
            }
        }
    }
    (font::FIRST..=font::LAST).find(|&b| *font::glyph(b) == rows)
}

/// Draws the grid's dirty spans and flushes each: what the kernel's screen does.
fn present(driver: &mut Gpu, grid: &mut TextGrid) -> Vec<PixelRect> {
    let spans = grid.take_dirty();
    let mut rects = Vec::new();
    for span in spans {
        let rect = screen::render(grid, span, driver.framebuffer().expect("a display"));
        driver.flush(rect, &mut patience()).expect("flush");
        rects.push(rect);
    }
    rects
}

#[test]
fn text_reaches_the_host_and_only_changed_cells_are_sent() {
    let (driver, device) = gpu(GpuModel::with_display(320, 64), TransportKind::PciModern);
    let mut driver = driver.expect("up");
    driver.set_up_display(&mut patience()).expect("display");
    let (cols, rows) = screen::grid_size(320, 64);
    assert_eq!((cols, rows), (40, 4));
    let mut grid = TextGrid::new(cols, rows);
    grid.write(b"kernel> ");
    present(&mut driver, &mut grid);
    for (i, &b) in b"kernel> ".iter().enumerate() {
        assert_eq!(
            shown_cell(&device.borrow().model, i as u32, 0),
            Some(b),
            "cell {i}"
        );
    }
    // The cursor cell is drawn inverted: no glyph.
    assert_eq!(shown_cell(&device.borrow().model, 8, 0), None);

    // One key: its cell and the cursor's next cell, one rectangle.
    device.borrow_mut().model.flushes.clear();
    grid.write(b"u");
    let rects = present(&mut driver, &mut grid);
    assert_eq!(
        rects,
        [PixelRect {
            x: 64,
            y: 0,
            width: 16,
            height: 16
        }]
    );
    assert_eq!(device.borrow().model.flushes, [(1, 64, 0, 16, 16)]);
    assert_eq!(shown_cell(&device.borrow().model, 8, 0), Some(b'u'));
    assert!(device.borrow().model.violations.is_empty());
}

#[test]
fn a_display_change_builds_a_new_resource_and_frees_the_old_one() {
    let (driver, device) = gpu(GpuModel::with_display(320, 64), TransportKind::MmioV2);
    let mut driver = driver.expect("up");
    driver.set_up_display(&mut patience()).expect("display");
    assert_eq!(driver.take_display_event(), Ok(false));
    device.borrow_mut().model.resize(640, 128);
    assert_eq!(driver.take_display_event(), Ok(true));
    assert_eq!(
        device.borrow().model.events_read,
        0,
        "cleared through events_clear"
    );
    assert_eq!(driver.set_up_display(&mut patience()), Ok((640, 128)));
    assert_eq!(driver.size(), Some((640, 128)));
    let d = device.borrow();
    assert_eq!(d.model.scanout_resource[&0], 2);
    assert_eq!(
        d.model.resources.keys().copied().collect::<Vec<_>>(),
        [2],
        "old one unreferenced"
    );
    assert!(d.model.violations.is_empty(), "{:?}", d.model.violations);
    assert!(d.model.commands.ends_with(&[
        command::SET_SCANOUT,
        command::RESOURCE_DETACH_BACKING,
        command::RESOURCE_UNREF
    ]));
}

#[test]
fn impossible_display_sizes_are_refused() {
    for (w, h, expected) in [
        (0, 0, GpuError::NoDisplay),
        (
            100_000,
            100_000,
            GpuError::ImpossibleSize {
                width: 100_000,
                height: 100_000,
            },
        ),
        (
            8192,
            8192,
            GpuError::ImpossibleSize {
                width: 8192,
                height: 8192,
            },
        ),
        (
            1,
            9000,
            GpuError::ImpossibleSize {
                width: 1,
                height: 9000,
            },
        ),
    ] {
        let (driver, device) = gpu(GpuModel::with_display(w, h), TransportKind::PciModern);
        let mut driver = driver.expect("up");
        assert_eq!(
            driver.set_up_display(&mut patience()),
            Err(expected),
            "{w}x{h}"
        );
        // Nothing was created for it.
        assert_eq!(device.borrow().model.commands, [command::GET_DISPLAY_INFO]);
    }
    // A disabled scanout is no display either.
    let mut model = GpuModel::with_display(640, 480);
    model.scanouts[0].2 = false;
    let (driver, _) = gpu(model, TransportKind::PciModern);
    assert_eq!(
        driver.expect("up").set_up_display(&mut patience()),
        Err(GpuError::NoDisplay)
    );
}

#[test]
fn an_impossible_new_size_leaves_the_old_display_working() {
    let (driver, device) = gpu(GpuModel::with_display(320, 64), TransportKind::PciModern);
    let mut driver = driver.expect("up");
    driver.set_up_display(&mut patience()).expect("display");
    device.borrow_mut().model.resize(100_000, 64);
    assert_eq!(driver.take_display_event(), Ok(true));
    assert_eq!(
        driver.set_up_display(&mut patience()),
        Err(GpuError::ImpossibleSize {
            width: 100_000,
            height: 64
        })
    );
    assert_eq!(driver.size(), Some((320, 64)));
    let rect = PixelRect {
        x: 0,
        y: 0,
        width: 8,
        height: 16,
    };
    assert_eq!(driver.flush(rect, &mut patience()), Ok(()));
    assert_eq!(device.borrow().model.scanout_resource[&0], 1);
    assert!(device.borrow().model.violations.is_empty());
}

#[test]
fn short_error_and_missing_responses_are_errors() {
    let mut model = GpuModel::with_display(640, 480);
    model.knob = GpuKnob::ShortResponse(8);
    let (driver, _) = gpu(model, TransportKind::PciModern);
    assert_eq!(
        driver.expect("up").set_up_display(&mut patience()),
        Err(GpuError::ShortResponse {
            command: command::GET_DISPLAY_INFO,
            len: 8
        })
    );

    // A display info response with a header but not the 16 scanouts.
    let mut model = GpuModel::with_display(640, 480);
    model.knob = GpuKnob::ShortResponse(100);
    let (driver, _) = gpu(model, TransportKind::PciModern);
    assert_eq!(
        driver.expect("up").set_up_display(&mut patience()),
        Err(GpuError::ShortResponse {
            command: command::GET_DISPLAY_INFO,
            len: 100
        })
    );

    let mut model = GpuModel::with_display(640, 480);
    model.knob = GpuKnob::ErrorResponse(0x1201);
    let (driver, _) = gpu(model, TransportKind::PciModern);
    let error = driver
        .expect("up")
        .set_up_display(&mut patience())
        .unwrap_err();
    assert_eq!(
        error,
        GpuError::Refused {
            command: command::GET_DISPLAY_INFO,
            response: 0x1201
        }
    );
    assert!(error.to_string().contains("ERR_OUT_OF_MEMORY"), "{error}");

    // Silence: the wait gives up, the device is reset, and stays given up.
    let mut model = GpuModel::with_display(640, 480);
    model.knob = GpuKnob::Silent;
    let (driver, device) = gpu(model, TransportKind::PciModern);
    let mut driver = driver.expect("up");
    assert!(matches!(
        driver.set_up_display(&mut patience()),
        Err(GpuError::TimedOut(_))
    ));
    assert_eq!(
        device.borrow().status_writes.last(),
        Some(&0),
        "reset after the timeout"
    );
    assert_eq!(
        driver.set_up_display(&mut patience()),
        Err(GpuError::Broken)
    );
    assert_eq!(driver.take_display_event(), Err(GpuError::Broken));
}

#[test]
fn each_driver_refuses_the_other_device_type() {
    let gpu_device = shared(GpuModel::with_display(640, 480));
    let as_input = InputDevice::<HostHal, _>::new(ModelTransport {
        device: gpu_device.clone(),
        kind: TransportKind::PciModern,
    });
    assert!(matches!(
        as_input.map(|_| ()),
        Err(drivers::input::InputError::Device(_))
    ));
    assert!(gpu_device.borrow().status_writes.is_empty(), "not touched");
    let input_device = shared(InputModel::keyboard("kbd"));
    let as_gpu = GpuDevice::<HostHal, _>::new(ModelTransport {
        device: input_device.clone(),
        kind: TransportKind::PciModern,
    });
    assert!(matches!(as_gpu.map(|_| ()), Err(GpuError::Device(_))));
    assert!(
        input_device.borrow().status_writes.is_empty(),
        "not touched"
    );
}

fn input(model: InputModel) -> (Input, Shared<InputModel>) {
    let device = shared(model);
    let transport = ModelTransport {
        device: device.clone(),
        kind: TransportKind::PciModern,
    };
    (InputDevice::new(transport).expect("input comes up"), device)
}

fn typed(driver: &mut Input, keyboard: &mut Keyboard) -> Vec<u8> {
    let mut events = Vec::new();
    driver.poll(&mut events).expect("poll");
    let mut bytes = Vec::new();
    for event in events {
        keyboard.feed(event, &mut bytes);
    }
    bytes
}

#[test]
fn a_keyboard_types_through_the_event_queue_which_stays_full() {
    let (mut driver, device) = input(InputModel::keyboard("QEMU Virtio Keyboard"));
    assert_eq!(device.borrow().status_writes, ONE_BRING_UP);
    assert_eq!(driver.name(), "QEMU Virtio Keyboard");
    assert!(driver.is_keyboard());
    let full = device.borrow().model.posted.len();
    assert_eq!(full, 64, "every buffer of the queue posted");
    let mut keyboard = Keyboard::new();
    {
        let mut d = device.borrow_mut();
        d.model.send(1, code::KEY_LEFTSHIFT, 1);
        d.model.tap(35); // h -> H
        d.model.send(1, code::KEY_LEFTSHIFT, 0);
        d.model.tap(23); // i
        d.model.tap(code::KEY_ENTER);
    }
    assert_eq!(typed(&mut driver, &mut keyboard), b"Hi\r");
    // Every buffer came back.
    assert_eq!(device.borrow().model.posted.len(), full);
    // More events than the queue holds, in rounds: none lost.
    let mut all = Vec::new();
    for _ in 0..5 {
        for _ in 0..10 {
            device.borrow_mut().model.tap(30);
        }
        all.extend(typed(&mut driver, &mut keyboard));
    }
    assert_eq!(all, vec![b'a'; 50]);
    assert!(
        device.borrow().model.violations.is_empty(),
        "{:?}",
        device.borrow().model.violations
    );
    HostHal::assert_dma_only_for(driver.transport().dma_owner());
}

#[test]
fn hostile_input_events_are_dropped_not_trusted() {
    let (mut driver, device) = input(InputModel::keyboard("kbd"));
    let mut keyboard = Keyboard::new();
    {
        let mut d = device.borrow_mut();
        d.model.send_raw(&[1, 0, 30, 0]); // 4 bytes: short
        d.model.send(0x7777, 30, 1); // bogus type
        d.model.send(1, 0xffff, 1); // a key code no keyboard has
        d.model.send(1, 30, 0xdead_beef); // odd value: a press of 'a'
        d.model.send(1, 30, 0);
    }
    let mut events = Vec::new();
    assert_eq!(driver.poll(&mut events), Ok(4));
    assert_eq!(driver.short_events(), 1);
    assert_eq!(
        events[0],
        InputEvent {
            kind: 0x7777,
            code: 30,
            value: 1
        }
    );
    let mut bytes = Vec::new();
    for event in events {
        keyboard.feed(event, &mut bytes);
    }
    assert_eq!(bytes, b"a");
    assert_eq!(
        device.borrow().model.posted.len(),
        64,
        "the short one was posted again"
    );
    let _ = typed(&mut driver, &mut keyboard);
}

#[test]
fn a_mouse_is_not_a_keyboard_and_oversized_answers_are_cut() {
    let (driver, _) = input(InputModel::mouse("QEMU Virtio Mouse"));
    assert!(!driver.is_keyboard());
    let mut model = InputModel::keyboard("a name");
    model.knobs.oversized_answers = true;
    let (driver, _) = input(model);
    // 128 bytes read, the union's size; the name stops at its NUL... or not:
    // the model pads with 0xee, which shows as '?'.
    assert!(driver.name().starts_with("a name?"), "{}", driver.name());
    assert!(driver.name().len() <= 128);
    assert!(driver.is_keyboard());
}

fn keys(keyboard: &mut Keyboard, presses: &[(u16, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(code, value) in presses {
        keyboard.feed(
            InputEvent {
                kind: 1,
                code,
                value,
            },
            &mut out,
        );
    }
    out
}

#[test]
fn keymap_us_layout_shift_ctrl_caps_arrows() {
    let mut k = Keyboard::new();
    // Digits and punctuation, plain and shifted.
    assert_eq!(keys(&mut k, &[(2, 1), (12, 1), (53, 1)]), b"1-/");
    assert_eq!(
        keys(
            &mut k,
            &[
                (code::KEY_RIGHTSHIFT, 1),
                (2, 1),
                (12, 1),
                (53, 1),
                (41, 1),
                (code::KEY_RIGHTSHIFT, 0)
            ]
        ),
        b"!_?~"
    );
    // Caps Lock: letters only, and Shift inverts it.
    assert_eq!(
        keys(
            &mut k,
            &[
                (code::KEY_CAPSLOCK, 1),
                (code::KEY_CAPSLOCK, 0),
                (30, 1),
                (2, 1)
            ]
        ),
        b"A1"
    );
    assert!(k.caps_lock());
    assert_eq!(
        keys(
            &mut k,
            &[(code::KEY_LEFTSHIFT, 1), (30, 1), (code::KEY_LEFTSHIFT, 0)]
        ),
        b"a"
    );
    // A repeated Caps Lock press does not toggle again.
    assert_eq!(
        keys(
            &mut k,
            &[
                (code::KEY_CAPSLOCK, 1),
                (code::KEY_CAPSLOCK, 2),
                (code::KEY_CAPSLOCK, 0),
                (30, 1)
            ]
        ),
        b"a"
    );
    // Ctrl-C, Ctrl-U.
    assert_eq!(
        keys(
            &mut k,
            &[
                (code::KEY_LEFTCTRL, 1),
                (46, 1),
                (22, 1),
                (code::KEY_LEFTCTRL, 0)
            ]
        ),
        b"\x03\x15"
    );
    // Editing keys and arrows.
    assert_eq!(
        keys(
            &mut k,
            &[
                (code::KEY_BACKSPACE, 1),
                (code::KEY_ENTER, 1),
                (code::KEY_TAB, 1)
            ]
        ),
        b"\x7f\r\t"
    );
    assert_eq!(
        keys(
            &mut k,
            &[
                (code::KEY_UP, 1),
                (code::KEY_DOWN, 1),
                (code::KEY_RIGHT, 1),
                (code::KEY_LEFT, 1)
            ]
        ),
        b"\x1b[A\x1b[B\x1b[C\x1b[D"
    );
    // Autorepeat types again; releases type nothing.
    assert_eq!(keys(&mut k, &[(31, 1), (31, 2), (31, 2), (31, 0)]), b"sss");
    // Events of other types type nothing.
    let mut out = Vec::new();
    k.feed(
        InputEvent {
            kind: 2,
            code: 30,
            value: 1,
        },
        &mut out,
    );
    assert!(out.is_empty());
}

#[test]
fn grid_wraps_scrolls_and_marks_only_what_changed() {
    let mut grid = TextGrid::new(10, 3);
    grid.take_dirty();
    grid.write(b"abc");
    assert_eq!(
        grid.take_dirty(),
        [DirtySpan {
            row: 0,
            first: 0,
            last: 3
        }]
    );
    // Backspace-space-backspace erases one cell.
    grid.write(b"\x08 \x08");
    assert_eq!(grid.row_bytes(0), b"ab        ");
    assert_eq!(
        grid.take_dirty(),
        [DirtySpan {
            row: 0,
            first: 2,
            last: 3
        }]
    );
    // Escape sequences and the bell show nothing.
    grid.write(b"\x1b[A\x07\x1b[3~");
    assert_eq!(grid.row_bytes(0), b"ab        ");
    // A full line then CR LF: no empty line in between.
    grid.write(b"\r\n0123456789\r\nxy");
    assert_eq!(grid.row_bytes(1), b"0123456789");
    assert_eq!(grid.row_bytes(2), b"xy        ");
    grid.take_dirty();
    // Scrolling: each row redrawn only as wide as its old or new text.
    grid.write(b"\r\n");
    assert_eq!(grid.row_bytes(0), b"0123456789");
    assert_eq!(grid.row_bytes(1), b"xy        ");
    assert_eq!(grid.row_bytes(2), b"          ");
    assert_eq!(
        grid.take_dirty(),
        [
            DirtySpan {
                row: 0,
                first: 0,
                last: 9
            },
            DirtySpan {
                row: 1,
                first: 0,
                last: 9
            },
            DirtySpan {
                row: 2,
                first: 0,
                last: 2
            },
        ]
    );
    // Wrap past the edge.
    grid.write(b"ABCDEFGHIJK");
    assert_eq!(grid.row_bytes(1), b"ABCDEFGHIJ");
    assert_eq!(grid.row_bytes(2), b"K         ");
    // A resize keeps the last lines, cut.
    grid.resize(4, 2);
    assert_eq!(grid.row_bytes(0), b"ABCD");
    assert_eq!(grid.row_bytes(1), b"K   ");
    assert_eq!(grid.take_dirty().len(), 2);
}

#[test]
fn render_draws_the_font_in_the_two_colours() {
    struct Image(Vec<u8>, u32, u32);
    impl screen::Canvas for Image {
        fn width(&self) -> u32 {
            self.1
        }
        fn height(&self) -> u32 {
            self.2
        }
        fn write_row(&mut self, x: u32, y: u32, pixels: &[u8]) {
            let at = ((y * self.1 + x) * 4) as usize;
            let n = pixels.len().min(((self.1 - x) * 4) as usize);
            self.0[at..at + n].copy_from_slice(&pixels[..n]);
        }
    }
    let mut image = Image(vec![0; 20 * 16 * 4], 20, 16);
    let mut grid = TextGrid::new(3, 1);
    grid.write(b"A\r");
    let spans = grid.take_dirty();
    let rect = screen::render(&grid, spans[0], &mut image);
    // 3 cells wide, cut to the 20-pixel canvas.
    assert_eq!(
        rect,
        PixelRect {
            x: 0,
            y: 0,
            width: 20,
            height: 16
        }
    );
    let glyph = font::glyph(b'A');
    for (y, bits) in glyph.iter().enumerate() {
        for x in 0..8 {
            let on = bits & (0x80 >> x) != 0;
            // The cursor is on 'A' (after CR): inverted.
            let expected = if on {
                pixel(BACKGROUND)
            } else {
                pixel(FOREGROUND)
            };
            let at = (y * 20 + x) * 4;
            assert_eq!(image.0[at..at + 4], expected, "({x}, {y})");
        }
    }
    // Bytes without a glyph show the replacement box.
    assert_eq!(font::glyph(0x80), &font::REPLACEMENT);
    assert_eq!(font::glyph(b'\n'), &font::REPLACEMENT);
}

#[test]
fn a_gpu_that_never_finishes_a_reset_keeps_its_framebuffer_and_queues() {
    let (driver, device) = gpu(GpuModel::with_display(640, 400), TransportKind::PciModern);
    let mut driver = driver.expect("the gpu comes up");
    assert_eq!(driver.set_up_display(&mut patience()), Ok((640, 400)));
    let live = HostHal::live_dma_pages();
    assert!(live > 0);
    device.borrow_mut().never_resets = true;
    let kept = hal::kept_forever();
    drop(driver);
    assert_eq!(
        HostHal::live_dma_pages(),
        live,
        "framebuffer, queues and command buffers not freed: the device may still use them"
    );
    assert!(hal::kept_forever() >= kept + 5);
}

#[test]
fn an_input_device_that_never_finishes_a_reset_keeps_its_queues_and_buffers() {
    let (driver, device) = input(InputModel::keyboard("QEMU Virtio Keyboard"));
    let live = HostHal::live_dma_pages();
    assert!(live > 0);
    device.borrow_mut().never_resets = true;
    let kept = hal::kept_forever();
    drop(driver);
    assert_eq!(HostHal::live_dma_pages(), live, "nothing freed");
    assert!(hal::kept_forever() >= kept + 3);
}
