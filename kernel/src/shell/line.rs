//! Line editing for the shell: what a terminal in raw mode sends, turned
//! into lines, with the echo the user expects.
//!
//! The virtio console is a byte pipe: the host terminal (QEMU's `stdio`
//! chardev, or a socket) sends every key as it is typed and shows only what
//! the guest sends back. So the guest echoes, and handles the editing keys
//! itself:
//!
//! | key                 | byte(s)        | effect                                   |
//! |---------------------|----------------|------------------------------------------|
//! | printable           | 0x20-0x7e      | appended and echoed                      |
//! | Backspace           | 0x7f or 0x08   | last character erased (`BS SP BS`)       |
//! | Ctrl-U              | 0x15           | whole line erased                        |
//! | Ctrl-C              | 0x03           | line abandoned, `^C`, new prompt         |
//! | Enter               | CR, LF or CR LF| line submitted                           |
//! | arrows, F-keys, ... | ESC [ ... / ESC O x | ignored                             |
//!
//! Anything else (other control characters, bytes above 0x7e) is ignored:
//! the shell speaks ASCII. Lines longer than [`MAX_LINE`] ring the bell
//! instead of growing.

use alloc::string::String;
use alloc::vec::Vec;

/// The longest line the editor keeps.
pub const MAX_LINE: usize = 512;

/// What a byte did to the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing to act on yet (the echo, if any, is in the output).
    Editing,
    /// Enter: the line to run.
    Submit(String),
    /// Ctrl-C: the line was abandoned.
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    /// Not in an escape sequence.
    None,
    /// After ESC.
    Start,
    /// Inside `ESC [` (a CSI sequence) until its final byte 0x40-0x7e.
    Csi,
    /// After `ESC O`: one more byte.
    Ss3,
}

/// The editor's state: the line so far and where in an escape sequence it is.
#[derive(Debug, Clone)]
pub struct LineEditor {
    line: String,
    escape: Escape,
    last_was_cr: bool,
}

impl Default for LineEditor {
    fn default() -> Self {
        Self::new()
    }
}

impl LineEditor {
    /// An empty line.
    pub const fn new() -> Self {
        Self {
            line: String::new(),
            escape: Escape::None,
            last_was_cr: false,
        }
    }

    /// Takes one byte from the terminal; appends what to send back to `echo`.
    pub fn feed(&mut self, byte: u8, echo: &mut Vec<u8>) -> Action {
        let after_cr = core::mem::replace(&mut self.last_was_cr, false);
        match self.escape {
            Escape::Start => {
                self.escape = match byte {
                    b'[' => Escape::Csi,
                    b'O' => Escape::Ss3,
                    _ => Escape::None,
                };
                return Action::Editing;
            }
            Escape::Csi => {
                if (0x40..=0x7e).contains(&byte) {
                    self.escape = Escape::None;
                }
                return Action::Editing;
            }
            Escape::Ss3 => {
                self.escape = Escape::None;
                return Action::Editing;
            }
            Escape::None => {}
        }
        match byte {
            b'\r' => {
                self.last_was_cr = true;
                echo.extend_from_slice(b"\r\n");
                Action::Submit(core::mem::take(&mut self.line))
            }
            // The LF of a CR LF pair was already handled with the CR.
            b'\n' if after_cr => Action::Editing,
            b'\n' => {
                echo.extend_from_slice(b"\r\n");
                Action::Submit(core::mem::take(&mut self.line))
            }
            0x7f | 0x08 => {
                if self.line.pop().is_some() {
                    echo.extend_from_slice(b"\x08 \x08");
                }
                Action::Editing
            }
            0x15 => {
                for _ in 0..self.line.len() {
                    echo.extend_from_slice(b"\x08 \x08");
                }
                self.line.clear();
                Action::Editing
            }
            0x03 => {
                echo.extend_from_slice(b"^C\r\n");
                self.line.clear();
                Action::Cancel
            }
            0x1b => {
                self.escape = Escape::Start;
                Action::Editing
            }
            0x20..=0x7e => {
                if self.line.len() < MAX_LINE {
                    self.line.push(char::from(byte));
                    echo.push(byte);
                } else {
                    echo.push(0x07);
                }
                Action::Editing
            }
            _ => Action::Editing,
        }
    }
}
