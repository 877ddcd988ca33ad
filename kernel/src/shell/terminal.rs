//! # The shell's terminals
//!
//! The shell runs on every terminal the kernel has, at once:
//!
//! - the virtio console ([`super::console`]): the first console port, bytes
//!   from a host terminal or socket;
//! - the screen and keyboard ([`crate::screen`]): key events turned into the
//!   same bytes, output drawn on the virtio-gpu display.
//!
//! Each [`Terminal`] has its own line editor ([`LineEditor`]); a command
//! runs with the unchanged command code of [`super::execute`], and its
//! output goes back to the terminal the command came from. The kernel log
//! goes to the serial port and to the screen (`crate::logger`); the virtio
//! console carries only the shell, as before.
//!
//! With no virtio console the screen and keyboard are enough: [`run`]
//! starts if at least one terminal exists.
//!
//! ## Waiting for a key
//!
//! Between keys [`run`] runs the kernel's idle round (`crate::net::idle_with`):
//! with interrupts off it polls the network, asks the network cards and
//! every terminal's device for an interrupt on new input ([`Terminal::arm`]),
//! looks once more, and halts with `sti; hlt`, so a key on any terminal, a
//! packet or smoltcp's next timer ends the halt, and one that comes between
//! the arming and the halt is held by the CPU and ends it at once.

use alloc::boxed::Box;
use alloc::format;
use alloc::vec::Vec;
use core::fmt::Write as _;

use drivers::console::ConsoleError;
use drivers::transport::Location;

use super::line::{Action, LineEditor};
use super::{console, execute, Output, PROMPT};

/// One place a person types commands and reads answers.
pub trait Terminal {
    /// For the `shell: ready on ...` line on the serial port.
    fn describe(&self) -> alloc::string::String;
    /// Where the greeting says the shell is.
    fn greeting(&self) -> alloc::string::String;
    /// Appends the bytes typed since the last call to `input`.
    fn read(&mut self, input: &mut Vec<u8>);
    /// Shows output (terminal-ready: CR LF line ends).
    fn write(&mut self, bytes: &[u8]);
    /// Asks for an interrupt on new input; `true` if input is already there.
    fn arm(&mut self) -> bool;
    /// Interrupts off again.
    fn disarm(&mut self);
}

/// The virtio console's shell port.
struct ConsoleTerminal {
    location: Location,
    port: u32,
    buffer: Vec<u8>,
    /// Output not sent yet because the host side of the port was closed
    /// (VIRTIO_CONSOLE_PORT_OPEN not received yet, virtio 1.2 §5.3.6.2: the
    /// greeting usually goes out before the host's terminal connects). It
    /// goes out when the port opens; at most [`HELD_AT_MOST`] bytes, the
    /// newest kept.
    held: Vec<u8>,
    /// Whether held output was dropped (logged once).
    dropped_held: bool,
}

/// The most output the console terminal holds for a closed port: a few
/// screens, so that a host that connects late still sees the greeting and
/// the prompt, and a host that never connects costs bounded memory.
const HELD_AT_MOST: usize = 4096;

impl ConsoleTerminal {
    /// Sends what is held: all of it once the host side is open; while it is
    /// closed, keeps it (bounded). Any other failure loses it, said once in
    /// the log as before.
    fn send_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        match console::write_all(self.port, &self.held, super::OUTPUT_TIMEOUT_NS) {
            Ok(()) => self.held.clear(),
            Err(console::WriteError::Device(ConsoleError::PortClosed(_))) => {
                if self.held.len() > HELD_AT_MOST {
                    let excess = self.held.len() - HELD_AT_MOST;
                    self.held.drain(..excess);
                    if !self.dropped_held {
                        self.dropped_held = true;
                        log::warn!(
                            "shell: port {} is still closed on the host side: keeping only the last {HELD_AT_MOST} bytes of output",
                            self.port
                        );
                    }
                }
            }
            Err(error) => {
                log::warn!("shell: output lost: {error}");
                self.held.clear();
            }
        }
    }
}

impl Terminal for ConsoleTerminal {
    fn describe(&self) -> alloc::string::String {
        format!("virtio console port {} at {}", self.port, self.location)
    }

    fn greeting(&self) -> alloc::string::String {
        format!("the virtio console (port {})", self.port)
    }

    fn read(&mut self, input: &mut Vec<u8>) {
        // Output held for a closed port goes as soon as the host opens it.
        self.send_held();
        let mut guard = console::lock();
        let Some(c) = guard.as_mut() else { return };
        if let Err(error) = c.device.poll() {
            log::error!("shell: console: {error}");
        }
        c.check_config();
        while let Some(event) = c.device.next_event() {
            log::info!("console: {event}");
        }
        let n = c.device.read(self.port, &mut self.buffer).unwrap_or(0);
        input.extend_from_slice(&self.buffer[..n]);
    }

