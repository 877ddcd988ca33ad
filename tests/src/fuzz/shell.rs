//! Fuzz target `shell_line`: bytes typed at the shell, fed to the kernel's
//! line editor (`kernel/src/shell/line.rs`, compiled here unchanged: it is
//! plain `alloc` code, so the host build includes the kernel's own file).
//!
//! Besides "no panic", the target checks what a user relies on: the line
//! the shell runs is exactly the line the terminal shows. It replays the
//! editor's echo on a model terminal (printable bytes appear, `BS SP BS`
//! erases one, `BEL` changes nothing, `CR LF` ends the line, `^C CR LF`
//! abandons it) and compares at every Enter; and a submitted line is
//! printable ASCII of at most [`line::MAX_LINE`] bytes.

#[allow(dead_code)]
#[path = "../../../kernel/src/shell/line.rs"]
pub mod line;

use line::{Action, LineEditor, MAX_LINE};

/// What the terminal shows on the current line, rebuilt from the echo.
fn apply_echo(shown: &mut Vec<u8>, mut echo: &[u8]) {
    while let Some(&byte) = echo.first() {
        if let Some(rest) = echo.strip_prefix(b"\x08 \x08") {
            assert!(
                shown.pop().is_some(),
                "erased a character the terminal does not show"
            );
            echo = rest;
        } else if (0x20..=0x7e).contains(&byte) {
            shown.push(byte);
            echo = &echo[1..];
        } else if byte == 0x07 {
            assert_eq!(shown.len(), MAX_LINE, "the bell rings only on a full line");
            echo = &echo[1..];
        } else {
            panic!("unexpected echo {echo:02x?}");
        }
    }
}

/// The line editor against arbitrary keys (see the module documentation).
pub fn shell_line(data: &[u8]) {
    let mut editor = LineEditor::new();
    let mut shown = Vec::new();
    let mut echo = Vec::new();
    for &byte in data {
        echo.clear();
        match editor.feed(byte, &mut echo) {
            Action::Editing => apply_echo(&mut shown, &echo),
            Action::Submit(line) => {
                assert_eq!(echo, b"\r\n", "Enter echoes CR LF only");
                assert!(line.len() <= MAX_LINE, "a line of {} bytes", line.len());
                assert!(
                    line.bytes().all(|b| (0x20..=0x7e).contains(&b)),
                    "a submitted line with non-printable bytes: {line:?}"
                );
                assert_eq!(
                    line.as_bytes(),
                    shown.as_slice(),
                    "the shell runs a line other than the one shown"
                );
                shown.clear();
            }
            Action::Cancel => {
                assert_eq!(echo, b"^C\r\n");
                shown.clear();
            }
        }
        assert!(shown.len() <= MAX_LINE);
    }
}