    fn write(&mut self, bytes: &[u8]) {
        self.held.extend_from_slice(bytes);
        self.send_held();
    }

    fn arm(&mut self) -> bool {
        console::lock()
            .as_mut()
            .is_some_and(|c| c.device.enable_interrupts())
    }

    fn disarm(&mut self) {
        if let Some(c) = console::lock().as_mut() {
            c.device.disable_interrupts();
        }
    }
}

/// The virtio-gpu screen with the virtio-input keyboards.
struct ScreenTerminal;

impl Terminal for ScreenTerminal {
    fn describe(&self) -> alloc::string::String {
        "the screen (virtio-gpu) with the keyboard (virtio-input)".into()
    }

    fn greeting(&self) -> alloc::string::String {
        "the screen".into()
    }

    fn read(&mut self, input: &mut Vec<u8>) {
        crate::screen::read_input(input);
    }

    fn write(&mut self, bytes: &[u8]) {
        crate::screen::write(bytes);
    }

    fn arm(&mut self) -> bool {
        crate::screen::arm()
    }

    fn disarm(&mut self) {
        crate::screen::disarm();
    }
}

/// A terminal and its line editor.
struct Session {
    terminal: Box<dyn Terminal>,
    editor: LineEditor,
}

/// The terminals there are: the console's port (once the device announced
/// it), the screen with a keyboard.
fn terminals() -> Vec<Session> {
    let mut found: Vec<Box<dyn Terminal>> = Vec::new();
    if console::lock().is_some() {
        match super::wait_for_console_port() {
            Some((location, port)) => found.push(Box::new(ConsoleTerminal {
                location,
                port,
                buffer: alloc::vec![0u8; 256],
                held: Vec::new(),
                dropped_held: false,
            })),
            None => log::warn!("shell: no console port appeared; no shell on the console"),
        }
    }
    if crate::screen::ready() {
        found.push(Box::new(ScreenTerminal));
    }
    found
        .into_iter()
        .map(|terminal| Session {
            terminal,
            editor: LineEditor::new(),
        })
        .collect()
}

/// Runs the shell on every terminal for good. Returns at once if there is
/// none (the caller then idles).
pub fn run() {
    let mut sessions = terminals();
    if sessions.is_empty() {
        return;
    }
    for session in &mut sessions {
        crate::println!("shell: ready on {}", session.terminal.describe());
        let mut out = Output::default();
        let _ = write!(
            out,
            "\nteaching kernel shell on {}. Type `help`.\n{PROMPT}",
            session.terminal.greeting()
        );
        session.terminal.write(&out.bytes);
    }
    let mut input = Vec::new();
    loop {
        let mut any = false;
        for session in &mut sessions {
            input.clear();
            session.terminal.read(&mut input);
            if input.is_empty() {
                continue;
            }
            any = true;
            serve(session, &input);
        }
        if !any {
            idle(&mut sessions);
        }
    }
}

/// Feeds typed bytes to a session's editor, running each finished line.
fn serve(session: &mut Session, input: &[u8]) {
    let mut out = Output::default();
    let mut echo = Vec::new();
    for &byte in input {
        match session.editor.feed(byte, &mut echo) {
            Action::Editing => {}
            Action::Cancel => {
                out.raw(&echo);
                echo.clear();
                let _ = write!(out, "{PROMPT}");
            }
            Action::Submit(line) => {
                out.raw(&echo);
                echo.clear();
                session.terminal.write(&out.bytes);
                out.bytes.clear();
                execute(line.trim(), &mut out);
                let _ = write!(out, "{PROMPT}");
            }
        }
    }
    out.raw(&echo);
    if !out.bytes.is_empty() {
        session.terminal.write(&out.bytes);
    }
}

/// Services the network, then sleeps until a terminal has input, a packet
/// arrives or smoltcp's timer is due (see the module docs).
fn idle(sessions: &mut [Session]) {
    let sessions = core::cell::RefCell::new(sessions);
    crate::net::idle_with(
        IDLE_AT_MOST,
        || {
            let mut pending = false;
            for session in sessions.borrow_mut().iter_mut() {
                pending |= session.terminal.arm();
            }
            pending
        },
        || {
            for session in sessions.borrow_mut().iter_mut() {
                session.terminal.disarm();
            }
        },
    );
}

/// The longest the shell sleeps with nothing to do (the pace of the old
/// wait's watchdog).
const IDLE_AT_MOST: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(10);
